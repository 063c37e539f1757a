"""Every CTranslate2 Whisper shape, on random weights written in the converter's format.

The real small .. large-v3-turbo weights cannot be downloaded here;
``tests/fake_ct2_whisper.py`` writes model directories of each real shape
(mel bins, vocabulary and special tokens, decoder layout kept; widths and most
layer counts scaled down). Each must load and run the short window with the
silence cache and the full window. Where the two compute the same function
they must agree exactly (the decoder's splice over the cached silence:
logits and greedy tokens); where the short window approximates (the encoder
attending to pooled silence keys), closer than without the cache.
"""

from __future__ import annotations

import dataclasses
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.bench_shapes import exact_decoder, kl, logits
from benchmarks.corpus import clips
from tests.fake_ct2_whisper import (BASE_FULL, QUANTIZATIONS, SHAPES, Shape, Vocab, quantize, random_variables,
                                    serialize, tokenizer_json, write_model)
from wyoming_amanuensis.config import settings_from
from wyoming_amanuensis.decoding import DecodeOptions, Decoder
from wyoming_amanuensis.encoders.base import EncoderOutput
from wyoming_amanuensis.mel import N_FRAMES_30S, log_mel
from wyoming_amanuensis.model.ct2 import ModelFileError, dequantize, read_model_bin
from wyoming_amanuensis.model.ct2_whisper import build_modules
from wyoming_amanuensis.model.loader import ModelNotFoundError, load_model, resolve
from wyoming_amanuensis.model.modules import N_CTX_AUDIO
from wyoming_amanuensis.model.torch_net import TorchDecoderNet
from wyoming_amanuensis.pipeline import Engine

# Random weights are no Whisper: the encoder's cached silence stands in for the full window's
# padding less well than on the real models (where the corpus WER is the measure: README).
# Measured on these shapes (benchmarks/bench_shapes.py): 0.94-0.99 with the cache, 0.38-0.94 without.
MIN_ENCODER_COSINE = 0.85


def _seed(name: str) -> int:
    return zlib.crc32(name.encode())


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    audio, rate = next(c for c in clips() if c.name == "s2p_gen_turn_on_the_lights").read()
    assert rate == 16000
    return audio


def _vocab_ids(shape: Shape) -> dict[str, int]:
    """Special token ids of the real vocabularies (openai-whisper's tokenizer, HF tokenizer.json)."""
    return {
        "en": dict(eot=50256, sot=50257, transcribe=50358, no_timestamps=50362, no_speech=50361, n_vocab=51864),
        "multi": dict(eot=50257, sot=50258, transcribe=50359, no_timestamps=50363, no_speech=50362, n_vocab=51865),
        "v3": dict(eot=50257, sot=50258, transcribe=50360, no_timestamps=50364, no_speech=50363, n_vocab=51866),
    }[shape.vocab]


@pytest.mark.parametrize("kind, package", [("en", "tiny.en"), ("multi", "base")])
def test_fake_vocabularies_match_the_bundled_real_ones(kind, package):
    """The fake's special tokens and config fields are the real models' (the two this machine has)."""
    _, directory, _ = resolve(package)
    real = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
    fake = tokenizer_json(Vocab(kind))
    def added(spec: dict) -> dict:
        return {a["id"]: a["content"] for a in spec["added_tokens"]}

    assert added(fake) == added(real)
    assert fake["post_processor"] == real["post_processor"] and fake["decoder"] == real["decoder"]
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    assert Vocab(kind).lang_ids == config["lang_ids"] and [220, Vocab(kind).eot] == config["suppress_ids_begin"]
    assert set(Vocab(kind).suppress_ids[-6:]) <= set(config["suppress_ids"])


