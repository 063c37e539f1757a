"""Start-up and model lifetime: the silence encoding's disk cache, loading while the port
already answers, and unloading when idle. Real engines, real server processes, real speech."""

from __future__ import annotations

import asyncio
import logging
import os
import time

import numpy as np
import pytest
import torch
from wyoming.info import Describe, Info

from benchmarks.bench_engine import materialise_model
from benchmarks.corpus import clips, normalize
from tests.conftest import READY_LINE
from tests.test_server import TINY_EXACT, Clip, client_for, read_event, same_words, served, transcribe
from wyoming_amanuensis.config import settings_from
from wyoming_amanuensis.model.silence_cache import cache_path
from wyoming_amanuensis.pipeline import Engine

CLIP = "s2p_gen_turn_on_the_lights"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return materialise_model("tiny.en", tmp_path_factory.mktemp("models") / "tiny-cached")


def load(model_dir, cache_dir, caplog) -> tuple[Engine, str]:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="wyoming_amanuensis.model.silence_cache"):
        engine = Engine.load(settings_from(model=str(model_dir), encoder_backend="cpu", cpu_runtime="torch",
                                           threads=1, cache_dir=str(cache_dir)))
    return engine, caplog.text


def silence_keys(engine: Engine) -> list[torch.Tensor]:
    loaded = engine.models[engine.default_model]
    return [layer.k for layer in loaded.context.layers] + [t.k for t in loaded.decoder.net.silence_tails]


def words(engine: Engine) -> str:
    clip = next(c for c in clips() if c.name == CLIP)
    return normalize(engine.transcribe(*clip.read()).text)


