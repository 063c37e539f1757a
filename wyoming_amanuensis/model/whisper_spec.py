"""Whisper's shape as CTranslate2 stores it: the dimensions read from model.bin's variables.

Torch-free: both runtimes (the torch modules of ``ct2_whisper`` and the ONNX graphs of
``onnx_runtime``) read a model's dimensions here, and describe/the server need them before any
network is built.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .ct2 import ModelFileError

N_CTX_AUDIO = 1500  # encoder positions in the 30 s window


@dataclass(frozen=True)
class Dims:
    n_mels: int
    width: int
    enc_layers: int
    dec_layers: int
    enc_heads: int
    dec_heads: int
    n_vocab: int
    n_text_ctx: int


def dims_from_variables(v: dict[str, np.ndarray], path: str = "model.bin") -> Dims:
    try:
        conv1 = v["encoder/conv1/weight"]
        emb = v["decoder/embeddings/weight"]
        dec_pos = v["decoder/position_encodings/encodings"]
    except KeyError as err:
        raise ModelFileError(f"{path}: missing tensor {err.args[0]}; not a complete Whisper model") from None

    def layers(prefix: str) -> int:
        idx = {int(m.group(1)) for k in v for m in [re.match(prefix + r"/layer_(\d+)/", k)] if m}
        return max(idx) + 1 if idx else 0

    def heads(name: str, width: int) -> int:
        h = v.get(name)
        return int(h) if h is not None else max(1, width // 64)

    if conv1.ndim != 3 or emb.ndim != 2 or dec_pos.ndim != 2:
        raise ModelFileError(f"{path}: encoder/conv1/weight {conv1.shape}, decoder/embeddings/weight {emb.shape}: "
                             "not Whisper's tensor layout")
    width = int(conv1.shape[0])
    dims = Dims(
        n_mels=int(conv1.shape[1]),
        width=width,
        enc_layers=layers("encoder"),
        dec_layers=layers("decoder"),
        enc_heads=heads("encoder/num_heads", width),
        dec_heads=heads("decoder/num_heads", width),
        n_vocab=int(emb.shape[0]),
        n_text_ctx=int(dec_pos.shape[0]),
    )
    if dims.enc_layers == 0 or dims.dec_layers == 0:
        raise ModelFileError(f"{path}: {dims.enc_layers} encoder and {dims.dec_layers} decoder layers; "
                             "not a complete Whisper model")
    for side, h in (("encoder", dims.enc_heads), ("decoder", dims.dec_heads)):
        if h < 1 or width % h:
            raise ModelFileError(f"{path}: {side}/num_heads {h} does not divide the width {width}")
    return dims


def expected_shapes(dims: Dims) -> dict[str, tuple[int, ...]]:
    """Every tensor a Whisper model.bin must hold, by CTranslate2 name, with its shape."""
    d = dims.width
    shapes: dict[str, tuple[int, ...]] = {
        "encoder/conv1/weight": (d, dims.n_mels, 3), "encoder/conv1/bias": (d,),
        "encoder/conv2/weight": (d, d, 3), "encoder/conv2/bias": (d,),
        "encoder/position_encodings/encodings": (N_CTX_AUDIO, d),
        "encoder/layer_norm/gamma": (d,), "encoder/layer_norm/beta": (d,),
        "decoder/embeddings/weight": (dims.n_vocab, d),
        "decoder/position_encodings/encodings": (dims.n_text_ctx, d),
        "decoder/layer_norm/gamma": (d,), "decoder/layer_norm/beta": (d,),
    }

    def norm(prefix: str) -> None:
        shapes[prefix + "/gamma"] = shapes[prefix + "/beta"] = (d,)

    def linear(prefix: str, out: int, inp: int) -> None:
        shapes[prefix + "/weight"], shapes[prefix + "/bias"] = (out, inp), (out,)

    for side, n in (("encoder", dims.enc_layers), ("decoder", dims.dec_layers)):
        for i in range(n):
            p = f"{side}/layer_{i}/"
            norm(p + "self_attention/layer_norm")
            linear(p + "self_attention/linear_0", 3 * d, d)
            linear(p + "self_attention/linear_1", d, d)
            if side == "decoder":
                norm(p + "attention/layer_norm")
                linear(p + "attention/linear_0", d, d)
                linear(p + "attention/linear_1", 2 * d, d)
                linear(p + "attention/linear_2", d, d)
            norm(p + "ffn/layer_norm")
            linear(p + "ffn/linear_0", 4 * d, d)
            linear(p + "ffn/linear_1", d, 4 * d)
    return shapes


def check_shapes(v: dict[str, np.ndarray], dims: Dims, path: str = "model.bin") -> None:
    """Raise ModelFileError naming the first tensor that is missing or has another shape than
    Whisper's for these dimensions (a file from another architecture fails here, not later)."""
    for name, shape in expected_shapes(dims).items():
        if name not in v:
            raise ModelFileError(f"{path}: missing tensor {name}")
        if tuple(v[name].shape) != shape:
            raise ModelFileError(f"{path}: tensor {name} has shape {tuple(v[name].shape)}, expected {shape}")