def test_fake_model_bin_has_a_real_conversions_layout(tmp_path):
    """tiny.en's real dimensions written by the helper: the same tensors, shapes and dtypes as
    the bundled converted tiny.en, and the same scalars (plus the two a newer converter adds)."""
    _, directory, _ = resolve("tiny.en")
    real = read_model_bin(directory / "model.bin")
    shape = Shape("tiny.en-real-width", "", 80, 6, 4, 4, "en", head_dim=64)
    fake = read_model_bin(write_model(tmp_path / "m", shape) / "model.bin")
    assert set(fake) - set(real) == {"decoder/alibi_use_positive_positions", "decoder/scale_alibi"}
    assert set(real) <= set(fake)
    for name, value in real.items():
        assert fake[name].shape == value.shape and fake[name].dtype == value.dtype, name
        if value.ndim == 0 and name != "decoder/num_heads" and name != "encoder/num_heads":
            assert fake[name] == value, name
    raw = (directory / "model.bin").read_bytes()
    assert raw[:22] == (tmp_path / "m" / "model.bin").read_bytes()[:22]  # version, spec name, revision


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_every_stored_dtype_reads_back(quantization):
    """float32/float16/bfloat16 round to their precision; int8 rows to one step of their scale."""
    shape = SHAPES["tiny"]
    ref = random_variables(shape, seed=1)
    v = read_model_bin(serialize(quantize(ref, quantization), {}))
    for name in ("encoder/conv1/weight", "decoder/layer_0/attention/linear_1/weight", "decoder/layer_norm/gamma"):
        got, want = dequantize(v, name), ref[name]
        if v[name].dtype == np.int8:
            step = 1.0 / v[name + "_scale"].reshape(-1, *([1] * (want.ndim - 1)))
            assert np.all(np.abs(got - want) <= 0.5 * step + 1e-6), name
        else:
            tol = {"float32": 0, "float16": 1e-3, "bfloat16": 8e-3}.get(quantization, 1e-3)
            assert np.allclose(got, want, rtol=tol, atol=tol), name


def _encode(loaded, audio: np.ndarray, frames: int, context) -> torch.Tensor:
    mel = log_mel(audio, loaded.model.dims.n_mels, n_frames=frames)[None]
    return loaded.backend.encode(mel, context).features


