"""Names from Home Assistant (wyoming_amanuensis/home_assistant.py), over a real websocket.

Home Assistant here is ``tests/fake_home_assistant.py``: a fake that speaks the
documented websocket messages with the result shapes of Home Assistant 2025.4
(auth, the list commands, errors, subscriptions and events), started by each
test on a free port. It is only as faithful as its reading of the core; a
separate test runs the same client against a real Home Assistant core
(``tests/home_assistant_core.py``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import pytest

from tests.fake_home_assistant import FakeHomeAssistant
from tests.test_server_unit import FakeEngine
from wyoming_amanuensis.config import ConfigError, build_parser, load_settings, settings_from
from wyoming_amanuensis.home_assistant import HomeAssistantNames, HomeNames, websocket_url
from wyoming_amanuensis.server import AmanuensisServer

TOKEN = "eyJhbGciOiJIUzI1NiJ9.secret-token-never-logged"
WRONG = "eyJhbGciOiJIUzI1NiJ9.wrong-token-never-logged"
# Delays of a home that answers at once: tests wait tenths of a second, not minutes.
FAST = dict(debounce_s=0.05, debounce_max_s=1.0, backoff_initial_s=0.05, backoff_max_s=0.2, refused_retry_s=0.2)

# In entity id order: cover.blind, light.hue_1, light.kitchen_ceiling, script.good_night, switch.plug_7.
ENTITIES = ("Window blind", "Blinds", "Reading Lamp", "big lamp", "Kitchen ceiling", "kitchen light", "KITCHEN",
            "Good night", "Nightstand")
AREAS = ("Living Room", "Lounge", "Kitchen", "Bedroom")
FLOORS = ("Ground floor", "downstairs", "First floor", "upstairs")


def furnish(ha: FakeHomeAssistant) -> FakeHomeAssistant:
    """A small home with each case the names depend on."""
    ha.add_floor("ground_floor", "Ground floor", aliases=("downstairs",))
    ha.add_floor("first_floor", "First floor", aliases=("upstairs",), level=1)
    ha.add_floor("attic", "Attic", level=2)                                  # no area with anything exposed
    ha.add_area("living_room", "Living Room", aliases=("Lounge",), floor_id="ground_floor")
    ha.add_area("kitchen", "Kitchen", floor_id="ground_floor")
    ha.add_area("bedroom", "Bedroom", floor_id="first_floor")
    ha.add_area("garage", "Garage")                                          # nothing exposed in it
    ha.add_device("hue_1", "Hue lamp", area_id="living_room")
    ha.add_device("plug_7", "Bedside plug", name_by_user="Nightstand", area_id="bedroom")
    # The user's name wins over the integration's, and the device supplies the area.
    ha.add_entity("light.hue_1", name="Reading Lamp", original_name=None, has_entity_name=True,
                  device_id="hue_1", aliases=("big lamp",))
    # No name of its own: the device's (user-given) name is its friendly name.
    ha.add_entity("switch.plug_7", has_entity_name=True, device_id="plug_7")
    # Its own area; an alias that repeats an area name.
    ha.add_entity("light.kitchen_ceiling", original_name="Kitchen ceiling", area_id="kitchen",
                  aliases=("kitchen light", "KITCHEN"))
    # YAML customize renames its state: Assist matches that name, the registry keeps the other.
    ha.add_entity("cover.blind", name="Window blind", customize_friendly_name="Blinds", area_id="living_room")
    # Exposed to Alexa only, or to nothing: not a name for Assist, and the garage stays out.
    ha.add_entity("sensor.garage_temperature", original_name="Garage temperature", area_id="garage",
                  assistants={"conversation": False, "cloud.alexa": True})
    ha.add_entity("light.hidden", original_name="Hidden light", area_id="garage", assistants={})
    ha.add_entity("light.broken", original_name="Broken light", area_id="garage", disabled_by="user")
    # No registry entry (YAML without unique_id): the state's friendly name only.
    ha.add_entity("script.good_night", original_name="Good night", registry=False)
    return ha


@pytest.fixture
async def home():
    ha = await furnish(FakeHomeAssistant(TOKEN)).start()
    yield ha
    await ha.stop()


@pytest.fixture
async def sources():
    """Names sources started by a test, stopped after it."""
    started: list[HomeAssistantNames] = []

    async def start(url: str, token=TOKEN, **overrides) -> HomeAssistantNames:
        source = HomeAssistantNames(url, token if callable(token) else (lambda: token), **{**FAST, **overrides})
        await source.start()
        started.append(source)
        return source

    yield start
    for source in started:
        await source.stop()


async def until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loaded(source: HomeAssistantNames, reads: int = 1):
    return lambda: source.reads >= reads


# --- what is read -----------------------------------------------------------------


async def test_names_of_exposed_entities_their_areas_and_floors(home, sources):
    source = await sources(home.url)
    await until(loaded(source))
    assert source.state == "connected"
    assert source.names == HomeNames(entities=ENTITIES, areas=AREAS, floors=FLOORS)
    # Flat: places first, then entities; "KITCHEN" repeats the area "Kitchen" and goes.
    assert source.names.all() == AREAS + FLOORS + tuple(n for n in ENTITIES if n != "KITCHEN")
    assert home.commands[:4] == ["subscribe_events"] * 4
    assert home.commands[4:] == ["homeassistant/expose_entity/list", "get_states",
                                 "config/entity_registry/get_entries", "config/device_registry/list",
                                 "config/area_registry/list", "config/floor_registry/list"]


async def test_an_older_core_without_floors_gives_the_rest(sources):
    ha = await furnish(FakeHomeAssistant(TOKEN, floors=False)).start()
    try:
        source = await sources(ha.url)
        await until(loaded(source))
        assert source.names == HomeNames(entities=ENTITIES, areas=AREAS, floors=())
        assert "config/floor_registry/list" in ha.commands
    finally:
        await ha.stop()


def test_websocket_url_from_what_users_write():
    assert websocket_url("http://homeassistant.local:8123") == "ws://homeassistant.local:8123/api/websocket"
    assert websocket_url("https://ha.example.org/") == "wss://ha.example.org/api/websocket"
    assert websocket_url("http://10.0.0.2:8123/api") == "ws://10.0.0.2:8123/api/websocket"
    assert websocket_url("ws://supervisor/core/websocket") == "ws://supervisor/core/websocket"
    assert websocket_url("wss://ha.example.org") == "wss://ha.example.org/api/websocket"
    for bad in ("homeassistant.local:8123", "ftp://x", "http://"):
        with pytest.raises(ValueError):
            websocket_url(bad)


# --- configuration ------------------------------------------------------------------


async def test_token_read_from_a_file_and_a_missing_file_said_once(home, sources, tmp_path, caplog):
    token_file = tmp_path / "ha_token"
    token_file.write_text(TOKEN + "\n")
    settings = settings_from(ha_url=home.url, ha_token_file=str(token_file))
    source = await sources(settings.ha_url, settings.ha_token_value)
    await until(loaded(source))
    assert source.names.areas == AREAS
    await source.stop()

    token_file.unlink()  # gone after start-up: a clear error, once, then found again when it is back
    caplog.set_level(logging.DEBUG)
    source = await sources(settings.ha_url, settings.ha_token_value)
    await until(lambda: source.attempts >= 3)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "cannot read the access token file" in errors[0].getMessage()
    assert str(token_file) in errors[0].getMessage()
    token_file.write_text(TOKEN)
    await until(loaded(source))


def test_settings_for_names_from_home_assistant(tmp_path):
    def load(argv, environ):
        return load_settings(build_parser().parse_args(argv), environ=environ)

    # Off by default; the add-on's Supervisor token is the token when none is given.
    assert load([], {}).ha_url is None
    settings = load(["--ha-url", "ws://supervisor/core/websocket"], {"SUPERVISOR_TOKEN": "sv"})
    assert settings.ha_token_value() == "sv" and settings.redacted()["ha_token"] == "***"
    assert load(["--ha-token", "mine"], {"SUPERVISOR_TOKEN": "sv"}).ha_token == "mine"
    for argv, option in [(["--ha-url", "http://ha:8123"], "ha_url"),          # no token
                         (["--ha-url", "ha:8123", "--ha-token", "t"], "ha_url"),
                         (["--ha-token-file", str(tmp_path / "none")], "ha_token_file"),
                         (["--ha-refresh-s", "0"], "ha_refresh_s")]:
        with pytest.raises(ConfigError, match=option):
            load(argv, {})


# --- keeping it current ----------------------------------------------------------------


async def test_registry_events_refresh_the_names_and_bursts_are_read_once(home, sources):
    # A quiet spell of 0.3 s ends a burst: wide enough for a busy test machine.
    source = await sources(home.url, refresh_s=3600, debounce_s=0.3, debounce_max_s=5.0)
    await until(loaded(source))
    await home.rename_area("kitchen", "Cookhouse")
    await until(lambda: "Cookhouse" in source.names.areas)
    await home.rename_entity("light.hue_1", "Sofa lamp")
    await until(lambda: "Sofa lamp" in source.names.entities)
    assert "Reading Lamp" not in source.names.all()
    await home.expose("light.hidden")  # exposure of a registry entity is a registry event
    await until(lambda: "Hidden light" in source.names.entities)
    assert source.names.areas == ("Living Room", "Lounge", "Cookhouse", "Bedroom", "Garage")
    assert source.names.floors == FLOORS  # the garage is on no floor
    reads = source.reads
    for _ in range(30):  # e.g. a device re-interviewed at start-up
        await home.fire("device_registry_updated", {"action": "update", "device_id": "hue_1", "changes": {}})
    await until(lambda: source.reads > reads)
    await asyncio.sleep(0.6)
    assert source.reads - reads <= 2  # one, or two if the machine stalled mid-burst: not thirty


async def test_changes_without_an_event_are_read_by_the_periodic_refresh(home, sources):
    source = await sources(home.url, refresh_s=0.2)
    await until(loaded(source))
    home.add_entity("script.movie_time", original_name="Movie time", registry=False, assistants={})
    await home.expose("script.movie_time")  # stored outside the registry: no event
    await until(lambda: "Movie time" in source.names.entities)


async def test_home_assistant_down_at_start_then_up(sources, caplog):
    ha = furnish(FakeHomeAssistant(TOKEN, port=free_port()))
    source = await sources(ha.url)
    await until(lambda: source.attempts >= 3)
    assert source.state == "unreachable" and source.names.all() == ()
    await ha.start()
    try:
        await until(loaded(source))
        assert source.names.areas == AREAS
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "cannot read them from" in warnings[0].getMessage()
    finally:
        await ha.stop()


async def test_home_assistant_going_away_keeps_the_last_names_and_reconnects(home, sources, caplog):
    source = await sources(home.url)
    await until(loaded(source))
    before = source.names
    await home.stop()
    await until(lambda: source.state == "lost")
    await until(lambda: source.attempts >= 4)  # retried while away...
    assert source.names == before               # ...and the names stayed
    home.add_area("garage", "Workshop")
    home.entities["sensor.garage_temperature"].assistants = {"conversation": True}
    await home.start()  # same port
    await until(lambda: "Workshop" in source.names.areas)
    assert source.state == "connected"
    lost = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lost) == 1 and "keeping the" in lost[0]


async def test_a_bad_token_is_one_clear_error_no_crash_and_never_logged(home, sources, caplog):
    caplog.set_level(logging.DEBUG)  # websockets logs frames at DEBUG: the auth frame must not be one
    token = {"value": WRONG}
    source = await sources(home.url, lambda: token["value"])
    await until(lambda: home.auth_attempts >= 4)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "refused the access token" in errors[0].getMessage()
    assert source.state == "refused" and source.names.all() == ()
    token["value"] = TOKEN  # fixed (a rewritten token file): picked up on the next attempt
    await until(loaded(source))
    assert source.names.areas == AREAS
    # Not even a piece of one (websockets shortens long frames in the middle when it logs them).
    pieces = [piece for secret in (WRONG, TOKEN) for piece in (secret, secret[-12:], secret.split(".")[1][:12])]
    assert not [p for p in pieces if p in caplog.text or any(p in str(r.args) for r in caplog.records)]


async def test_a_token_without_admin_rights_is_refused_clearly(sources, caplog):
    ha = await furnish(FakeHomeAssistant(TOKEN, admin=False)).start()
    try:
        source = await sources(ha.url)
        await until(lambda: ha.auth_attempts >= 3)
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "administrator" in errors[0] and "unauthorized" in errors[0]
        assert source.names.all() == ()
    finally:
        await ha.stop()


# --- in the server --------------------------------------------------------------------------


async def test_the_server_owns_the_source_and_offers_the_snapshot(home):
    quiet = dict(uri="tcp://127.0.0.1:0", vad_trim=False, speculate=False)
    server = AmanuensisServer(settings_from(ha_url=home.url, ha_token=TOKEN, **quiet), FakeEngine())
    assert server.home_names == ()
    await server.start()
    try:
        await until(lambda: server.home_names != ())
        assert server.home_names == server.names_source.names.all() and "Reading Lamp" in server.home_names
    finally:
        await server.stop(timeout=5)
    assert server.names_source.state == "stopped"
    assert server.home_names  # the last snapshot outlives the connection

    off = AmanuensisServer(settings_from(**quiet), FakeEngine())
    assert off.names_source is None and off.home_names == ()
