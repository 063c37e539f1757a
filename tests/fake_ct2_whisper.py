"""Writes small random-weight CTranslate2 Whisper model directories of every real shape.

The real weights of small .. large-v3-turbo cannot be downloaded here, so the
shape tests (and ``benchmarks/device_check.py``) write their own, in the format
CTranslate2's converter writes (``ct2-transformers-converter``, WhisperLoader,
checked against OpenNMT/CTranslate2's python/ctranslate2/specs and
converters/transformers.py):

- ``model.bin``: binary version 6, spec ``WhisperSpec`` revision 3, the
  variables sorted by name, the generic rank-0 scalars the spec carries
  (``*/num_heads`` int16, ``decoder/activation`` int8 3 = GELU, ...), and the
  alias ``decoder/projection/weight -> decoder/embeddings/weight``. Quantised
  like ``--quantization``: float32, float16, bfloat16, int8 and int8_float16;
  int8 applies to what has a ``weight_scale`` in the spec (Linear, Conv1D,
  Embeddings: per output row, ``scale = 127 / amax``, ``q = rint(w * scale)``,
  float32 scales), the rest is converted to the float type.
- ``config.json``: ``alignment_heads``, ``lang_ids``, ``suppress_ids``,
  ``suppress_ids_begin`` (sorted keys, as ``ModelConfig.save_as_json``).
- ``vocabulary.json``: the tokenizer's tokens by id, then ``<|%.2f|>``
  timestamps up to the embedding's row count (``WhisperLoader.get_vocabulary``).
- ``tokenizer.json``: a byte-level BPE (``tokenizers``) with the real special
  tokens at the real ids of the three Whisper vocabularies (English-only
  51864, multilingual 51865, large-v3's 51866 with ``<|yue|>`` and
  ``<|nospeech|>``). Its ordinary tokens are stand-ins: text is not the point.
- ``preprocessor_config.json`` for 128-mel models, as the faster-whisper
  conversions of large-v3 ship it (``feature_size``).

Widths and layer counts are scaled down (head count kept, head width 4) so a
model writes and runs in seconds; mel bins, vocabularies and the decoder
layouts of turbo (4 layers) and distil-whisper (2) are kept. CTranslate2
itself reads these files (tests/test_model_shapes.py compares its encoder
states and greedy tokens with ours).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# openai-whisper's language order; large-v3 appends "yue".
LANGUAGES = (
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no th ur hr bg lt la "
    "mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw gl mr pa si km sn yo so af oc ka be "
    "tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl mg as tt haw ln ha ba jw su"
).split()
N_TIMESTAMPS = 1501  # <|0.00|> .. <|30.00|>


@dataclass(frozen=True)
class Vocab:
    """One of Whisper's three vocabularies: where its special tokens sit."""

    kind: str  # "en", "multi", "v3"

    @property
    def eot(self) -> int:
        return 50256 if self.kind == "en" else 50257

    @property
    def languages(self) -> list[str]:
        return LANGUAGES + ["yue"] if self.kind == "v3" else list(LANGUAGES)

    def specials(self) -> list[str]:
        """Added tokens from end-of-text to no-timestamps, in id order."""
        no_speech = "<|nospeech|>" if self.kind == "v3" else "<|nocaptions|>"
        # the English-only tokenizers still call Hebrew by its old code
        codes = ["iw" if c == "he" and self.kind == "en" else c for c in self.languages]
        return (["<|endoftext|>", "<|startoftranscript|>"] + [f"<|{c}|>" for c in codes]
                + ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", no_speech,
                   "<|notimestamps|>"])

    def ids(self) -> dict[str, int]:
        return {t: self.eot + i for i, t in enumerate(self.specials())}

    @property
    def n_vocab(self) -> int:
        return self.eot + len(self.specials()) + N_TIMESTAMPS

    @property
    def lang_ids(self) -> list[int]:
        if self.kind == "en":  # what the converter wrote for the bundled tiny.en (a quirk it has)
            return list(range(50259, 50357))
        ids = self.ids()
        return [ids[f"<|{c}|>"] for c in self.languages]

    @property
    def suppress_ids(self) -> list[int]:
        """Shaped like the real lists: punctuation-like ids, then the task tokens."""
        ids = self.ids()
        tasks = ["<|startoftranscript|>", "<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>",
                 self.specials()[-2]]
        return [1, 2, 7, 8, 9, 10, 14, 25, 26, 27, 28, 29, 31, 58, 59, 60, 61, 62, 63, 90, 91, 92, 93, 357, 366] + [
            ids[t] for t in tasks]