@pytest.mark.parametrize("name", list(SHAPES))
def test_shape_loads_runs_and_short_window_agrees(name, tmp_path, speech):
    shape = SHAPES[name]
    quantization = QUANTIZATIONS[list(SHAPES).index(name) % len(QUANTIZATIONS)]
    directory = write_model(tmp_path / name, shape, quantization, seed=_seed(name))

    # load: dimensions from the file, special tokens from tokenizer.json, checked against each other
    model = load_model(str(directory))
    d, ids = model.dims, _vocab_ids(shape)
    assert (d.n_mels, d.width, d.enc_layers, d.dec_layers, d.enc_heads, d.n_vocab) == (
        shape.n_mels, shape.width, shape.enc_layers, shape.dec_layers, shape.heads, ids["n_vocab"])
    tok = model.tokenizer
    assert (tok.eot, tok.sot, tok.transcribe, tok.no_timestamps, tok.no_speech) == (
        ids["eot"], ids["sot"], ids["transcribe"], ids["no_timestamps"], ids["no_speech"])
    assert tok.timestamp_begin + 1501 == d.n_vocab
    if shape.vocab == "en":
        assert model.languages == ["en"] and tok.sot_sequence(None) == [ids["sot"], ids["no_timestamps"]]
    else:
        assert len(model.languages) == (100 if shape.vocab == "v3" else 99)
        assert tok.languages["en"] == 50259 and tok.languages["su"] == 50357
        assert tok.languages.get("yue") == (50358 if shape.vocab == "v3" else None)
        assert tok.sot_sequence("de") == [ids["sot"], 50261, ids["transcribe"], ids["no_timestamps"]]
    assert all(layer < d.dec_layers and head < d.dec_heads for layer, head in model.alignment_heads)
    del model

    # the server's engine: silence cache at start-up, short window and full window
    # a float decoder: int8 dynamic quantisation scales activations per call, so the exact
    # comparison below would differ by its rounding
    settings = settings_from(model=str(directory), encoder_backend="cpu", cpu_runtime="torch", beam_size_non_english=1,
                             int8_decoder=False, cache_dir=str(tmp_path / "cache"))
    fast = Engine.load(settings)
    full = Engine(dataclasses.replace(settings, fast_decoder=False), fast.models)
    loaded = fast.models[name]
    assert len(loaded.context.layers) == shape.enc_layers
    assert loaded.context.layers[0].k.shape == (1, shape.heads, N_CTX_AUDIO, shape.head_dim)
    for engine in (fast, full):
        result = engine.transcribe(speech, 16000)
        assert result.model == name and result.language in loaded.model.languages
        assert result.tokens > 0 and all(t < tok.eot for t in result.token_ids)

    # agreement: encoder states over the speech, short window + silence cache vs the full window
    frames = fast._window_frames(len(speech))
    assert frames < N_FRAMES_30S
    full_states = _encode(loaded, speech, N_FRAMES_30S, None)
    short_states = _encode(loaded, speech, frames, loaded.context)
    bare_states = _encode(loaded, speech, frames, None)
    n = short_states.shape[1]

    def cosine(a: torch.Tensor) -> float:
        return float(torch.nn.functional.cosine_similarity(a.flatten(), full_states[:, :n].flatten(), dim=0))

    assert cosine(short_states) > MIN_ENCODER_COSINE
    assert cosine(short_states) > cosine(bare_states)  # the silence cache brings it closer

    # agreement: the decoder's splice. Over a window whose positions after the speech are the
    # cached silence encoding, the spliced path with an unpooled tail computes the full
    # window's function: same logits, same greedy tokens and language.
    silence = _encode(loaded, np.zeros(0, np.float32), N_FRAMES_30S, None)
    exact = exact_decoder(loaded.model, silence)
    spliced = exact.prepare(EncoderOutput(features=short_states, tail_cached=True, backend="cpu"))
    whole = exact.prepare(EncoderOutput(features=torch.cat((short_states, silence[:, n:]), dim=1),
                                        tail_cached=False, backend="cpu"))
    options = DecodeOptions(language=None, max_tokens=12)
    a, b = exact.decode(whole, options), exact.decode(spliced, options)
    assert (a.tokens, a.language) == (b.tokens, b.language) and a.tokens
    prefix = tok.sot_sequence(a.language)
    seq = prefix + a.tokens + tok.encode(" turn on the lights")
    want, got = (logits(exact, c, seq, len(prefix)) for c in (whole, spliced))
    finite = np.isfinite(want)
    assert np.array_equal(finite, np.isfinite(got))
    assert np.allclose(want[finite], got[finite], atol=1e-3, rtol=1e-4)
    assert np.array_equal(want.argmax(-1), got.argmax(-1))
    # and the pooled tail the server uses (--decoder-tail-chunk) stays close to it
    pooled = loaded.decoder.prepare(EncoderOutput(features=short_states, tail_cached=True, backend="cpu"))
    pooled_logits = logits(loaded.decoder, pooled, seq, len(prefix))
    bare = loaded.decoder.prepare(EncoderOutput(features=short_states, tail_cached=False, backend="cpu"))
    bare_logits = logits(loaded.decoder, bare, seq, len(prefix))
    assert kl(want, pooled_logits) < kl(want, bare_logits)
    fast.close()


