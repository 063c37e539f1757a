"""Names from Home Assistant: the names a speaker may say in this home, kept current.

One background task holds a websocket connection to Home Assistant's API
(``/api/websocket``, or the Supervisor's ``ws://supervisor/core/websocket`` in
the add-on), reads the names and re-reads them when the registries change.
Requests never wait for it: they read :attr:`HomeAssistantNames.names`, the
last good snapshot (empty until the first read).

Which names:

- entities exposed to Assist (``conversation``): their name and aliases. An
  entity that is not exposed cannot be the target of a voice command, and every
  name that cannot be meant is one more that a transcript could be pulled
  toward wrongly (and, in a prompt, takes room from one that can be meant);
- areas that hold an exposed entity (its own area, else its device's), with
  their aliases: an area with nothing exposed only ever gets "no device in that
  area" from Assist, so it is left out for the same reason;
- floors that hold such an area, with their aliases.

Failure never reaches transcription: Home Assistant down at start or going away
later is retried with capped exponential backoff and the last good names are
kept meanwhile; a refused token is logged once (ERROR) and retried slowly (a
token that keeps failing can get the address banned by Home Assistant's
``ip_ban_enabled``). The token is never logged, not even by ``websockets`` at
debug level.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional
from urllib.parse import urlparse, urlunparse

from websockets.asyncio.client import ClientConnection, connect

from .tasks import until_first_ends

if TYPE_CHECKING:
    from .config import Settings  # config imports this module

_LOG = logging.getLogger(__name__)
# websockets logs every frame at DEBUG, the auth message with the token among them:
# its logger is ours, held at INFO whatever level the root logger has.
_WIRE_LOG = logging.getLogger(__name__ + ".wire")
_WIRE_LOG.setLevel(logging.INFO)

ASSISTANT = "conversation"  # Assist's own agent; cloud.alexa / cloud.google_assistant are other assistants
# Exposing or un-exposing an entity with a registry entry changes its registry options, so
# entity_registry_updated covers exposure too; only entities without a registry entry change
# silently, and the periodic re-read (refresh_s) catches those and renamed states.
WATCHED_EVENTS = ("entity_registry_updated", "device_registry_updated", "area_registry_updated",
                  "floor_registry_updated")

BACKOFF_INITIAL_S = 1.0     # Home Assistant restarting is back within seconds...
BACKOFF_MAX_S = 60.0        # ...one that stays away costs one attempt a minute
REFUSED_RETRY_S = 300.0     # a refused token or a non-admin user: retrying soon cannot help
DEBOUNCE_S = 2.0            # registry events come in bursts (start-up, a device with 20 entities)
DEBOUNCE_MAX_S = 15.0       # a registry that never stops changing is still read this often
COMMAND_TIMEOUT_S = 30.0    # get_states of a big home is megabytes; a silent peer is a lost one
MAX_MESSAGE_BYTES = 64 * 2**20


class Refused(Exception):
    """Home Assistant (or our own setup) refuses us: retrying soon will not help."""


class CommandFailed(Exception):
    """A command's result had ``success: false``."""

    def __init__(self, command: str, code: str, message: str) -> None:
        super().__init__(f"{command} failed ({code}: {message})")
        self.code = code


def websocket_url(url: str) -> str:
    """The API's websocket URL from a ws(s):// URL (kept; /api/websocket added when it has
    no path) or an http(s):// base URL (``http://host:8123`` -> ``ws://host:8123/api/websocket``)."""
    parsed = urlparse(url.strip())
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parsed.scheme)
    if scheme is None or not parsed.hostname:
        raise ValueError("must be a ws://, wss://, http:// or https:// URL with a host")
    path = parsed.path.rstrip("/")
    if parsed.scheme in ("http", "https") or not path:
        path += "/websocket" if path.endswith("/api") else "/api/websocket"
    return urlunparse((scheme, parsed.netloc, path, "", parsed.query, ""))