@dataclass(frozen=True)
class Shape:
    """A real Whisper architecture and the scaled-down one the tests write for it."""

    name: str
    real: str  # the real model's dimensions, for the record
    n_mels: int
    heads: int
    enc_layers: int
    dec_layers: int
    vocab: str
    alignment_heads: tuple = ()
    head_dim: int = 4

    @property
    def width(self) -> int:
        return self.heads * self.head_dim


# Layer counts at most 6 except large-v3's decoder, which keeps its real 32 layers (the
# deepest there is; layer_10 sorts before layer_2 in the file). 20 heads over 1500 positions
# make the large encoders the slowest part, so they get 4-6 layers. Alignment heads as the real
# generation configs list them where they fit the scaled layers.
SHAPES = {s.name: s for s in (
    Shape("tiny.en", "d384 4+4 6h 80 mels 51864", 80, 6, 4, 4, "en", ((1, 0), (2, 0), (2, 5), (3, 0), (3, 1))),
    Shape("tiny", "d384 4+4 6h 80 mels 51865", 80, 6, 4, 4, "multi", ((2, 2), (3, 0), (3, 2), (3, 3), (3, 4), (3, 5))),
    Shape("base", "d512 6+6 8h 80 mels 51865", 80, 8, 6, 6, "multi",
          ((3, 1), (4, 2), (4, 3), (4, 7), (5, 1), (5, 2), (5, 4), (5, 6))),
    Shape("small", "d768 12+12 12h 80 mels 51865", 80, 12, 6, 6, "multi"),
    Shape("medium.en", "d1024 24+24 16h 80 mels 51864", 80, 16, 6, 6, "en"),
    Shape("large-v2", "d1280 32+32 20h 80 mels 51865", 80, 20, 4, 4, "multi"),
    Shape("large-v3", "d1280 32+32 20h 128 mels 51866", 128, 20, 4, 32, "v3",
          ((7, 0), (10, 17), (12, 18), (13, 12), (16, 1), (17, 14), (19, 11), (21, 4), (24, 1), (25, 6))),
    Shape("large-v3-turbo", "d1280 32+4 20h 128 mels 51866", 128, 20, 6, 4, "v3",
          ((2, 4), (2, 11), (3, 3), (3, 6), (3, 11), (3, 14))),
    Shape("distil-large-v3", "d1280 32+2 20h 128 mels 51866", 128, 20, 4, 2, "v3"),
    Shape("distil-small.en", "d768 12+2 12h 80 mels 51864", 80, 12, 6, 2, "en"),
)}
# base's real dimensions, for the GPU check (the real weights do not fit its 60 MB)
BASE_FULL = Shape("base-random", "d512 6+6 8h 80 mels 51865", 80, 8, 6, 6, "multi",
                  ((3, 1), (4, 2), (4, 3), (4, 7), (5, 1), (5, 2), (5, 4), (5, 6)), head_dim=64)

QUANTIZATIONS = ("float32", "float16", "bfloat16", "int8", "int8_float16")


