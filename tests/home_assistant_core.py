"""A real Home Assistant core (2025.4.4) for the tests: ``home_assistant_core`` (session scope).

Registered as a pytest plugin by ``tests/conftest.py``. What it does:

1. Finds Python 3.13 (``AMANUENSIS_HA_PYTHON``, pyenv's 3.13.x, or ``python3.13`` on PATH);
   the tests that use it are skipped, with the reason, where there is none.
2. Installs Home Assistant into a virtual environment that is cached across runs
   (``$AMANUENSIS_HA_CACHE``, default ``~/.cache/amanuensis/home-assistant-2025.4.4/``):
   ``homeassistant==2025.4.4``, then the requirements its manifests list for every
   integration this configuration loads (walked through their ``dependencies``, with
   Home Assistant's own package constraints), so that Home Assistant, started with
   ``--skip-pip``, never installs anything at run time. A marker written only after a
   complete install makes a broken half-install start over; a file lock keeps parallel
   runs from installing at the same time.
3. Writes a lean ``configuration.yaml`` on a free port, starts ``python -m homeassistant
   --skip-pip``, waits until it runs, onboards an owner, creates a long-lived token,
   builds a small home (floors, areas with aliases, entities with names, aliases and
   areas), exposes some entities to Assist and leaves one unexposed. It checks the home
   reads back as described before handing it out.
4. Yields a :class:`HomeAssistantCore`: URLs, token, the expected home, ``ws()`` for
   websocket commands; stops Home Assistant at the end (SIGTERM, wait, kill). Its log is
   kept in the session's tmp directory and added to the report of any failing test that
   used it.

Home Assistant logs two errors at start-up that are expected here: ffmpeg and libturbojpeg
are not installed (nothing in these tests uses them).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

HA_VERSION = "2025.4.4"
HA_PYTHON = (3, 13)
INSTALL_TIMEOUT_S = 2400.0
STARTUP_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 60.0

# Integrations the configuration below sets up, besides Home Assistant's defaults; their
# manifests' requirements (and their dependencies') are installed into the cached venv.
# ``wyoming`` is added by the tests through a config flow; ``template`` runs the lights.
CONFIG_INTEGRATIONS = ("http", "api", "websocket_api", "config", "onboarding", "assist_pipeline",
                       "conversation", "stt", "input_boolean", "light", "template", "logger")
EXTRA_INTEGRATIONS = ("wyoming",)

OWNER = {"name": "Amanuensis Test", "username": "amanuensis", "password": "amanuensis-test-password"}


# ---------------------------------------------------------------------------
# the home the fixture builds (and what a names client should read from it)

@dataclass(frozen=True)
class Floor:
    name: str
    aliases: tuple[str, ...]
    level: int
    floor_id: str = ""


@dataclass(frozen=True)
class Area:
    name: str
    aliases: tuple[str, ...]
    floor: Optional[str]  # floor name
    area_id: str = ""


@dataclass(frozen=True)
class Entity:
    entity_id: str
    name: str  # the name Home Assistant shows (state's friendly_name)
    aliases: tuple[str, ...]
    area: Optional[str]  # area name
    exposed: bool
    registry_name: Optional[str] = None  # set in the entity registry (None: the configured name stays)


FLOORS = (
    Floor("Ground floor", ("downstairs",), 0),
    Floor("First floor", ("upstairs",), 1),
)
AREAS = (
    Area("Living Room", ("lounge",), "Ground floor"),
    Area("Kitchen", ("cookhouse",), "Ground floor"),
    Area("Office", ("study",), "First floor"),
)
ENTITIES = (
    # configured as "Living room lamp", renamed in the registry
    Entity("light.living_room_lamp", "Reading lamp", ("floor lamp",), "Living Room", True,
           registry_name="Reading lamp"),
    Entity("light.kitchen_lights", "Kitchen lights", ("worktop lights",), "Kitchen", True),
    Entity("light.office_light", "Desk light", (), "Office", True, registry_name="Desk light"),
    Entity("input_boolean.guest_mode", "Guest mode", ("visitors",), None, True),
    # in the office too, but not exposed to Assist: a names client must not read it
    Entity("input_boolean.hidden_heater", "Hidden heater", ("secret radiator",), "Office", False),
)


def configuration_yaml(port: int) -> str:
    """Template lights (optimistic: their actions only fire an event) and input booleans, all
    with unique ids so that they are in the entity registry."""
    lights = {"living_room_lamp": "Living room lamp", "kitchen_lights": "Kitchen lights",
              "office_light": "Office light"}
    booleans = {"guest_mode": "Guest mode", "hidden_heater": "Hidden heater"}
    light_yaml = "".join(
        f"      {key}:\n"
        f"        unique_id: amanuensis_test_{key}\n"
        f"        friendly_name: \"{name}\"\n"
        + "".join(f"        {action}:\n"
                  f"          - event: amanuensis_test_light\n"
                  f"            event_data: {{light: {key}, on: {str(action == 'turn_on').lower()}}}\n"
                  for action in ("turn_on", "turn_off"))
        for key, name in lights.items())
    boolean_yaml = "".join(f"  {key}:\n    name: \"{name}\"\n" for key, name in booleans.items())
    return (
        "homeassistant:\n"
        "  name: Amanuensis test home\n"
        "  latitude: 52.37\n  longitude: 4.89\n  elevation: 0\n"
        "  unit_system: metric\n  time_zone: UTC\n  currency: EUR\n  country: NL\n  language: en\n"
        "http:\n"
        "  server_host: 127.0.0.1\n"
        f"  server_port: {port}\n"
        "  ip_ban_enabled: false\n"
        "api:\n"
        "websocket_api:\n"
        "config:\n"
        "onboarding:\n"
        "assist_pipeline:\n"
        "conversation:\n"
        "stt:\n"
        "logger:\n"
        "  default: info\n"
        "  logs:\n"
        "    homeassistant.components.wyoming: debug\n"
        "input_boolean:\n" + boolean_yaml +
        "light:\n"
        "  - platform: template\n"
        "    lights:\n" + light_yaml
    )


# ---------------------------------------------------------------------------
# Python 3.13 and the cached virtual environment

def _python_version(python: Path) -> Optional[tuple[int, int]]:
    try:
        out = subprocess.run([str(python), "-c", "import sys; print(*sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    parts = out.stdout.split()
    return (int(parts[0]), int(parts[1])) if out.returncode == 0 and len(parts) == 2 else None


def find_python() -> Optional[Path]:
    """A Python 3.13 interpreter: $AMANUENSIS_HA_PYTHON, pyenv's 3.13.0 (or another 3.13.x), python3.13."""
    candidates: list[Path] = []
    if os.environ.get("AMANUENSIS_HA_PYTHON"):
        candidates.append(Path(os.environ["AMANUENSIS_HA_PYTHON"]).expanduser())
    roots = [Path("~/.pyenv").expanduser()]
    if os.environ.get("PYENV_ROOT"):
        roots.insert(0, Path(os.environ["PYENV_ROOT"]))
    pyenv = shutil.which("pyenv")
    if pyenv:
        try:
            out = subprocess.run([pyenv, "root"], capture_output=True, text=True, timeout=30)
            if out.returncode == 0 and out.stdout.strip():
                roots.append(Path(out.stdout.strip()))
        except (OSError, subprocess.SubprocessError):
            pass
    for root in roots:
        candidates.append(root / "versions" / "3.13.0" / "bin" / "python")
        candidates += sorted((root / "versions").glob("3.13.*/bin/python"), reverse=True)
    if shutil.which("python3.13"):
        candidates.append(Path(shutil.which("python3.13")))
    for python in candidates:
        if python.is_file() and _python_version(python) == HA_PYTHON:
            return python
    return None