def _clean(names: Any) -> tuple[str, ...]:
    """Whitespace collapsed, empty names dropped, repeats (ignoring case) dropped, first kept."""
    out: dict[str, str] = {}
    for name in names:
        text = " ".join(str(name or "").split())
        if text:
            out.setdefault(text.casefold(), text)
    return tuple(out.values())


@dataclass(frozen=True)
class HomeNames:
    """One snapshot. Entities in entity id order, each name followed by its aliases;
    areas and floors in Home Assistant's registry order."""

    entities: tuple[str, ...] = ()
    areas: tuple[str, ...] = ()
    floors: tuple[str, ...] = ()

    def all(self) -> tuple[str, ...]:
        """Areas, floors, then entity names, de-duplicated ignoring case. Places first:
        they are few and most commands name one."""
        return self._all

    @functools.cached_property
    def _all(self) -> tuple[str, ...]:
        return _clean(self.areas + self.floors + self.entities)


def _entity_name(entry: dict, state_name: Any, device: dict) -> Any:
    """What Assist calls the entity: the user's name for it, else the state's friendly name,
    else (no state yet) the name Home Assistant would compose from device and original name."""
    if entry.get("name"):
        return entry["name"]
    if state_name:
        return state_name
    original = entry.get("original_name")
    device_name = device.get("name_by_user") or device.get("name")
    if entry.get("has_entity_name") and device_name:
        return f"{device_name} {original}" if original else device_name
    return original


def build_names(exposed: dict, states: list, entries: dict, devices: list, areas: list,
                floors: list) -> HomeNames:
    """The snapshot from the six answers (shapes as Home Assistant 2025.4 sends them)."""
    friendly = {s.get("entity_id"): (s.get("attributes") or {}).get("friendly_name") for s in states}
    devices_by_id = {d.get("id"): d for d in devices}
    entity_names: list[Any] = []
    used_areas: set[str] = set()
    for entity_id in sorted(e for e, assistants in exposed.items() if (assistants or {}).get(ASSISTANT)):
        entry = entries.get(entity_id) or {}  # None: an entity without a registry entry
        if entry.get("disabled_by"):
            continue  # disabled entities have no state and answer no command
        device = devices_by_id.get(entry.get("device_id")) or {}
        # The state's friendly name equals the registry name unless YAML customize overrides it,
        # and Assist matches the friendly name: then both are sayable (_clean drops the repeat).
        entity_names += [_entity_name(entry, friendly.get(entity_id), device), friendly.get(entity_id)]
        entity_names.extend(entry.get("aliases") or ())
        area_id = entry.get("area_id") or device.get("area_id")
        if area_id:
            used_areas.add(area_id)  # an unnamed entity still makes its area worth saying
    areas_used = [a for a in areas if a.get("area_id") in used_areas]
    used_floors = {a.get("floor_id") for a in areas_used if a.get("floor_id")}
    return HomeNames(
        entities=_clean(entity_names),
        areas=_clean(n for a in areas_used for n in (a.get("name"), *(a.get("aliases") or ()))),
        floors=_clean(n for f in floors if f.get("floor_id") in used_floors
                      for n in (f.get("name"), *(f.get("aliases") or ()))),
    )