def _sinusoids(length: int, channels: int) -> np.ndarray:
    """Whisper's encoder positions (openai-whisper ``sinusoids``)."""
    increment = np.log(10000) / (channels // 2 - 1)
    inv = np.exp(-increment * np.arange(channels // 2))
    t = np.arange(length)[:, None] * inv[None, :]
    return np.concatenate([np.sin(t), np.cos(t)], axis=1).astype(np.float32)


def random_variables(shape: Shape, seed: int = 0) -> dict[str, np.ndarray]:
    """float32 weights of ``shape`` under their CT2 names (no scalars, no alias)."""
    rng = np.random.default_rng(seed)
    d, v = shape.width, Vocab(shape.vocab).n_vocab
    out: dict[str, np.ndarray] = {}

    def normal(scale: float, *dims: int) -> np.ndarray:
        return (rng.standard_normal(dims) * scale).astype(np.float32)

    def linear(name: str, n_out: int, n_in: int, zero_k: bool = False) -> None:
        out[name + "/weight"] = normal(n_in ** -0.5, n_out, n_in)
        bias = normal(0.02, n_out)
        if zero_k:  # Whisper's key projection has no bias; the converter fills zeros
            k0 = d if n_out == 3 * d else 0
            bias[k0:k0 + d] = 0
        out[name + "/bias"] = bias

    def norm(name: str) -> None:
        out[name + "/gamma"] = (1 + normal(0.05, d)).astype(np.float32)
        out[name + "/beta"] = normal(0.02, d)

    def ffn(prefix: str) -> None:
        norm(prefix + "/ffn/layer_norm")
        linear(prefix + "/ffn/linear_0", 4 * d, d)
        linear(prefix + "/ffn/linear_1", d, 4 * d)

    out["encoder/conv1/weight"] = normal((3 * shape.n_mels) ** -0.5, d, shape.n_mels, 3)
    out["encoder/conv1/bias"] = normal(0.02, d)
    out["encoder/conv2/weight"] = normal((3 * d) ** -0.5, d, d, 3)
    out["encoder/conv2/bias"] = normal(0.02, d)
    out["encoder/position_encodings/encodings"] = _sinusoids(1500, d)
    for i in range(shape.enc_layers):
        p = f"encoder/layer_{i}"
        norm(p + "/self_attention/layer_norm")
        linear(p + "/self_attention/linear_0", 3 * d, d, zero_k=True)
        linear(p + "/self_attention/linear_1", d, d)
        ffn(p)
    norm("encoder/layer_norm")
    out["decoder/embeddings/weight"] = normal(1.0, v, d)
    out["decoder/position_encodings/encodings"] = normal(0.02, 448, d)
    for i in range(shape.dec_layers):
        p = f"decoder/layer_{i}"
        norm(p + "/self_attention/layer_norm")
        linear(p + "/self_attention/linear_0", 3 * d, d, zero_k=True)
        linear(p + "/self_attention/linear_1", d, d)
        norm(p + "/attention/layer_norm")
        linear(p + "/attention/linear_0", d, d)
        linear(p + "/attention/linear_1", 2 * d, d, zero_k=True)
        linear(p + "/attention/linear_2", d, d)
        ffn(p)
    norm("decoder/layer_norm")
    return out


def _scalars(shape: Shape) -> dict[str, np.ndarray]:
    """The generic rank-0 fields WhisperSpec writes (TransformerDecoderSpec defaults)."""
    i8, i16 = np.int8, np.int16
    return {
        "encoder/num_heads": np.array(shape.heads, i16),
        "decoder/num_heads": np.array(shape.heads, i16),
        "decoder/pre_norm": np.array(1, i8),
        "decoder/activation": np.array(3, i8),  # common_spec.Activation.GELU
        "decoder/alignment_layer": np.array(-1, i16),
        "decoder/alignment_heads": np.array(1, i16),
        "decoder/scale_embeddings": np.array(0, i8),
        "decoder/alibi": np.array(0, i8),
        "decoder/alibi_use_positive_positions": np.array(0, i8),
        "decoder/scale_alibi": np.array(0, i8),
        "decoder/start_from_zero_embedding": np.array(0, i8),
    }


def _is_quantizable(name: str) -> bool:
    """Names whose spec has a ``weight_scale`` (LinearSpec, Conv1DSpec, EmbeddingsSpec)."""
    return name.endswith("/weight")


def quantize(variables: dict[str, np.ndarray], quantization: str) -> dict[str, np.ndarray]:
    """As ``ModelSpec._quantize``: int8 rows with float32 scales, floats converted.
    bfloat16 is returned as its raw uint16 bits (numpy has no bfloat16)."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantization!r}")
    out: dict[str, np.ndarray] = {}
    float_type = {"float16": "float16", "int8_float16": "float16", "bfloat16": "bfloat16"}.get(quantization)
    for name, value in variables.items():
        if quantization.startswith("int8") and _is_quantizable(name):
            flat = value.reshape(value.shape[0], -1)
            amax = np.abs(flat).max(axis=1)
            amax[amax == 0] = 127.0
            scale = (127.0 / amax).astype(np.float32)
            out[name] = np.rint(flat * scale[:, None]).astype(np.int8).reshape(value.shape)
            out[name + "_scale"] = scale
        elif float_type == "float16":
            out[name] = value.astype(np.float16)
        elif float_type == "bfloat16":
            bits = value.astype(np.float32).view(np.uint32)
            out[name] = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even
        else:
            out[name] = value
    return out


_DTYPE_CODES = {np.dtype("float32"): 0, np.dtype("int8"): 1, np.dtype("int16"): 2, np.dtype("int32"): 3,
                np.dtype("float16"): 4, np.dtype("uint16"): 5}  # uint16 here carries bfloat16 bits


def _string(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack("<H", len(raw) + 1) + raw + b"\0"


def serialize(variables: dict[str, np.ndarray], aliases: dict[str, str], spec: str = "WhisperSpec",
              revision: int = 3) -> bytes:
    """``ModelSpec._serialize``: version 6, spec name, revision, sorted variables, aliases."""
    parts = [struct.pack("<I", 6), _string(spec), struct.pack("<I", revision), struct.pack("<I", len(variables))]
    for name in sorted(variables):
        a = np.asarray(variables[name])  # not ascontiguousarray: it makes scalars rank 1
        a = a if a.flags.c_contiguous else a.copy()
        parts += [_string(name), struct.pack("<B", a.ndim), *(struct.pack("<I", n) for n in a.shape),
                  struct.pack("<B", _DTYPE_CODES[a.dtype]), struct.pack("<I", a.nbytes), a.tobytes()]
    parts.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        parts += [_string(alias), _string(target)]
    return b"".join(parts)


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> printable character table (byte-level BPE's alphabet)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def tokenizer_json(vocab: Vocab, timestamps_as_added: bool = False) -> dict:
    """A byte-level BPE tokenizer with Whisper's special tokens at their real ids."""
    alphabet = _bytes_to_unicode()
    tokens = list(alphabet)
    letters = "abcdefghijklmnopqrstuvwxyz"
    i = 0
    while len(tokens) < vocab.eot:  # stand-ins for the merged tokens: "Ġ" + a unique letter string
        word, k = "", i
        while True:
            word = letters[k % 26] + word
            k = k // 26 - 1
            if k < 0:
                break
        tokens.append("Ġ" + word)
        i += 1
    if vocab.kind != "en":
        # the multilingual BPE vocabulary ends in an empty token, by which CTranslate2 tells it apart
        tokens[-1] = ""
    specials = vocab.specials()
    added = specials + ([f"<|{t * 0.02:.2f}|>" for t in range(N_TIMESTAMPS)] if timestamps_as_added else [])
    model_vocab = {t: i for i, t in enumerate(tokens)}
    model_vocab["<|endoftext|>"] = vocab.eot
    ids = vocab.ids()

    def special(t: str) -> dict:
        return {"id": t, "ids": [ids[t]], "tokens": [t]}

    sot, nts, eot = "<|startoftranscript|>", "<|notimestamps|>", "<|endoftext|>"
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": vocab.eot + k, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for k, t in enumerate(added)],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": sot, "type_id": 0}}, {"SpecialToken": {"id": nts, "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": eot, "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": sot, "type_id": 0}}, {"SpecialToken": {"id": nts, "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": eot, "type_id": 1}}],
            "special_tokens": {t: special(t) for t in (eot, nts, sot)},
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "vocab": model_vocab, "merges": []},
    }


