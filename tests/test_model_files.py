"""Reading model files: the bundled packages, a user's directory, and broken files."""

from __future__ import annotations

import shutil
import struct

import numpy as np
import pytest

from benchmarks.bench_engine import materialise_model
from wyoming_amanuensis.model.ct2 import ModelFileError, read_model_bin
from wyoming_amanuensis.model.loader import ModelNotFoundError, load_model, resolve


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return materialise_model("tiny.en", tmp_path_factory.mktemp("models") / "my-tiny")


def test_bundled_models_resolve():
    name, directory, blob = resolve("base")
    assert name == "base" and (directory / "tokenizer.json").is_file()
    assert blob is not None and len(blob) > 100_000_000  # both parts joined
    name, directory, blob = resolve("tiny.en")
    assert name == "tiny.en" and blob is None and (directory / "model.bin").is_file()


def test_tensor_layout_follows_the_spec(tiny_dir):
    v = read_model_bin(tiny_dir / "model.bin")
    assert v["encoder/conv1/weight"].shape == (384, 80, 3)
    assert v["encoder/layer_3/self_attention/linear_0/weight"].shape == (3 * 384, 384)
    assert v["decoder/layer_0/attention/linear_1/weight"].shape == (2 * 384, 384)
    assert v["decoder/embeddings/weight"].shape == (51864, 384)
    assert v["encoder/position_encodings/encodings"].shape == (1500, 384)
    assert int(v["decoder/num_heads"]) == 6
    # Whisper's key projection has no bias: the K third of the fused bias is zero
    bias = v["encoder/layer_0/self_attention/linear_0/bias"]
    assert np.all(bias[384:768] == 0) and np.any(bias[:384] != 0)


def test_user_model_directory_loads_and_transcribes(tiny_dir, tmp_path):
    from wyoming_amanuensis.config import settings_from
    from wyoming_amanuensis.pipeline import Engine
    from benchmarks.corpus import clips, normalize

    m = load_model(str(tiny_dir))
    assert m.name == "my-tiny" and m.dims.width == 384 and m.languages == ["en"]
    assert m.alignment_heads[0] == (1, 0)
    engine = Engine.load(settings_from(model=str(tiny_dir), encoder_backend="cpu", cache_dir=str(tmp_path / "cache")))
    clip = next(c for c in clips() if c.name == "s2p_gen_turn_on_the_lights")
    assert normalize(engine.transcribe(*clip.read()).text) == "turn on the lights"


@pytest.mark.parametrize("keep", [0.0, 0.001, 0.5, 0.999])
def test_truncated_model_bin_is_a_clear_error(tiny_dir, tmp_path, keep):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    data = (tiny_dir / "model.bin").read_bytes()
    (broken / "model.bin").write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ModelFileError) as err:
        load_model(str(broken))
    assert str(broken / "model.bin") in str(err.value)
    assert "truncated" in str(err.value) or "corrupt" in str(err.value)


def test_corrupt_header_and_trailing_bytes(tiny_dir, tmp_path):
    data = (tiny_dir / "model.bin").read_bytes()
    with pytest.raises(ModelFileError, match="binary version 7"):
        read_model_bin(struct.pack("<I", 7) + data[4:])
    with pytest.raises(ModelFileError, match="unexpected bytes"):
        read_model_bin(data + b"\0\0\0")
    with pytest.raises(ModelFileError, match="not a Whisper model"):
        read_model_bin(data[:4] + struct.pack("<H", 9) + b"BertSpec\0" + data[4 + 2 + 12:])


def test_shape_mismatch_names_the_tensor(tiny_dir, tmp_path):
    from wyoming_amanuensis.model.ct2_whisper import build_modules

    v = read_model_bin(tiny_dir / "model.bin")
    v["decoder/layer_1/ffn/linear_0/weight"] = v["decoder/layer_1/ffn/linear_0/weight"][:10]
    with pytest.raises(ModelFileError, match="decoder/layer_1/ffn/linear_0/weight"):
        build_modules(v, "x/model.bin")


def test_missing_pieces(tiny_dir, tmp_path):
    with pytest.raises(ModelNotFoundError, match="not found"):
        resolve("no-such-model")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelNotFoundError, match="no model.bin"):
        resolve(str(empty))
    partial = tmp_path / "partial"
    shutil.copytree(tiny_dir, partial)
    (partial / "tokenizer.json").unlink()
    with pytest.raises(ModelNotFoundError, match="tokenizer.json"):
        load_model(str(partial))