@pytest.mark.parametrize("name", list(SHAPES))
def test_ctranslate2_reads_the_fakes_as_we_do(name, tmp_path, speech):
    """CTranslate2 itself (the runtime these files are made for) loads each fake: the same
    dimensions and vocabulary, the same encoder states, and the same greedy tokens."""
    import ctranslate2

    shape = SHAPES[name]
    quantization = QUANTIZATIONS[list(SHAPES).index(name) % len(QUANTIZATIONS)]
    directory = write_model(tmp_path / name, shape, quantization, seed=_seed(name))
    theirs = ctranslate2.models.Whisper(str(directory), device="cpu", compute_type="float32", intra_threads=1)
    ours = load_model(str(directory))
    assert theirs.n_mels == shape.n_mels and theirs.is_multilingual == ours.tokenizer.multilingual
    assert theirs.num_languages == (100 if shape.vocab == "v3" else 99)

    mel = log_mel(speech, shape.n_mels, n_frames=N_FRAMES_30S)[None]
    their_states = np.array(theirs.encode(ctranslate2.StorageView.from_array(mel), to_cpu=True))
    with torch.inference_mode():
        states = ours.encoder(torch.from_numpy(mel))
    assert np.abs(their_states - states.numpy()).max() < 1e-4

    decoder = Decoder(ours, TorchDecoderNet(ours.decoder, states, ours.alignment_heads))
    cross = decoder.prepare(EncoderOutput(features=states, tail_cached=False, backend="cpu"))
    prefix = ours.tokenizer.sot_sequence("en")
    # CTranslate2 lets a random model emit timestamp and task tokens after <|notimestamps|>;
    # we suppress every special token, so it is told to as well (on top of config.json's)
    specials = list(range(ours.tokenizer.eot + 1, ours.dims.n_vocab))
    their_tokens = theirs.generate(ctranslate2.StorageView.from_array(their_states), [prefix], beam_size=1,
                                   max_length=8, suppress_tokens=[-1, *specials])[0].sequences_ids[0]
    assert their_tokens
    our_choice = logits(decoder, cross, prefix + their_tokens, len(prefix)).argmax(-1)
    assert our_choice[:len(their_tokens)].tolist() == their_tokens


def test_mel_front_end_128_bins_matches_faster_whisper(speech):
    """large-v3's 128-bin log-mel: the filterbank is built for any bin count, and it is Whisper's.
    (faster-whisper comes with the bench extra, as here; the test is skipped without it.)"""
    feature_extractor = pytest.importorskip("faster_whisper.feature_extractor")
    FeatureExtractor = feature_extractor.FeatureExtractor

    for n_mels in (80, 128):
        ref = FeatureExtractor(feature_size=n_mels)(speech, padding=N_FRAMES_30S * 160 - len(speech))[:, :N_FRAMES_30S]
        ours = log_mel(speech, n_mels, n_frames=N_FRAMES_30S)
        assert ours.shape == (n_mels, N_FRAMES_30S) and np.abs(ours - ref).max() < 1e-3


def test_multilingual_model_without_lang_ids_keeps_its_languages(tmp_path):
    """Some conversions write no (or an empty) lang_ids: the languages come from the tokenizer."""
    for value in (None, []):
        directory = write_model(tmp_path / f"m{value}", SHAPES["tiny"], config={"lang_ids": value})
        model = load_model(str(directory))
        assert len(model.languages) == 99 and model.tokenizer.multilingual
    v3 = load_model(str(write_model(tmp_path / "v3", SHAPES["distil-large-v3"], config={"lang_ids": None})))
    assert v3.tokenizer.languages["yue"] == 50358 and len(v3.languages) == 100


# ---------------------------------------------------------------- what is not Whisper


def test_tokenizer_of_another_vocabulary_is_refused(tmp_path):
    model_dir = write_model(tmp_path / "multi", SHAPES["tiny"])
    other = write_model(tmp_path / "v3", SHAPES["distil-large-v3"])
    (model_dir / "tokenizer.json").write_bytes((other / "tokenizer.json").read_bytes())
    with pytest.raises(ModelFileError, match="does not match model.bin.*51866.*51865"):
        load_model(str(model_dir))


def test_non_whisper_ct2_model_is_refused(tmp_path):
    directory = write_model(tmp_path / "m", SHAPES["tiny"])
    data = (directory / "model.bin").read_bytes()
    # the same variables under a translation model's spec name
    spec_end = 4 + 2 + len("WhisperSpec") + 1
    (directory / "model.bin").write_bytes(data[:4] + struct.pack("<H", 16) + b"TransformerSpec\0" + data[spec_end:])
    with pytest.raises(ModelFileError, match="not a Whisper model .*TransformerSpec"):
        load_model(str(directory))