def write_model(directory: Path, shape: Shape, quantization: str = "float16", seed: int = 0,
                config: dict | None = None) -> Path:
    """A complete CTranslate2 Whisper directory of ``shape`` with random weights.
    ``config``: replaces config.json's fields (None values drop the field)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = Vocab(shape.vocab)
    variables = quantize(random_variables(shape, seed), quantization)
    variables.update(_scalars(shape))
    (directory / "model.bin").write_bytes(
        serialize(variables, {"decoder/projection/weight": "decoder/embeddings/weight"}))
    heads = [list(h) for h in shape.alignment_heads] or [
        [layer, h] for layer in range(shape.dec_layers // 2, shape.dec_layers) for h in range(shape.heads)]
    cfg = {"alignment_heads": heads, "lang_ids": vocab.lang_ids, "suppress_ids": vocab.suppress_ids,
           "suppress_ids_begin": [220, vocab.eot]}
    for key, value in (config or {}).items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    (directory / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tok = tokenizer_json(vocab, timestamps_as_added=shape.vocab == "v3")
    (directory / "tokenizer.json").write_text(json.dumps(tok), encoding="utf-8")
    ordered = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    words = [t for t, _ in ordered] + vocab.specials()[1:]
    words += [f"<|{t * 0.02:.2f}|>" for t in range(vocab.n_vocab - len(words))]
    (directory / "vocabulary.json").write_text(json.dumps(words, indent=2), encoding="utf-8")
    if shape.n_mels != 80:
        (directory / "preprocessor_config.json").write_text(json.dumps(
            {"chunk_length": 30, "feature_extractor_type": "WhisperFeatureExtractor", "feature_size": shape.n_mels,
             "hop_length": 160, "n_fft": 400, "n_samples": 480000, "nb_max_frames": 3000, "padding_side": "right",
             "padding_value": 0.0, "processor_class": "WhisperProcessor", "return_attention_mask": False,
             "sampling_rate": 16000}, indent=2), encoding="utf-8")
    return directory
