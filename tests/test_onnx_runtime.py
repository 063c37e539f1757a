"""The ONNX Runtime CPU path (wyoming_amanuensis/onnx_runtime): its cache of built graphs, its
numerics against the torch modules on the real base model, every model shape, and that it never
imports torch (nor onnx once built)."""

from __future__ import annotations

import json
import logging
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.corpus import clips
from tests.fake_ct2_whisper import SHAPES, _scalars, random_variables, serialize, write_model
from wyoming_amanuensis.audio import SAMPLE_RATE, to_16k
from wyoming_amanuensis.mel import N_FRAMES_30S, log_mel
from wyoming_amanuensis.model.ct2 import ModelFileError
from wyoming_amanuensis.onnx_runtime import build, store
from wyoming_amanuensis.onnx_runtime.load import load_onnx
from wyoming_amanuensis.onnx_runtime.sessions import cpu_session

REPO = Path(__file__).resolve().parents[1]
CLIP_NAMES = ("lamp_44k_stereo", "jfk")  # plus one more short command, picked below
OPTS = dict(threads=1, int8_decoder=True, silence_chunk=50, tail_chunk=10)


def _audio(clip) -> np.ndarray:
    samples, rate = clip.read()
    return to_16k(samples, rate)[0] if rate != SAMPLE_RATE or samples.ndim > 1 else samples.astype(np.float32)


def _frames(n_samples: int, margin_s: float = 0.5) -> int:
    """The engine's window for this much audio: the speech plus a splice margin, even, at most 30 s."""
    frames = int(math.ceil((n_samples / SAMPLE_RATE + margin_s) * 100))
    return max(2, min(N_FRAMES_30S, frames + frames % 2))


@pytest.fixture(scope="module")
def corpus_audio() -> dict[str, np.ndarray]:
    by_name = {c.name: c for c in clips()}
    if not by_name:
        pytest.skip("no corpus (AMANUENSIS_CORPUS)")
    names = [n for n in CLIP_NAMES if n in by_name]
    names += [n for n in sorted(by_name) if n not in names and by_name[n].seconds < 4][:3 - len(names)]
    return {n: _audio(by_name[n]) for n in names}


@pytest.fixture(scope="module")
def base_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def ort(base_cache):
    return load_onnx("base", cache_dir=base_cache, **OPTS)


# --- the cache of built graphs ----------------------------------------------------------------


def _fake(tmp_path: Path, name: str = "tiny") -> Path:
    return write_model(tmp_path / name, SHAPES[name])


def _runs(loaded) -> np.ndarray:
    """Encode 1 s of noise, project, one decoder step: the logits."""
    d = loaded.model.dims
    mel = log_mel(np.random.default_rng(0).normal(0, 0.1, SAMPLE_RATE).astype(np.float32), d.n_mels, 150)[None]
    enc = loaded.backend.encode(mel, loaded.context)
    assert enc.features.shape == (1, 75, d.width) and enc.features.dtype == np.float32
    cross = loaded.net.cross(enc.features, True)
    prefix = loaded.model.tokenizer.sot_sequence(None if not loaded.model.tokenizer.multilingual else "en")
    logits, _ = loaded.net.step([prefix], loaded.net.new_cache(1), cross, [-1])
    assert logits.shape == (1, 1, d.n_vocab) and np.isfinite(logits).all()
    return logits


def test_second_load_reuses_the_build(tmp_path, caplog):
    model = _fake(tmp_path)
    caplog.set_level(logging.INFO, logger="wyoming_amanuensis.onnx_runtime")
    first = _runs(load_onnx(str(model), cache_dir=tmp_path / "cache", **OPTS))
    assert "built" in caplog.text
    caplog.clear()
    second = _runs(load_onnx(str(model), cache_dir=tmp_path / "cache", **OPTS))
    assert "loaded" in caplog.text and "built" not in caplog.text and "WARNING" not in caplog.text
    np.testing.assert_array_equal(first, second)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["onnx-tiny-int8"]  # no temporary folder left


