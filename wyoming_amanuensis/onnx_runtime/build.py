"""Building a model's graphs and silence arrays into a folder (``store.py`` decides when).

The only path that reads model.bin and imports ``onnx`` (through ``graphs``): a start that finds
a valid build in the cache never comes here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..mel import N_FRAMES_30S, log_mel
from ..model.ct2 import read_model_bin
from ..model.loader import _alignment_heads, _read_parts, read_config
from ..model.whisper_spec import Dims, check_shapes, dims_from_variables
from .sessions import cpu_session

_LOG = logging.getLogger(__name__)


def read_variables(directory: Path, parts: Sequence[Path]) -> tuple[dict, str]:
    """model.bin's variables (a split model's parts joined in memory) and the name errors use."""
    if len(parts) > 1:
        label = f"{directory}/model.bin.part1+part2"
        return read_model_bin(_read_parts(list(parts)), name=label), label
    return read_model_bin(parts[0], name=str(parts[0])), str(parts[0])


def model_dims(variables: dict, label: str) -> Dims:
    """Whisper's dims, every tensor's shape checked: a file of another architecture fails here
    with a ModelFileError naming the tensor, not inside a graph."""
    dims = dims_from_variables(variables, label)
    check_shapes(variables, dims, label)
    return dims


_BITS: list[int] = []  # activation_bits' answer, once per process


def activation_bits(threads: int = 1) -> int:
    """8 where this CPU's onnxruntime u8 x s8 MatMulInteger is exact on the worst case (every
    product 255 * 127), else 7 (127 steps: 127 * 127 * 2 fits the int16 lanes of x86's
    VPMADDUBSW, which without VNNI saturates at 8 bits and would silently corrupt the int8
    decoder). Asked of the kernel itself, in a session set up as the models' are, rather than
    guessed from the CPU's flags; once per process, at build time only (the answer is kept in
    the folder's manifest, whose key holds the CPU's fingerprint)."""
    if not _BITS:
        from . import graphs  # imports onnx: only at build time

        session = cpu_session(graphs.activation_probe().SerializeToString(), threads)
        exact = True
        for rows in graphs.PROBE_ROWS:
            feed = {f"u{k}": np.full((rows, k), 255, np.uint8) for k in graphs.PROBE_K}
            for k, y in zip(graphs.PROBE_K, session.run([f"y{k}" for k in graphs.PROBE_K], feed)):
                exact &= y.dtype == np.int32 and bool((y == 255 * 127 * k).all())
        _BITS.append(8 if exact else 7)
        if exact:
            _LOG.info("onnx graphs: this CPU's int8 product is exact at 8 bits: 8-bit activations")
        else:
            _LOG.info("onnx graphs: this CPU's int8 product saturates at 8 bits (no VNNI): 7-bit activations")
    return _BITS[0]


def build_folder(folder: Path, directory: Path, parts: Sequence[Path], int8: bool,
                 threads: int = 1) -> tuple[Dims, list[tuple[int, int]], Optional[int]]:
    """Write the graphs (store.GRAPHS) and the silence arrays into ``folder``. Returns the dims,
    the alignment heads and the int8 linears' activation bits (None for float32)."""
    from . import graphs  # imports onnx: only here

    bits = activation_bits(threads) if int8 else None
    variables, label = read_variables(directory, parts)
    dims = model_dims(variables, label)
    heads = _alignment_heads(read_config(directory), dims, directory / "config.json")
    b = bits or 8
    built = {
        "encoder": lambda: graphs.build_encoder(variables, dims),
        "cross": lambda: graphs.build_cross(variables, dims, int8, bits=b),
        "decoder": lambda: graphs.build_decoder(variables, dims, heads, int8, bits=b),
        "decoder_loop": lambda: graphs.build_decoder(variables, dims, heads, int8, loop=True, bits=b),
    }
    for name, make in built.items():
        graphs.save(make(), folder, name)
    # The silence context/tail: the all-silent 30 s window through the recording encoder (each
    # layer's self-attention keys/values) and this variant's cross projection. The recording
    # encoder is written beside the others (a large model's proto would pass protobuf's 2 GB)
    # and removed once used.
    record = graphs.save(graphs.build_encoder(variables, dims, record=True), folder, "_record")
    variables.clear()  # the graphs hold their own copies; model.bin is not needed any more
    mel = log_mel(np.zeros(0, np.float32), dims.n_mels, n_frames=N_FRAMES_30S)[None]
    L = dims.enc_layers
    enc = cpu_session(folder / record[0], threads)
    out = enc.run(None, {"mel": mel, "extra_k": np.zeros((L, 1, dims.enc_heads, 0, dims.width // dims.enc_heads),
                                                         np.float32),
                         "extra_v": np.zeros((L, 1, dims.enc_heads, 0, dims.width // dims.enc_heads), np.float32),
                         "extra_bias": np.zeros(0, np.float32)})
    del enc
    for f in record:
        (folder / f).unlink()
    features, kv = out[0], out[1:]
    tail = cpu_session(folder / "cross.onnx", threads).run(None, {"features": features})
    (folder / "silence").mkdir(exist_ok=True)
    for kind, arrays in (("enc", kv), ("tail", tail)):
        for i in range(len(arrays) // 2):
            for j, name in enumerate("kv"):
                np.save(folder / "silence" / f"{kind}{i}_{name}.npy", np.ascontiguousarray(arrays[2 * i + j], np.float32))
    return dims, heads, bits