def test_disk_cache_used_on_second_start_and_rebuilt_when_stale_or_corrupt(tiny_dir, tmp_path, caplog):
    cache = tmp_path / "cache"
    first, log = load(tiny_dir, cache, caplog)
    assert "no cache file yet; computing" in log
    path = cache_path(cache, "tiny-cached", "cpu-f32-torch" + torch.__version__)
    assert path.is_file()
    assert words(first) == "turn on the lights"

    second, log = load(tiny_dir, cache, caplog)
    assert "silence cache: loaded" in log and "computing" not in log
    # the encoding read back is the one computed: same keys everywhere, same words
    for a, b in zip(silence_keys(first), silence_keys(second)):
        assert torch.equal(a, b)
    assert words(second) == "turn on the lights"

    # the model file changes (same size, new mtime): stale, recomputed, rewritten
    st = os.stat(tiny_dir / "model.bin")
    os.utime(tiny_dir / "model.bin", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third, log = load(tiny_dir, cache, caplog)
    assert "is stale (the model file or the backend changed); recomputing" in log
    assert words(third) == "turn on the lights"
    _, log = load(tiny_dir, cache, caplog)
    assert "silence cache: loaded" in log

    # flipped bytes inside the stored arrays: the checksum catches what the zip does not
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0x55 for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))
    fourth, log = load(tiny_dir, cache, caplog)
    assert "recomputing the silence encoding and rewriting it" in log
    assert "corrupt" in log or "unreadable" in log
    for a, b in zip(silence_keys(first), silence_keys(fourth)):
        assert torch.equal(a, b)
    assert words(fourth) == "turn on the lights"

    # cut short, then garbage: both logged as unreadable, neither crashes the load
    for damage in (data[: len(data) // 3], b"not a zip file at all"):
        path.write_bytes(bytes(damage))
        _, log = load(tiny_dir, cache, caplog)
        assert "unreadable" in log and "recomputing" in log
    _, log = load(tiny_dir, cache, caplog)
    assert "silence cache: loaded" in log


def test_unwritable_cache_dir_only_costs_the_recomputation(tiny_dir, tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("the cache dir cannot be created under a file")
    engine, log = load(tiny_dir, blocker / "cache", caplog)
    assert "cannot write" in log and "computed again at the next start" in log
    assert words(engine) == "turn on the lights"


def test_no_disk_cache_when_asked(tiny_dir, tmp_path, caplog):
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="wyoming_amanuensis.model.silence_cache"):
        Engine.load(settings_from(model=str(tiny_dir), encoder_backend="cpu", cpu_runtime="torch", threads=1,
                                  cache_dir="none"))
    assert "silence cache" not in caplog.text
    assert settings_from(cache_dir="none").silence_cache_dir() is None
    assert settings_from(cache_dir=str(tmp_path)).silence_cache_dir() == tmp_path


# ---------------------------------------------------------------------------- server processes

async def test_describe_answered_while_the_model_loads_then_requests_wait(server_factory):
    # base without the disk cache: its load (silence pass included) takes seconds, so the port
    # must be open long before the engine is
    # (the encoder backend left to "auto": info names it as set while loading, as chosen after)
    server = server_factory(("--model", "base", "--encoder-backend", "auto", "--threads", "1",
                             "--cache-dir", "none"), model_args=(), wait_loaded=False)
    loading = await described(server)
    log = server.log()
    assert READY_LINE not in log, "the model was already loaded: nothing shows describe came first"
    assert "encoder on auto" in loading.asr[0].description
    t0 = time.monotonic()
    event = await transcribe(server, Clip("living_room_light"))  # waits for the load
    assert same_words(event.data["text"], "Turn on the living room light.")
    assert READY_LINE in server.log() and time.monotonic() - t0 > 0
    assert server.log().index("listening on") < server.log().index(READY_LINE)
    chosen = "cuda" if torch.cuda.is_available() else "cpu"
    assert f"encoder on {chosen};" in (await described(server)).asr[0].description


async def described(server) -> Info:
    async with client_for(server) as client:
        await client.write_event(Describe().event())
        event = await read_event(client, 10)
        assert event is not None and Info.is_type(event.type), event
        return Info.from_event(event)


async def test_no_preload_loads_at_the_first_request(server_factory, tmp_path):
    server = server_factory(("--no-preload", "--cache-dir", str(tmp_path)), wait_loaded=False,
                            model_args=("--model", "tiny.en", "--encoder-backend", "cpu", "--threads", "1"))
    assert await served(server)
    await asyncio.sleep(1.0)
    assert READY_LINE not in server.log()
    event = await transcribe(server, Clip("living_room_light"))
    assert same_words(event.data["text"], "Turn on the living room light.")
    assert READY_LINE in server.log()


@pytest.mark.parametrize("workers", [(), ("--workers", "2")], ids=["one-worker", "two-workers"])
async def test_idle_unload_and_reload_under_concurrent_requests(server_factory, tmp_path, workers):
    """With two workers, both runs hold the model until the last ends."""
    server = server_factory(("--unload-after-s", "1.5", "--cache-dir", str(tmp_path), *workers),
                            model_args=("--model", "tiny.en", "--encoder-backend", "cpu", "--threads", "1"))
    names = TINY_EXACT[:4]
    for round_ in range(2):
        # several clients at once: while loading (second round), all of them wait for one load
        events = await asyncio.gather(*(transcribe(server, Clip(n)) for n in names))
        for name, event in zip(names, events):
            assert same_words(event.data["text"], Clip(name).reference), name
        deadline = time.monotonic() + 60
        while server.log().count("models unloaded after") <= round_ and time.monotonic() < deadline:
            await asyncio.sleep(0.3)
        assert server.log().count("models unloaded after") == round_ + 1
    log = server.log()
    assert log.count(READY_LINE) == 2 and "load 2 took" in log  # one reload for four clients
    assert await served(server)  # describe needs no model


async def test_unload_frees_memory(server_factory, tmp_path):
    server = server_factory(("--unload-after-s", "1", "--cache-dir", str(tmp_path)),
                            model_args=("--model", "base", "--encoder-backend", "cpu", "--threads", "1"))
    await transcribe(server, Clip("living_room_light"))
    loaded = rss_mib(server.proc.pid)
    deadline = time.monotonic() + 60
    while "models unloaded after" not in server.log() and time.monotonic() < deadline:
        await asyncio.sleep(0.3)
    await asyncio.sleep(0.5)
    unloaded = rss_mib(server.proc.pid)
    # base's weights and silence caches are ~150 MB; most of it must go back to the system
    assert loaded - unloaded > 100, (loaded, unloaded)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_checksum_covers_every_array(tmp_path):
    from wyoming_amanuensis.model.silence_cache import SilenceEncoding, _read, _write

    enc = SilenceEncoding(torch.zeros(1, 1500, 8), [(torch.ones(1, 2, 1500, 4, dtype=torch.float16),) * 2])
    path = tmp_path / "x.npz"
    _write(path, "key", enc)
    got, why = _read(path, "key")
    assert got is not None and why == "" and torch.equal(got.kv[0][0], enc.kv[0][0])
    assert _read(path, "other key")[1].startswith("stale")
    with np.load(path) as z:
        arrays = dict(z)
    arrays["v0"] = arrays["v0"].copy()
    arrays["v0"][0, 0, 0, 0] = 2
    np.savez(path, **arrays)
    assert _read(path, "key")[1] == "corrupt (checksum mismatch)"