class _Link:
    """One authenticated connection: numbered commands matched to their results, and a
    flag that any subscribed event sets."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.changed = asyncio.Event()
        self._last_id = 0
        self._waiting: dict[int, asyncio.Future] = {}

    async def command(self, type_: str, **fields: Any) -> Any:
        self._last_id += 1
        iden = self._last_id
        self._waiting[iden] = asyncio.get_running_loop().create_future()
        try:
            await self.ws.send(json.dumps({"id": iden, "type": type_, **fields}))
            reply = await asyncio.wait_for(self._waiting[iden], COMMAND_TIMEOUT_S)
        finally:
            self._waiting.pop(iden, None)
        if reply.get("success"):
            return reply.get("result")
        error = reply.get("error") or {}
        raise CommandFailed(type_, str(error.get("code")), str(error.get("message")))

    async def read(self) -> None:
        """Dispatch messages until the connection ends (then raise: the session is over)."""
        async for raw in self.ws:
            data = json.loads(raw)
            for msg in data if isinstance(data, list) else [data]:  # a list if coalesced
                if msg.get("type") == "event":
                    self.changed.set()  # we subscribe to nothing but the registries
                elif msg.get("type") == "result" and msg.get("id") in self._waiting:
                    future = self._waiting[msg["id"]]
                    if not future.done():
                        future.set_result(msg)
        raise ConnectionError("Home Assistant closed the connection")


class HomeAssistantNames:
    """Keeps :attr:`names` current in the background. ``state``: idle, connecting,
    connected, unreachable, lost, refused or stopped."""

    def __init__(self, url: str, token: Callable[[], Optional[str]], *, refresh_s: float = 300.0,
                 debounce_s: float = DEBOUNCE_S, debounce_max_s: float = DEBOUNCE_MAX_S,
                 backoff_initial_s: float = BACKOFF_INITIAL_S, backoff_max_s: float = BACKOFF_MAX_S,
                 refused_retry_s: float = REFUSED_RETRY_S) -> None:
        self.url = websocket_url(url)
        self._token = token  # called per attempt: a rewritten token file is picked up
        self.refresh_s = refresh_s
        self.debounce_s, self.debounce_max_s = debounce_s, debounce_max_s
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s
        self.refused_retry_s = refused_retry_s
        self.names = HomeNames()
        self.state = "idle"
        self.attempts = 0  # connection attempts (tests, diagnostics)
        self.reads = 0     # complete reads of the names
        self._task: Optional[asyncio.Task] = None

    @classmethod
    def from_settings(cls, settings: "Settings") -> Optional["HomeAssistantNames"]:
        """None when ``ha_url`` is not set (names from Home Assistant are off)."""
        if not settings.ha_url:
            return None
        return cls(settings.ha_url, settings.ha_token_value, refresh_s=settings.ha_refresh_s)

    async def start(self) -> None:
        """Returns at once; connecting (and reconnecting) happens in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="home assistant names")

    async def stop(self, timeout: float = 3.0) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=timeout)
            self._task = None
        self._set_state("stopped")

    # ------------------------------------------------------------ connection
    async def _run(self) -> None:
        delay = self.backoff_initial_s
        while True:
            self.attempts += 1
            if self.state == "idle":
                self._set_state("connecting")
            try:
                await self._session()  # returns only by an exception
            except Refused as err:
                self._set_state("refused", f"{err}; retrying every {self.refused_retry_s:g} s")
                wait, delay = self.refused_retry_s, self.backoff_initial_s
            except Exception as err:  # noqa: BLE001 - down, gone, timed out, answered oddly: all retried
                detail = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
                if self.state == "connected":
                    self._set_state("lost", f"{detail}; keeping the {len(self.names.all())} names read "
                                            f"before, reconnecting")
                    delay = self.backoff_initial_s  # it was fine a moment ago: try again soon
                elif self.state != "lost":
                    self._set_state("unreachable", f"{detail}; retrying with backoff up to {self.backoff_max_s:g} s")
                wait, delay = delay, min(delay * 2, self.backoff_max_s)
            _LOG.debug("home assistant: next attempt in %.1f s", wait)
            await asyncio.sleep(wait)

    async def _session(self) -> None:
        try:
            token = (self._token() or "").strip()
        except OSError as err:  # names the file, never its content
            raise Refused(f"cannot read the access token file: {err}") from None
        if not token:
            raise Refused("no access token (set ha_token or ha_token_file)")
        async with connect(self.url, open_timeout=COMMAND_TIMEOUT_S, close_timeout=2,
                           max_size=MAX_MESSAGE_BYTES, logger=_WIRE_LOG) as ws:
            await self._authenticate(ws, token)
            link = _Link(ws)
            await until_first_ends(link.read(), self._keep_current(link))  # re-raises what ended the session

    async def _authenticate(self, ws: ClientConnection, token: str) -> None:
        async def receive() -> dict:
            return json.loads(await asyncio.wait_for(ws.recv(), COMMAND_TIMEOUT_S))

        first = await receive()
        if first.get("type") != "auth_required":
            raise ConnectionError(f"expected auth_required, got {first.get('type')!r}")
        await ws.send(json.dumps({"type": "auth", "access_token": token}))
        answer = await receive()
        if answer.get("type") == "auth_invalid":
            raise Refused(f"Home Assistant at {self.url} refused the access token "
                          f"({answer.get('message') or 'auth_invalid'})")
        if answer.get("type") != "auth_ok":
            raise ConnectionError(f"expected auth_ok, got {answer.get('type')!r}")

    async def _keep_current(self, link: _Link) -> None:
        # Subscribe before the first read, so a change made during it is not missed.
        for event_type in WATCHED_EVENTS:
            await link.command("subscribe_events", event_type=event_type)
        while True:
            link.changed.clear()
            self._publish(await self._read(link))
            await self._wait_for_change(link)

    async def _wait_for_change(self, link: _Link) -> None:
        """Until the refresh interval passes, or an event burst has been quiet for debounce_s."""
        try:
            await asyncio.wait_for(link.changed.wait(), self.refresh_s)
        except asyncio.TimeoutError:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.debounce_max_s
        while (left := deadline - loop.time()) > 0:
            link.changed.clear()
            try:
                await asyncio.wait_for(link.changed.wait(), min(self.debounce_s, left))
            except asyncio.TimeoutError:
                return

    async def _read(self, link: _Link) -> HomeNames:
        try:
            return await self._read_answers(link)
        except CommandFailed as err:
            if err.code == "unauthorized":  # the expose list and the registries need an admin
                raise Refused(f"{err}: the token must belong to an administrator") from None
            raise
        except (KeyError, TypeError, AttributeError) as err:  # not the shapes of the documented API
            raise ValueError(f"unexpected answer from Home Assistant ({type(err).__name__}: {err})") from None

    async def _read_answers(self, link: _Link) -> HomeNames:
        exposed = (await link.command("homeassistant/expose_entity/list"))["exposed_entities"]
        states = await link.command("get_states")
        wanted = sorted(e for e, assistants in exposed.items() if (assistants or {}).get(ASSISTANT))
        entries = await link.command("config/entity_registry/get_entries", entity_ids=wanted) if wanted else {}
        devices = await link.command("config/device_registry/list")
        areas = await link.command("config/area_registry/list")
        try:
            floors = await link.command("config/floor_registry/list")
        except CommandFailed as err:
            if err.code != "unknown_command":
                raise
            floors = []  # Home Assistant before 2024.4 has no floor registry
        return build_names(exposed, states, entries or {}, devices, areas, floors)

    def _publish(self, names: HomeNames) -> None:
        level = logging.INFO if names != self.names or not self.reads else logging.DEBUG
        self.names = names
        self.reads += 1
        # Connected means names came: a token that is let in but may not read them is still refused.
        self._set_state("connected")
        _LOG.log(level, "names from Home Assistant: %d entity names, %d areas, %d floors",
                 len(names.entities), len(names.areas), len(names.floors))

    def _set_state(self, state: str, detail: str = "") -> None:
        """Log once per change of state, not once per attempt."""
        if state == self.state:
            return
        self.state = state
        if state == "refused":
            _LOG.error("names from Home Assistant: %s", detail)
        elif state in ("unreachable", "lost"):
            _LOG.warning("names from Home Assistant: cannot read them from %s (%s)", self.url, detail)
        elif state == "connected":
            _LOG.info("names from Home Assistant: connected to %s", self.url)
        else:
            _LOG.debug("names from Home Assistant: %s", state)