def cache_dir() -> Path:
    if os.environ.get("AMANUENSIS_HA_CACHE"):
        return Path(os.environ["AMANUENSIS_HA_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path("~/.cache").expanduser())
    return base / "amanuensis" / f"home-assistant-{HA_VERSION}"


class _FileLock:
    """An exclusive flock on a file beside the cache directory (so removing the venv keeps it)."""

    def __init__(self, path: Path, timeout: float):
        self.path, self.timeout, self.fd = path, timeout, -1

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self.fd)
                    raise TimeoutError(f"{self.path} still locked after {self.timeout:.0f} s (another install?)")
                time.sleep(1.0)

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


# Run inside the Home Assistant venv: the integrations set up (the roots, Home Assistant's
# core and default ones, and all their dependencies) and the requirements their manifests pin.
_REQUIREMENTS_SCRIPT = r"""
import json, sys
from pathlib import Path
import homeassistant.components
from homeassistant.bootstrap import CORE_INTEGRATIONS, DEFAULT_INTEGRATIONS
base = Path(homeassistant.components.__path__[0])
todo = [*json.loads(sys.argv[1]), *CORE_INTEGRATIONS, *DEFAULT_INTEGRATIONS]
seen, requirements = set(), set()
while todo:
    domain = todo.pop()
    if domain in seen:
        continue
    seen.add(domain)
    manifest = json.loads((base / domain / "manifest.json").read_text())
    requirements.update(manifest.get("requirements", []))
    todo += manifest.get("dependencies", [])
print(json.dumps({"integrations": sorted(seen), "requirements": sorted(requirements)}))
"""


@dataclass
class HomeAssistantVenv:
    path: Path
    python: Path
    integrations: list[str]
    requirements: list[str]
    installed_now: bool  # False: taken from the cache
    install_seconds: float  # of the install that made it (now or earlier)


def _run_logged(cmd: list[str], log, timeout: float) -> None:
    log.write(f"\n$ {' '.join(cmd)}\n".encode())
    log.flush()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed with exit code {proc.returncode}")


def ensure_venv(python: Path, root: Optional[Path] = None, timeout: float = INSTALL_TIMEOUT_S) -> HomeAssistantVenv:
    """The cached Home Assistant venv, installing it first if no complete install is there."""
    root = root or cache_dir()
    venv, marker = root / "venv", root / "complete.json"
    vpython = venv / "bin" / "python"
    roots = sorted({*CONFIG_INTEGRATIONS, *EXTRA_INTEGRATIONS})
    with _FileLock(root.parent / f".{root.name}.lock", timeout):
        if marker.is_file() and vpython.is_file():
            try:
                done = json.loads(marker.read_text())
            except ValueError:
                done = {}
            if done.get("ha_version") == HA_VERSION and done.get("roots") == roots:
                return HomeAssistantVenv(venv, vpython, done["integrations"], done["requirements"],
                                         False, done["install_seconds"])
        # No complete install: start over from an empty directory.
        marker.unlink(missing_ok=True)
        shutil.rmtree(venv, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
        log_path = root / "install.log"
        t0 = time.monotonic()
        try:
            with open(log_path, "wb") as log:
                _run_logged([str(python), "-m", "venv", str(venv)], log, 300)
                pip = [str(vpython), "-m", "pip"]
                quiet = ["--no-input", "--progress-bar", "off"]
                # Home Assistant pins its dependencies' dependencies in package_constraints.txt, inside
                # its wheel: without them pip backtracks through many releases (and builds sdists).
                wheels = root / "wheel"
                shutil.rmtree(wheels, ignore_errors=True)
                _run_logged([*pip, "download", *quiet, "--no-deps", "--only-binary", ":all:", "-d", str(wheels),
                             f"homeassistant=={HA_VERSION}"], log, timeout)
                wheel = next(wheels.glob("homeassistant-*.whl"))
                constraints = root / "package_constraints.txt"
                with zipfile.ZipFile(wheel) as z:
                    constraints.write_bytes(z.read("homeassistant/package_constraints.txt"))
                install = [*pip, "install", *quiet, "--prefer-binary", "-c", str(constraints)]
                _run_logged([*install, str(wheel)], log, timeout)
                shutil.rmtree(wheels, ignore_errors=True)
                found = subprocess.run([str(vpython), "-c", _REQUIREMENTS_SCRIPT, json.dumps(roots)],
                                       capture_output=True, text=True, timeout=300, check=True)
                walk = json.loads(found.stdout.strip().splitlines()[-1])
                log.write(f"\nintegrations: {walk['integrations']}\nrequirements: {walk['requirements']}\n".encode())
                if walk["requirements"]:
                    _run_logged([*install, *walk["requirements"]], log, timeout)
        except (RuntimeError, subprocess.SubprocessError, OSError, ValueError, StopIteration, KeyError) as err:
            tail = log_path.read_text(errors="replace")[-6000:] if log_path.is_file() else ""
            raise RuntimeError(f"installing Home Assistant {HA_VERSION} into {venv} failed: {err}\n{tail}") from err
        seconds = time.monotonic() - t0
        partial = marker.with_suffix(".partial")
        partial.write_text(json.dumps({"ha_version": HA_VERSION, "roots": roots, "python": str(python),
                                       "integrations": walk["integrations"], "requirements": walk["requirements"],
                                       "install_seconds": round(seconds, 1)}, indent=1))
        partial.replace(marker)  # the marker appears whole or not at all
        return HomeAssistantVenv(venv, vpython, walk["integrations"], walk["requirements"], True, seconds)


# ---------------------------------------------------------------------------
# HTTP (standard library) and websocket (``websockets``' sync client) helpers

class HomeAssistantError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


def http_json(method: str, url: str, *, body: Any = None, form: Optional[dict] = None,
              token: Optional[str] = None, timeout: float = 30.0) -> tuple[int, Any]:
    """(status, parsed JSON or text) of one request; HTTP errors are returned, not raised."""
    headers, data = {}, None
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    elif form is not None:
        data, headers["Content-Type"] = urllib.parse.urlencode(form).encode(), "application/x-www-form-urlencoded"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    text = raw.decode("utf-8", errors="replace")
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


class HomeAssistantWebSocket:
    """Home Assistant's websocket API, blocking (``websockets``' sync client), for the tests.

    ``command(type, **fields)`` sends a command and returns its result (raising
    :class:`HomeAssistantError` on an error result); messages for other ids (subscription
    events, pipeline events) are kept for ``receive()``. ``send_binary`` sends a binary
    message (audio for a pipeline run).
    """

    def __init__(self, url: str, token: str, timeout: float = 60.0):
        # Imported here: conftest loads this module for every test, and only these need it.
        from websockets.sync.client import connect

        self.timeout = timeout
        self._exit = contextlib.ExitStack()
        self.conn = self._exit.enter_context(connect(url, open_timeout=timeout, close_timeout=5,
                                                     max_size=64 * 2**20))
        self._next_id = 1
        self._pending: list[dict] = []
        first = self._recv(timeout)
        if first.get("type") != "auth_required":
            self.close()
            raise ConnectionError(f"expected auth_required, got {first}")
        self.send_json({"type": "auth", "access_token": token})
        answer = self._recv(timeout)
        if answer.get("type") != "auth_ok":
            self.close()
            raise HomeAssistantError("auth", str(answer.get("type")))
        self.ha_version = answer.get("ha_version")

    def _recv(self, timeout: float) -> dict:
        return json.loads(self.conn.recv(timeout=timeout))

    # -- messages
    def send_json(self, message: dict) -> None:
        self.conn.send(json.dumps(message))

    def send_binary(self, data: bytes) -> None:
        self.conn.send(data)

    def receive(self, timeout: Optional[float] = None) -> dict:
        """The next JSON message (kept ones first)."""
        if self._pending:
            return self._pending.pop(0)
        return self._recv(timeout or self.timeout)

    def send_command(self, type_: str, **fields) -> int:
        """Send a command without waiting; returns its id."""
        msg_id, self._next_id = self._next_id, self._next_id + 1
        self.send_json({"id": msg_id, "type": type_, **fields})
        return msg_id

    def result(self, msg_id: int, timeout: Optional[float] = None) -> Any:
        """Wait for the result of ``msg_id``; other messages are kept for ``receive``."""
        def is_result(message: dict) -> bool:
            return message.get("id") == msg_id and message.get("type") == "result"

        found = next((m for m in self._pending if is_result(m)), None)
        if found is not None:
            self._pending.remove(found)
        deadline = time.monotonic() + (timeout or self.timeout)
        kept: list[dict] = []
        try:
            while found is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no result for command {msg_id}")
                message = self._recv(left)
                if is_result(message):
                    found = message
                else:
                    kept.append(message)
        finally:
            self._pending += kept
        if not found.get("success"):
            error = found.get("error") or {}
            raise HomeAssistantError(error.get("code", "?"), error.get("message", str(found)))
        return found.get("result")

    def command(self, type_: str, timeout: Optional[float] = None, **fields) -> Any:
        return self.result(self.send_command(type_, **fields), timeout)

    def close(self) -> None:
        self._exit.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------------------
# the running core

@dataclass
class HomeAssistantCore:
    """What the fixture yields."""

    base_url: str  # http://127.0.0.1:PORT
    ws_url: str  # ws://127.0.0.1:PORT/api/websocket
    token: str  # long-lived access token (owner, admin)
    port: int
    config_dir: Path
    log_path: Path
    proc: subprocess.Popen
    venv: HomeAssistantVenv
    floors: dict[str, Floor] = field(default_factory=dict)  # by name, with floor_id
    areas: dict[str, Area] = field(default_factory=dict)  # by name, with area_id
    entities: tuple[Entity, ...] = ENTITIES
    startup_seconds: float = 0.0

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def exposed(self) -> list[Entity]:
        return [e for e in self.entities if e.exposed]

    @property
    def unexposed(self) -> list[Entity]:
        return [e for e in self.entities if not e.exposed]

    def floor_of(self, entity: Entity) -> Optional[str]:
        return self.areas[entity.area].floor if entity.area else None

    def ws(self, timeout: float = 60.0) -> HomeAssistantWebSocket:
        """A new authenticated websocket connection (use as a context manager)."""
        return HomeAssistantWebSocket(self.ws_url, self.token, timeout)

    def call(self, type_: str, **fields) -> Any:
        """One websocket command on a short-lived connection; its result."""
        with self.ws() as ws:
            return ws.command(type_, **fields)

    def http(self, method: str, path: str, **kw) -> tuple[int, Any]:
        return http_json(method, self.base_url + path, token=self.token, **kw)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.is_file() else ""

    def log_tail(self, chars: int = 12000) -> str:
        return self.log()[-chars:]

    def stop(self) -> Optional[int]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
        return self.proc.returncode


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(venv: HomeAssistantVenv, config_dir: Path) -> tuple[subprocess.Popen, Path, int]:
    port = _free_port()
    (config_dir / "configuration.yaml").write_text(configuration_yaml(port), encoding="utf-8")
    log_path = config_dir / "hass-console.log"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(venv.python), "-m", "homeassistant", "-c", str(config_dir), "--skip-pip",
                                 "--log-no-color", "--log-file", str(config_dir / "home-assistant.log")],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    return proc, log_path, port


def _wait_http(core: HomeAssistantCore, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if core.proc.poll() is not None:
            raise RuntimeError(f"Home Assistant exited with {core.proc.returncode}:\n{core.log_tail()}")
        try:
            status, _ = http_json("GET", core.base_url + "/api/onboarding", timeout=5)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"Home Assistant did not answer on {core.base_url} within {timeout:.0f} s:\n{core.log_tail()}")


def _onboard(core: HomeAssistantCore) -> str:
    """Owner user -> auth code -> access token -> long-lived token."""
    client_id = core.base_url + "/"
    status, body = http_json("POST", core.base_url + "/api/onboarding/users",
                             body={"client_id": client_id, "language": "en", **OWNER})
    if status != 200 or "auth_code" not in body:
        raise RuntimeError(f"onboarding refused ({status}): {body}")
    status, tokens = http_json("POST", core.base_url + "/auth/token",
                               form={"grant_type": "authorization_code", "code": body["auth_code"],
                                     "client_id": client_id})
    if status != 200 or "access_token" not in tokens:
        raise RuntimeError(f"token refused ({status}): {tokens}")
    with HomeAssistantWebSocket(core.ws_url, tokens["access_token"]) as ws:
        return ws.command("auth/long_lived_access_token", client_name="amanuensis tests", lifespan=30)


def _wait_running(ws: HomeAssistantWebSocket, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        state = ws.command("get_config").get("state")
        if state == "RUNNING":
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"Home Assistant still {state} after {timeout:.0f} s")
        time.sleep(0.5)


def _build_home(core: HomeAssistantCore, ws: HomeAssistantWebSocket) -> None:
    """Floors, areas, names, aliases, areas of entities, exposure to Assist."""
    for floor in FLOORS:
        made = ws.command("config/floor_registry/create", name=floor.name, aliases=list(floor.aliases),
                          level=floor.level)
        core.floors[floor.name] = Floor(floor.name, floor.aliases, floor.level, made["floor_id"])
    # Onboarding made default areas (Living Room, Kitchen, Bedroom): ours take over those with
    # their names, the others go, so the areas are exactly the ones described.
    existing = {a["name"]: a["area_id"] for a in ws.command("config/area_registry/list")}
    for area in AREAS:
        fields = {"aliases": list(area.aliases), "floor_id": core.floors[area.floor].floor_id}
        if area.name in existing:
            made = ws.command("config/area_registry/update", area_id=existing.pop(area.name), **fields)
        else:
            made = ws.command("config/area_registry/create", name=area.name, **fields)
        core.areas[area.name] = Area(area.name, area.aliases, area.floor, made["area_id"])
    for area_id in existing.values():
        ws.command("config/area_registry/delete", area_id=area_id)
    registered = {e["entity_id"] for e in ws.command("config/entity_registry/list")}
    missing = [e.entity_id for e in core.entities if e.entity_id not in registered]
    if missing:
        raise RuntimeError(f"entities not in the registry: {missing}")
    for entity in core.entities:
        update = {"aliases": list(entity.aliases), "area_id": core.areas[entity.area].area_id if entity.area else None}
        if entity.registry_name:
            update["name"] = entity.registry_name
        ws.command("config/entity_registry/update", entity_id=entity.entity_id, **update)
    for flag in (True, False):
        ids = [e.entity_id for e in core.entities if e.exposed is flag]
        ws.command("homeassistant/expose_entity", assistants=["conversation"], entity_ids=ids, should_expose=flag)


def _check_home(core: HomeAssistantCore, ws: HomeAssistantWebSocket) -> None:
    """The home reads back as the fixture describes it (so tests can trust its fields)."""
    states = {s["entity_id"]: s for s in ws.command("get_states")}
    exposed = ws.command("homeassistant/expose_entity/list")["exposed_entities"]
    entries = ws.command("config/entity_registry/get_entries", entity_ids=[e.entity_id for e in core.entities])
    area_names = {a.area_id: a.name for a in core.areas.values()}
    problems = []
    for e in core.entities:
        if states.get(e.entity_id, {}).get("attributes", {}).get("friendly_name") != e.name:
            problems.append(f"{e.entity_id}: state {states.get(e.entity_id)}")
        if bool(exposed.get(e.entity_id, {}).get("conversation")) is not e.exposed:
            problems.append(f"{e.entity_id}: exposure {exposed.get(e.entity_id)}")
        entry = entries.get(e.entity_id) or {}
        if set(entry.get("aliases", ())) != set(e.aliases) or area_names.get(entry.get("area_id")) != e.area:
            problems.append(f"{e.entity_id}: registry {entry}")
    if problems:
        raise RuntimeError("the test home is not as described:\n" + "\n".join(problems))


_RUNNING: list[HomeAssistantCore] = []


@pytest.fixture(scope="session")
def home_assistant_venv() -> HomeAssistantVenv:
    python = find_python()
    if python is None:
        pytest.skip("no Python 3.13 found for Home Assistant 2025.4.4 (set AMANUENSIS_HA_PYTHON, or "
                    "`pyenv install 3.13.0`)")
    return ensure_venv(python)


@pytest.fixture(scope="session")
def home_assistant_core(home_assistant_venv, tmp_path_factory) -> Iterator[HomeAssistantCore]:
    """A running Home Assistant core with an owner, a long-lived token and a small home."""
    config_dir = tmp_path_factory.mktemp("home_assistant")
    t0 = time.monotonic()
    proc, log_path, port = _start(home_assistant_venv, config_dir)
    core = HomeAssistantCore(base_url=f"http://127.0.0.1:{port}", ws_url=f"ws://127.0.0.1:{port}/api/websocket",
                             token="", port=port, config_dir=config_dir, log_path=log_path, proc=proc,
                             venv=home_assistant_venv)
    _RUNNING.append(core)
    try:
        _wait_http(core, STARTUP_TIMEOUT_S)
        core.token = _onboard(core)
        with core.ws() as ws:
            _wait_running(ws, STARTUP_TIMEOUT_S)
            _build_home(core, ws)
            _check_home(core, ws)
        core.startup_seconds = time.monotonic() - t0
    except BaseException as err:
        core.stop()
        _RUNNING.remove(core)
        if isinstance(err, Exception):
            raise RuntimeError(f"Home Assistant fixture failed: {err}\n--- Home Assistant log ---\n"
                               f"{core.log_tail()}") from err
        raise
    try:
        yield core
    finally:
        core.stop()
        _RUNNING.remove(core)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test that used the core gets the tail of Home Assistant's log in its report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and "home_assistant_core" in getattr(item, "fixturenames", ()) and _RUNNING:
        core = _RUNNING[-1]
        report.sections.append(("Home Assistant log (tail)", f"{core.log_path}\n{core.log_tail()}"))