def test_whisper_spec_without_layers_or_with_bad_heads_is_refused(tmp_path):
    shape = SHAPES["tiny"]
    base = quantize(random_variables(shape), "float32")
    no_decoder = {k: v for k, v in base.items() if not k.startswith("decoder/layer_")}
    with pytest.raises(ModelFileError, match="0 decoder layers"):
        build_modules(read_model_bin(serialize(no_decoder, {})), "x/model.bin")
    bad_heads = dict(base, **{"encoder/num_heads": np.array(5, np.int16)})
    with pytest.raises(ModelFileError, match="num_heads 5 does not divide the width 24"):
        build_modules(read_model_bin(serialize(bad_heads, {})), "x/model.bin")


@pytest.mark.parametrize("keep", [0.3, 0.9999])
def test_truncated_fake_model_is_a_clear_error(tmp_path, keep):
    directory = write_model(tmp_path / "m", SHAPES["large-v3-turbo"], "int8")
    data = (directory / "model.bin").read_bytes()
    (directory / "model.bin").write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(ModelFileError, match="truncated"):
        load_model(str(directory))


def test_config_of_another_model_is_refused(tmp_path):
    # large-v3's alignment heads on a 2-layer distil decoder
    directory = write_model(tmp_path / "m", SHAPES["distil-large-v3"],
                            config={"alignment_heads": [list(h) for h in SHAPES["large-v3"].alignment_heads]})
    with pytest.raises(ModelFileError, match="alignment_heads .* outside the model's 2 decoder layers"):
        load_model(str(directory))


def test_other_formats_get_a_hint(tmp_path):
    hf = tmp_path / "whisper-small-hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "whisper"}')
    (hf / "model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(ModelNotFoundError, match="no model.bin.*Transformers checkpoint.*ct2-transformers-converter"):
        load_model(str(hf))
    ggml = tmp_path / "cpp"
    ggml.mkdir()
    (ggml / "ggml-base.bin").write_bytes(b"lmgg")
    with pytest.raises(ModelNotFoundError, match="whisper.cpp"):
        load_model(str(ggml))


def test_base_full_shape_is_base():
    """The GPU check's random model has base's real dimensions."""
    assert (BASE_FULL.width, BASE_FULL.heads, BASE_FULL.enc_layers, BASE_FULL.dec_layers, BASE_FULL.n_mels,
            Vocab(BASE_FULL.vocab).n_vocab) == (512, 8, 6, 6, 80, 51865)


def test_helper_writes_every_file_a_conversion_has(tmp_path):
    directory = write_model(tmp_path / "m", SHAPES["large-v3"])
    names = {p.name for p in Path(directory).iterdir()}
    assert names == {"model.bin", "config.json", "tokenizer.json", "vocabulary.json", "preprocessor_config.json"}
    words = json.loads((directory / "vocabulary.json").read_text(encoding="utf-8"))
    assert len(words) == 51866 and words[50358] == "<|yue|>" and words[50365] == "<|0.00|>" and words[-1] == "<|30.00|>"


# ---------------------------------------------------------------- the GPU check, dry


@pytest.mark.parametrize("perturb", [False, True])
def test_device_check_dry_run(tmp_path, perturb):
    """benchmarks/device_check.py on the CPU (no GPU here): the same comparisons and timings; with
    other weights on the "device" side it must fail and say why."""
    cmd = [sys.executable, "benchmarks/device_check.py", "--device", "cpu", "--shape", "distil-small.en",
           "--repeats", "1", "--batch", "2", "--threads", "1", "--workdir", str(tmp_path)]
    run = subprocess.run(cmd + (["--perturb"] if perturb else []), capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])
    out = run.stdout + run.stderr
    if perturb:
        assert run.returncode == 1 and "MISMATCH: encoder" in out, out
    else:
        assert run.returncode == 0 and "device_check: OK" in out, out
        assert "cosine 1.000000 ok" in out and "single stream, 5.0 s utterance: median" in out
        assert "batch of 2: median" in out


def test_device_check_refuses_a_missing_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    run = subprocess.run([sys.executable, "benchmarks/device_check.py", "--device", "cuda"], capture_output=True,
                         text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == 2 and "no CUDA device visible" in run.stderr
