"""The prepared-model disk cache (model/prepared.py): a model read back from it is the model
built from model.bin, bit for bit (same int8 packing, same token IDs on real speech); it is
used on the second load and rebuilt, with one log line and no crash, when it is corrupt,
truncated, or the model file changed."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from benchmarks.bench_engine import materialise_model
from benchmarks.corpus import clips
from wyoming_amanuensis.config import Settings, settings_from
from wyoming_amanuensis.model import disk_cache, prepared
from wyoming_amanuensis.model.quantize import RowInt8Linear, int8_activation_bits
from wyoming_amanuensis.pipeline import Engine

# the int8 decoder's activation bits as the default settings run here (the cache file's name)
DEFAULT_BITS = int8_activation_bits(Settings().int8_decoder_bits)

CLIPS = ("s2p_gen_turn_on_the_lights", "living_room_light")
LOGGER = "wyoming_amanuensis.model.prepared"


def load(model: str, cache_dir, caplog, **kw) -> tuple[Engine, str]:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        engine = Engine.load(settings_from(model=model, encoder_backend="cpu", cpu_runtime="torch", threads=1,
                                           cache_dir=str(cache_dir),
                                           **kw))
        disk_cache.wait_for_writes()  # the prepared model is written in the background
    return engine, "\n".join(r.getMessage() for r in caplog.records if r.name == LOGGER)


def token_ids(engine: Engine) -> list[list[int]]:
    wanted = [c for c in clips() if c.name in CLIPS]
    assert len(wanted) == len(CLIPS)
    return [engine.transcribe(*c.read()).token_ids for c in wanted]


def networks(engine: Engine):
    m = engine.models[engine.default_model].model
    return m.encoder, m.decoder


def assert_same_networks(a: Engine, b: Engine) -> None:
    """Every tensor equal, every int8 layer packing the same weights and computing the same."""
    for net_a, net_b in zip(networks(a), networks(b)):
        tensors_a = dict([*net_a.named_parameters(), *net_a.named_buffers()])
        tensors_b = dict([*net_b.named_parameters(), *net_b.named_buffers()])
        assert tensors_a.keys() == tensors_b.keys()
        for name, t in tensors_a.items():
            assert t.dtype == tensors_b[name].dtype and torch.equal(t, tensors_b[name]), name
        mods_b = dict(net_b.named_modules())
        x = torch.randn(3, 7, net_a.dims.width)
        for name, mod in net_a.named_modules():
            assert type(mod) is type(mods_b[name]), name
            if isinstance(mod, RowInt8Linear):
                pa, pb = mod.parts(), mods_b[name].parts()
                assert pa.keys() == pb.keys()
                assert all(torch.equal(pa[k], pb[k]) for k in pa), name
                if mod.in_features == net_a.dims.width:
                    assert torch.equal(mod(x), mods_b[name](x)), name


def test_base_from_the_cache_is_bit_identical(tmp_path, caplog):
    cache = tmp_path / "cache"
    first, log = load("base", cache, caplog)
    assert "no cache file yet; computing the prepared model" in log
    path = prepared.cache_path(cache, "base", DEFAULT_BITS)
    assert path.is_file()
    uncached, log = load("base", "none", caplog)
    assert log == "" and sorted(p.name for p in cache.iterdir())[0] == path.name
    second, log = load("base", cache, caplog)
    assert "model cache: loaded" in log and "computing" not in log

    assert_same_networks(uncached, second)
    assert_same_networks(first, second)
    expected = token_ids(uncached)
    assert all(expected)
    assert token_ids(second) == expected
    assert token_ids(first) == expected


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return materialise_model("tiny.en", tmp_path_factory.mktemp("models") / "tiny-prepared")


def test_float_decoder_keeps_its_tied_projection(tiny_dir, tmp_path, caplog):
    kw = dict(int8_decoder=False)
    load(str(tiny_dir), tmp_path, caplog, **kw)
    cached, log = load(str(tiny_dir), tmp_path, caplog, **kw)
    assert "model cache: loaded" in log
    assert prepared.cache_path(tmp_path, "tiny-prepared", 0).is_file()
    dec = networks(cached)[1]
    assert dec.proj.weight is dec.token_embedding.weight  # one copy, as built from model.bin
    uncached, _ = load(str(tiny_dir), "none", caplog, **kw)
    assert_same_networks(uncached, cached)
    assert token_ids(cached) == token_ids(uncached)


def test_rebuilt_when_corrupt_truncated_or_the_model_changed(tiny_dir, tmp_path, caplog):
    reference = token_ids(load(str(tiny_dir), "none", caplog)[0])
    _, log = load(str(tiny_dir), tmp_path, caplog)
    assert "no cache file yet" in log
    path = prepared.cache_path(tmp_path, "tiny-prepared", DEFAULT_BITS)
    good = path.read_bytes()

    def damaged(data: bytes, why: str) -> None:
        path.write_bytes(data)
        engine, log = load(str(tiny_dir), tmp_path, caplog)
        warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and why in log, log
        assert "recomputing the prepared model and rewriting it" in log
        assert token_ids(engine) == reference
        assert path.read_bytes() == good  # rewritten: the same bytes as before the damage
        _, log = load(str(tiny_dir), tmp_path, caplog)
        assert "model cache: loaded" in log

    middle = len(good) // 2
    flipped = bytearray(good)
    flipped[middle:middle + 64] = bytes(b ^ 0x55 for b in flipped[middle:middle + 64])
    damaged(bytes(flipped), "corrupt (checksum mismatch)")
    damaged(good[: len(good) // 3], "truncated")
    damaged(good[:20], "truncated")
    damaged(good + b"x", "corrupt")
    damaged(b"not a prepared model", "unreadable")

    # the model file changes (same size, new mtime): stale, rebuilt
    st = os.stat(tiny_dir / "model.bin")
    os.utime(tiny_dir / "model.bin", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    engine, log = load(str(tiny_dir), tmp_path, caplog)
    assert "is stale" in log and "recomputing the prepared model" in log
    assert token_ids(engine) == reference
    _, log = load(str(tiny_dir), tmp_path, caplog)
    assert "model cache: loaded" in log


def test_no_model_cache_when_asked_and_unwritable_folder(tiny_dir, tmp_path, caplog):
    _, log = load(str(tiny_dir), "none", caplog)
    assert log == ""
    blocker = tmp_path / "a-file"
    blocker.write_text("the cache dir cannot be created under a file")
    engine, log = load(str(tiny_dir), blocker / "cache", caplog)
    assert "cannot write" in log and "computed again at the next start" in log
    assert token_ids(engine)


def test_an_older_versions_file_is_removed(tiny_dir, tmp_path, caplog):
    old = tmp_path / "model-tiny-prepared-int8dec.bin"  # named before the activation bits were
    old.write_bytes(b"AMNPREP\x01" + bytes(64))
    _, log = load(str(tiny_dir), tmp_path, caplog)
    assert not old.exists() and "removed" in log
    assert prepared.cache_path(tmp_path, "tiny-prepared", DEFAULT_BITS).is_file()