def test_changed_model_file_rebuilds(tmp_path, caplog):
    model = _fake(tmp_path)
    load_onnx(str(model), cache_dir=tmp_path / "cache", **OPTS)
    write_model(model, SHAPES["tiny"], seed=1)  # other weights, same shape
    caplog.set_level(logging.INFO, logger="wyoming_amanuensis.onnx_runtime")
    _runs(load_onnx(str(model), cache_dir=tmp_path / "cache", **OPTS))
    assert "stale" in caplog.text and "built" in caplog.text


@pytest.mark.parametrize("victim", ["decoder.onnx", "encoder.weights", "silence/tail0_k.npy", "manifest.json"])
def test_corrupt_file_warns_once_and_rebuilds(tmp_path, caplog, victim):
    model = _fake(tmp_path)
    good = _runs(load_onnx(str(model), cache_dir=tmp_path / "cache", **OPTS))
    path = tmp_path / "cache" / "onnx-tiny-int8" / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x5A
    path.write_bytes(bytes(data))
    caplog.set_level(logging.INFO, logger="wyoming_amanuensis.onnx_runtime")
    np.testing.assert_array_equal(_runs(load_onnx(str(model), cache_dir=tmp_path / "cache", **OPTS)), good)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "onnx-tiny-int8" in warnings[0].getMessage()
    assert any(w in warnings[0].getMessage() for w in ("corrupt", "unreadable"))
    caplog.clear()
    load_onnx(str(model), cache_dir=tmp_path / "cache", **OPTS)
    assert "WARNING" not in caplog.text and "loaded" in caplog.text


def test_unwritable_or_no_cache_dir_still_works(tmp_path, caplog):
    model = _fake(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    caplog.set_level(logging.INFO, logger="wyoming_amanuensis.onnx_runtime")
    _runs(load_onnx(str(model), cache_dir=blocker / "cache", **OPTS))
    assert "cannot write" in caplog.text
    _runs(load_onnx(str(model), cache_dir=None, **OPTS))


def test_two_processes_building_at_once(tmp_path):
    """Both start on an empty cache; each builds and renames, the loser uses the winner's folder."""
    model = _fake(tmp_path)
    code = ("import sys; from pathlib import Path; from wyoming_amanuensis.onnx_runtime.load import load_onnx; "
            f"load_onnx({str(model)!r}, cache_dir=Path({str(tmp_path / 'cache')!r}), threads=1, int8_decoder=True, "
            "silence_chunk=50, tail_chunk=10)")
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO) for _ in range(2)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["onnx-tiny-int8"]
    _runs(load_onnx(str(model), cache_dir=tmp_path / "cache", **OPTS))


def test_changed_cpu_fingerprint_rebuilds(tmp_path, caplog, monkeypatch):
    """A cache folder moved to another CPU is stale: its int8 graphs are rebuilt with a fresh
    probe of the activation bits, which the manifest records. float32 graphs run anywhere."""
    model = _fake(tmp_path)
    for int8 in (True, False):
        load_onnx(str(model), cache_dir=tmp_path / "cache", **{**OPTS, "int8_decoder": int8})
    meta = json.loads((tmp_path / "cache" / "onnx-tiny-int8" / store.MANIFEST).read_text())
    assert meta["bits"] == build.activation_bits() and meta["format"] == store.FORMAT
    assert json.loads((tmp_path / "cache" / "onnx-tiny-f32" / store.MANIFEST).read_text())["bits"] is None
    monkeypatch.setattr(store, "cpu_fingerprint", lambda: "another cpu")
    caplog.set_level(logging.INFO, logger="wyoming_amanuensis.onnx_runtime")
    _runs(load_onnx(str(model), cache_dir=tmp_path / "cache", **OPTS))
    assert "stale" in caplog.text and "another CPU" in caplog.text and "built" in caplog.text
    caplog.clear()
    load_onnx(str(model), cache_dir=tmp_path / "cache", **{**OPTS, "int8_decoder": False})
    load_onnx(str(model), cache_dir=tmp_path / "cache", **OPTS)
    assert "built" not in caplog.text and "WARNING" not in caplog.text


