"""Loading a model on the ONNX runtime: graphs from the cache (built when needed), sessions,
silence arrays pooled with the settings' chunk sizes, and the tokenizer; never torch, and
neither model.bin nor onnx when the cache holds a valid build."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..model.loader import WhisperModel, locate, model_without_networks
from . import store
from .encoder import OnnxEncoderBackend
from .network import OnnxDecoderNet
from .sessions import cpu_session
from .silence import NpyRows, PooledTail, SilenceContext, SilenceTail

_LOG = logging.getLogger(__name__)


@dataclass
class OnnxLoaded:
    model: WhisperModel  # encoder and decoder None: the networks are the sessions below
    backend: OnnxEncoderBackend
    net: OnnxDecoderNet
    context: Optional[SilenceContext]  # the encoder's silence context; None when silence_chunk == 0


def _tails(built: store.Built, kind: str, layers: int, chunk: int) -> list[PooledTail]:
    return [PooledTail(NpyRows(built.silence(kind, i, "k")), NpyRows(built.silence(kind, i, "v")), chunk)
            for i in range(layers)]


def load_onnx(name_or_path: str, *, cache_dir: Optional[Path], threads: int, int8_decoder: bool,
              silence_chunk: int, tail_chunk: int) -> OnnxLoaded:
    """``int8_decoder``: the cross projection and decoder step as RowInt8Linear (8-bit
    activations, or 7 where this CPU's int8 kernel saturates: probed when building), else
    float32 (``--no-int8-decoder``). ``silence_chunk``: the encoder's silence context pooled in
    chunks of this many positions (0: none); ``tail_chunk``: the decoder's silence tail's."""
    t0 = time.perf_counter()
    name, directory, parts = locate(name_or_path)
    files = list(parts) + ([directory / "config.json"] if (directory / "config.json").is_file() else [])

    def build(folder: Path):
        from .build import build_folder  # model.bin and onnx: only when building
        return build_folder(folder, directory, parts, int8_decoder, threads)

    built = store.load_or_build(cache_dir, name, files, int8_decoder, build)
    t_graphs = time.perf_counter()
    dims = built.dims
    # The tokenizer (~0.2 s, mostly holding the GIL) beside the sessions (whose loading and
    # weight prepacking mostly release it).
    result: list = []

    def read_model() -> None:
        try:
            result.append(model_without_networks(name, directory, parts, dims))
        except BaseException as err:  # noqa: BLE001 - raised again on the loading thread
            result.append(err)
    tok_thread = threading.Thread(target=read_model, name="amanuensis-tokenizer", daemon=True)
    tok_thread.start()
    try:
        def session(path: Path):
            return cpu_session(path, threads)
        backend = OnnxEncoderBackend(session(built.graph("encoder")), dims)
        tail = SilenceTail(_tails(built, "tail", dims.dec_layers, tail_chunk))
        net = OnnxDecoderNet.from_folder(built.folder, dims, built.alignment_heads, session, tail)
        context = SilenceContext(_tails(built, "enc", dims.enc_layers, silence_chunk)) if silence_chunk else None
    finally:
        tok_thread.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    model = result[0]
    if [tuple(h) for h in model.alignment_heads] != [tuple(h) for h in built.alignment_heads]:
        _LOG.warning("onnx graphs: %s's alignment heads differ from the built graphs'; the graphs' are used",
                     model.name)
        model.alignment_heads = list(built.alignment_heads)
    _LOG.info("loaded model %s on onnxruntime in %.0f ms (graphs %.0f ms, %s decoder; width %d, %d+%d layers, "
              "%d mel bins, vocab %d)", name, (time.perf_counter() - t0) * 1000, (t_graphs - t0) * 1000,
              "int8" if int8_decoder else "float32", dims.width, dims.enc_layers, dims.dec_layers, dims.n_mels,
              dims.n_vocab)
    return OnnxLoaded(model=model, backend=backend, net=net, context=context)