def test_cpu_fingerprint_is_stable():
    first = store.cpu_fingerprint()
    assert first == store.cpu_fingerprint()
    assert first == "" or re.fullmatch(r"[0-9a-f]{16}", first)


# --- the int8 linears' activation bits ----------------------------------------------------------


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    m = re.search(r"^(?:flags|Features)\s*:(.*)$", text, re.M)
    return set(m.group(1).split()) if m else set()


def test_activation_probe_answers_this_cpu():
    bits = build.activation_bits()
    assert bits in (7, 8)
    if "avx512_vnni" in _cpu_flags():  # VPDPBUSD adds in int32: exact at 8 bits
        assert bits == 8
        try:
            from wyoming_amanuensis.model.quantize import int8_activation_bits
        except ImportError:  # no torch
            return
        assert int8_activation_bits(8) == bits  # the same question, asked of fbgemm


def test_activation_probe_falls_back_to_7_bits_on_saturation(monkeypatch, caplog):
    """A kernel whose int16 lanes saturate (VPMADDUBSW without VNNI): 7 bits, logged once."""

    class Saturating:
        def __init__(self, session):
            self.session = session

        def run(self, names, feed):
            return [np.minimum(y, 32767 * (u.shape[1] // 2)).astype(np.int32)
                    for y, u in zip(self.session.run(names, feed), feed.values())]

    monkeypatch.setattr(build, "_BITS", [])
    monkeypatch.setattr(build, "cpu_session", lambda model, threads: Saturating(cpu_session(model, threads)))
    caplog.set_level(logging.INFO, logger="wyoming_amanuensis.onnx_runtime")
    assert build.activation_bits() == 7 and build.activation_bits() == 7
    assert len([r for r in caplog.records if "7-bit" in r.getMessage()]) == 1


def _linear_model(w: np.ndarray, b: np.ndarray, bits: int) -> bytes:
    from onnx import TensorProto, helper

    from wyoming_amanuensis.onnx_runtime import graphs

    g = graphs._Graph({}, int8=True, bits=bits)
    g.output(g.linear_int8("x", w, b), "y")
    return g.model("linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "n", w.shape[1]])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "n", w.shape[0]])]).SerializeToString()


def _reference_linear(x: np.ndarray, w: np.ndarray, b: np.ndarray, bits: int) -> np.ndarray:
    """The int8 linear in numpy: rows quantised in 2**bits - 1 steps (float32 as the graph does),
    weights on CTranslate2's 8-bit grid at either bits, the integer product exact."""
    from wyoming_amanuensis.onnx_runtime.graphs import quantize_rows

    steps = np.float32(2 ** bits - 1)
    qw, scale, row_sums = quantize_rows(w)
    low, high = x.min(-1, keepdims=True), x.max(-1, keepdims=True)
    span = np.maximum(high - low, np.float32(1e-30))
    q = np.rint(((x - low) / span) * steps)
    assert q.min() == 0 and q.max() == steps
    acc = q.astype(np.int64) @ qw.T.astype(np.int64)
    return acc * (scale.astype(np.float64) / float(steps)) * span + low.astype(np.float64) * row_sums + b


@pytest.mark.parametrize("bits", [7, 8])
def test_int8_linear_matches_numpy(bits):
    """torch's RowInt8Linear(bits=7) also moves the weights onto its observer's grid
    (max|w| / 127.5 over [-128, 127]); the ONNX 7-bit variant narrows only the activations
    (127 * 127 * 2 fits the int16 lanes) and keeps CTranslate2's 8-bit weights, so the reference
    is numpy, not torch."""
    rng = np.random.default_rng(bits)
    w = (rng.normal(0, 0.05, (96, 512)) * rng.uniform(0.2, 3, (96, 1))).astype(np.float32)
    b = rng.normal(0, 0.1, 96).astype(np.float32)
    x = (rng.normal(0, 1, (3, 5, 512)) * rng.uniform(0.1, 20, (3, 5, 1)) + rng.normal(0, 2, (3, 5, 1)))
    x = x.astype(np.float32)
    y = cpu_session(_linear_model(w, b, bits), 1).run(None, {"x": x})[0]
    ref = _reference_linear(x, w, b, bits)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    exact = x.astype(np.float64) @ w.T.astype(np.float64) + b
    err = np.abs(y - exact).max() / np.abs(exact).max()
    assert err < 0.05, err  # int8, not garbage
    if bits == 7:
        y8 = cpu_session(_linear_model(w, b, 8), 1).run(None, {"x": x})[0]
        assert not np.array_equal(y, y8)  # the bits really change the graph


def test_non_whisper_model_bin_names_the_tensor(tmp_path):
    directory = _fake(tmp_path)
    variables = random_variables(SHAPES["tiny"])
    variables.update(_scalars(SHAPES["tiny"]))
    variables["decoder/layer_1/ffn/linear_0/weight"] = variables["decoder/layer_1/ffn/linear_0/weight"][:, :-1]
    (directory / "model.bin").write_bytes(serialize(variables, {"decoder/projection/weight": "decoder/embeddings/weight"}))
    with pytest.raises(ModelFileError, match="decoder/layer_1/ffn/linear_0/weight"):
        load_onnx(str(directory), cache_dir=tmp_path / "cache", **OPTS)


@pytest.mark.parametrize("name", sorted(SHAPES))
@pytest.mark.parametrize("int8", [True, False])
def test_every_shape_builds_and_steps(tmp_path, name, int8):
    loaded = load_onnx(str(_fake(tmp_path, name)), cache_dir=tmp_path / "cache", **{**OPTS, "int8_decoder": int8})
    shape = SHAPES[name]
    assert (loaded.model.dims.n_mels, loaded.model.dims.dec_layers) == (shape.n_mels, shape.dec_layers)
    _runs(loaded)


def test_no_torch_nor_onnx_when_loading_from_the_cache(ort, base_cache):
    code = ("import sys; from pathlib import Path; import wyoming_amanuensis.onnx_runtime.load as m; "
            "bad = [n for n in sys.modules if n.split('.')[0] in ('torch', 'onnx')]; assert not bad, bad; "
            f"m.load_onnx('base', cache_dir=Path({str(base_cache)!r}), threads=1, int8_decoder=True, "
            "silence_chunk=50, tail_chunk=10); "
            "bad = [n for n in sys.modules if n.split('.')[0] in ('torch', 'onnx')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)


# --- numerics against the torch modules (base) --------------------------------------------------


@pytest.fixture(scope="module")
def torch_ref():
    torch = pytest.importorskip("torch")
    from wyoming_amanuensis.encoders.torch_backend import TorchEncoderBackend
    from wyoming_amanuensis.model.loader import load_model
    from wyoming_amanuensis.model.silence import PooledTail

    model = load_model("base", int8_bits=8)
    backend = TorchEncoderBackend(model.encoder)
    silent = log_mel(np.zeros(0, np.float32), 80, n_frames=N_FRAMES_30S)[None]
    feats, context = backend.silence(silent, 50)
    with torch.inference_mode():
        tails = [PooledTail(k, v, 10) for k, v in model.decoder.project_cross(feats)]

    class Ref:
        def encode(self, mel, short=True):
            return backend.encode(mel, context if short else None).features.numpy()

        def cross(self, features: np.ndarray):
            with torch.inference_mode():
                f = torch.from_numpy(features)
                p = f.shape[1]
                out = []
                for (k, v), tail in zip(model.decoder.project_cross(f), tails):
                    tk, tv, tb = tail.from_position(p)
                    out.append((torch.cat((k, tk), 2), torch.cat((v, tv), 2),
                                torch.cat((torch.zeros(1, p), tb), 1)))
                return out

        def step(self, tokens, cache, cross):
            with torch.inference_mode():
                x, _ = model.decoder(torch.tensor(tokens), cache, cross)
                return model.decoder.proj(model.decoder.ln(x[:, -1:])).numpy()

        def new_cache(self):
            return model.decoder.new_cache(1)

        def greedy(self, cross, prefix, eot, n_max=30):
            cache = model.decoder.new_cache(1)
            logits, out = self.step([prefix], cache, cross), []
            while len(out) < n_max:
                t = int(logits[0, -1].argmax())
                if t == eot:
                    break
                out.append(t)
                logits = self.step([[t]], cache, cross)
            return out

    return Ref()


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_encoder_matches_torch(ort, torch_ref, corpus_audio):
    audio = corpus_audio[CLIP_NAMES[0]]
    short = log_mel(audio, 80, _frames(len(audio)))[None]
    full = log_mel(audio, 80, N_FRAMES_30S)[None]
    cos_short = _cosine(ort.backend.encode(short, ort.context).features, torch_ref.encode(short))
    cos_full = _cosine(ort.backend.encode(full, ort.context).features, torch_ref.encode(full, short=False))
    print(f"encoder cosine: short window 1 - {1 - cos_short:.2e}, full window 1 - {1 - cos_full:.2e}")
    assert cos_short > 0.99999 and cos_full > 0.99999
    with pytest.raises(ValueError, match="30 s window"):
        ort.backend.encode(np.zeros((1, 80, 3002), np.float32))


@pytest.fixture(scope="module")
def forced(ort, torch_ref, corpus_audio):
    """Per clip: ORT's cross (from torch's encoder features) and torch's greedy tokens."""
    tok = ort.model.tokenizer
    out = {}
    for name, audio in corpus_audio.items():
        feats = torch_ref.encode(log_mel(audio, 80, _frames(len(audio)))[None])
        prefix = tok.sot_sequence("en")
        out[name] = (feats, ort.net.cross(feats, True), torch_ref.greedy(torch_ref.cross(feats), prefix, tok.eot), prefix)
    return out


def test_decoder_argmax_matches_torch_teacher_forced(ort, torch_ref, forced):
    agree = total = 0
    for name, (feats, cross, tokens, prefix) in forced.items():
        ref_cross = torch_ref.cross(feats)
        tcache, cache = torch_ref.new_cache(), ort.net.new_cache(1)
        feed = [prefix] + [[t] for t in tokens]
        for fed in feed:
            ref = torch_ref.step([fed], tcache, ref_cross)
            logits, _ = ort.net.step([fed], cache, cross, [-1])
            agree += int(ref[0, -1].argmax() == logits[0, -1].argmax())
            total += 1
        assert cache.length == len(prefix) + len(tokens)
    print(f"decoder argmax agreement with torch, teacher-forced: {agree}/{total} steps over {len(forced)} clips")
    assert agree == total


def _teacher_forced(net, cross, rows: list[list[int]], prefix, alignment=False):
    """Feed the prefix then each row's tokens (a finished row repeats its last one): the logits of every step."""
    cache = net.new_cache(len(rows))
    out = [net.step([prefix] * len(rows), cache, cross, [-1], alignment)]
    for i in range(max(len(r) for r in rows)):
        out.append(net.step([[r[min(i, len(r) - 1)]] for r in rows], cache, cross, [-1], alignment))
    return out


def test_joined_batch_is_bitwise_each_request_alone(ort, forced):
    names = list(forced)
    assert len({forced[n][1].kv.bias.shape[0] for n in names}) == len(names)  # different lengths
    alone = {n: _teacher_forced(ort.net, forced[n][1], [forced[n][2]], forced[n][3]) for n in names}
    rows = [forced[n][2] for n in names]
    joined = _teacher_forced(ort.net, ort.net.join([forced[n][1] for n in names]), rows, forced[names[0]][3])
    for b, n in enumerate(names):
        for i, (logits, weights) in enumerate(joined):
            assert weights is None
            if i <= len(rows[b]):
                np.testing.assert_array_equal(logits[b], alone[n][i][0][0], err_msg=f"{n} step {i}")


def test_alignment_weights_and_positions(ort, forced):
    feats, cross, tokens, prefix = next(iter(forced.values()))
    S = cross.kv.bias.shape[0]
    A = len(ort.model.alignment_heads)
    cache = ort.net.new_cache(2)
    fed = [prefix + tokens[:3], prefix + tokens[1:4]]
    n = len(fed[0])
    everything, weights = ort.net.step(fed, cache, cross, list(range(n)), alignment=True)
    assert everything.shape == (2, n, ort.model.dims.n_vocab) and everything.dtype == np.float32
    assert len(weights) == 2 and all(w.shape == (A, n, S) for w in weights)
    np.testing.assert_allclose(weights[0].sum(-1), 1.0, atol=1e-5)
    for positions in ([-1], [0, -2], [n - 1, 1]):
        picked, none = ort.net.step(fed, ort.net.new_cache(2), cross, positions)
        assert none is None
        np.testing.assert_allclose(picked, everything[:, positions], rtol=0, atol=1e-5)
    joined = ort.net.join([cross, cross])
    _, w = ort.net.step(fed, ort.net.new_cache(2), joined, [-1], alignment=True)
    assert w is None  # joined crosses record no weights
    with pytest.raises(ValueError, match="context"):
        ort.net.step([[1] * (ort.model.dims.n_text_ctx + 1)], ort.net.new_cache(1), cross, [-1])


def _greedy(loaded, audio: np.ndarray, n_max: int = 40) -> list[int]:
    mel = log_mel(audio, 80, _frames(len(audio)))[None]
    cross = loaded.net.cross(loaded.backend.encode(mel, loaded.context).features, True)
    tok = loaded.model.tokenizer
    cache, out = loaded.net.new_cache(1), []
    logits, _ = loaded.net.step([tok.sot_sequence("en")], cache, cross, [-1])
    while len(out) < n_max and (t := int(logits[0, -1].argmax())) != tok.eot:
        out.append(t)
        logits, _ = loaded.net.step([[t]], cache, cross, [-1])
    return out


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def test_forced_7bit_build_decodes_the_same_words(ort, corpus_audio, tmp_path, monkeypatch, caplog):
    """What a CPU without VNNI builds (7-bit activations) transcribes as this one does."""
    monkeypatch.setattr(build, "_BITS", [7])
    caplog.set_level(logging.INFO, logger="wyoming_amanuensis.onnx_runtime")
    seven = load_onnx("base", cache_dir=tmp_path, **OPTS)
    assert json.loads((tmp_path / "onnx-base-int8" / store.MANIFEST).read_text())["bits"] == 7
    assert "built" in caplog.text
    tok = ort.model.tokenizer
    for name, audio in corpus_audio.items():
        eight_text, seven_text = (tok.decode(_greedy(m, audio)) for m in (ort, seven))
        print(f"{name}: 8 bits {eight_text!r}, 7 bits {seven_text!r}")
        assert _words(seven_text) == _words(eight_text) and _words(eight_text), name


def test_cache_reorder_and_fork(ort, forced):
    feats, cross, tokens, prefix = next(iter(forced.values()))
    cache = ort.net.new_cache(3)
    ort.net.step([prefix + [t] for t in tokens[:3]], cache, cross, [-1])
    before = [(k.copy(), v.copy()) for k, v in cache.layers]
    same = cache.layers
    cache.reorder([0, 1, 2])
    assert cache.layers is same  # the identity copies nothing
    cache.reorder([2, 0, 0, 1])
    assert cache.rows == 4 and cache.length == len(prefix) + 1
    for (k, v), (k0, v0) in zip(cache.layers, before):
        np.testing.assert_array_equal(k, k0[[2, 0, 0, 1]])
        np.testing.assert_array_equal(v, v0[[2, 0, 0, 1]])
    fork = cache.fork(0, 2, 5)
    assert fork.rows == 5 and fork.length == 2
    for (k, _), (k0, _) in zip(fork.layers, before):
        np.testing.assert_array_equal(k, np.repeat(k0[2:3, :, :2], 5, axis=0))
    # the fork steps on from its 2 positions as a fresh cache fed the same 2 tokens would
    fresh = ort.net.new_cache(5)
    ort.net.step([prefix[:2]] * 5, fresh, cross, [-1])
    a, _ = ort.net.step([[tokens[0]]] * 5, fork, cross, [-1])
    b, _ = ort.net.step([[tokens[0]]] * 5, fresh, cross, [-1])
    np.testing.assert_allclose(a, b, atol=1e-4)
