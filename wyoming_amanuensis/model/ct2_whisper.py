"""CTranslate2's WhisperSpec names -> the torch modules' parameters.

``ct2.py`` reads the file format; this module knows what the variables mean:
which ``encoder/layer_N/self_attention/linear_0`` goes into which Linear,
and what the model's dimensions are (WHISPER_NOTES.md, "Tensor mapping").
Every tensor's shape is checked on the way in, so a file from another
architecture fails naming the tensor instead of loading garbage.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .ct2 import ModelFileError, dequantize
from .modules import AudioEncoder, TextDecoder
from .quantize import row_int8_linears
from .whisper_spec import N_CTX_AUDIO, Dims, dims_from_variables


class _Weights:
    """Copies CT2 tensors into torch parameters, checking every shape."""

    def __init__(self, variables: dict[str, np.ndarray], path: str):
        self.v = variables
        self.path = path

    def get(self, name: str, shape: tuple) -> torch.Tensor:
        if name not in self.v:
            raise ModelFileError(f"{self.path}: missing tensor {name}")
        arr = dequantize(self.v, name)
        if tuple(arr.shape) != tuple(shape):
            raise ModelFileError(f"{self.path}: tensor {name} has shape {tuple(arr.shape)}, expected {tuple(shape)}")
        return torch.from_numpy(np.ascontiguousarray(arr))

    def linear(self, lin: nn.Linear, prefix: str) -> None:
        lin.weight.data.copy_(self.get(prefix + "/weight", lin.weight.shape))
        if lin.bias is not None:
            lin.bias.data.copy_(self.get(prefix + "/bias", lin.bias.shape))

    def norm(self, ln: nn.LayerNorm, prefix: str) -> None:
        ln.weight.data.copy_(self.get(prefix + "/gamma", ln.weight.shape))
        ln.bias.data.copy_(self.get(prefix + "/beta", ln.bias.shape))


# Per layer: module path in the block -> CT2 name under ``<encoder|decoder>/layer_<i>/``.
ENCODER_LAYER = (
    ("attn_ln", "self_attention/layer_norm"),
    ("qkv", "self_attention/linear_0"),  # fused Q, K, V
    ("out", "self_attention/linear_1"),
    ("mlp.ln", "ffn/layer_norm"),
    ("mlp.fc1", "ffn/linear_0"),
    ("mlp.fc2", "ffn/linear_1"),
)
DECODER_LAYER = (
    ("self_ln", "self_attention/layer_norm"),
    ("self_qkv", "self_attention/linear_0"),  # fused Q, K, V
    ("self_out", "self_attention/linear_1"),
    ("cross_ln", "attention/layer_norm"),
    ("cross_q", "attention/linear_0"),
    ("cross_kv", "attention/linear_1"),  # K, V stacked
    ("cross_out", "attention/linear_2"),
    ("mlp.ln", "ffn/layer_norm"),
    ("mlp.fc1", "ffn/linear_0"),
    ("mlp.fc2", "ffn/linear_1"),
)


def _load_layers(blocks: nn.ModuleList, prefix: str, table: tuple, w: _Weights, first: int = 0) -> None:
    for i, block in enumerate(blocks, start=first):
        for path, name in table:
            module = block.get_submodule(path)
            load = w.norm if isinstance(module, nn.LayerNorm) else w.linear
            load(module, f"{prefix}/layer_{i}/{name}")


def _load_encoder(enc: AudioEncoder, w: _Weights) -> None:
    d, m = enc.dims.width, enc.dims.n_mels
    enc.conv1.weight.data.copy_(w.get("encoder/conv1/weight", (d, m, 3)))
    enc.conv1.bias.data.copy_(w.get("encoder/conv1/bias", (d,)))
    enc.conv2.weight.data.copy_(w.get("encoder/conv2/weight", (d, d, 3)))
    enc.conv2.bias.data.copy_(w.get("encoder/conv2/bias", (d,)))
    enc.positions.copy_(w.get("encoder/position_encodings/encodings", (N_CTX_AUDIO, d)))
    _load_layers(enc.blocks, "encoder", ENCODER_LAYER, w)
    w.norm(enc.ln_post, "encoder/layer_norm")


def _load_decoder(dec: TextDecoder, w: _Weights, int8_bits: int) -> None:
    dims = dec.dims
    d = dims.width
    dec.positions.copy_(w.get("decoder/position_encodings/encodings", (dims.n_text_ctx, d)))
    w.norm(dec.ln, "decoder/layer_norm")
    for i, block in enumerate(dec.blocks):
        _load_layers(nn.ModuleList([block]), "decoder", DECODER_LAYER, w, first=i)
        if int8_bits:  # layer by layer: the float decoder never exists whole (peak memory of the load)
            row_int8_linears(block, bits=int8_bits)  # per-row scales: batched and solo decoding agree (quantize.py)
    # the fresh float32 array itself, not a copy of it: this matrix alone is 106 MB for base
    dec.token_embedding.weight.data = w.get("decoder/embeddings/weight", (dims.n_vocab, d))
    dec.proj.weight = dec.token_embedding.weight  # tied, as in Whisper: one copy in memory
    if int8_bits:
        row_int8_linears(dec, bits=int8_bits)  # only the projection is left as a float Linear
        # The projection has its own int8 weights now; the embedding is only looked up, a row
        # per token, and float16 holds it closely enough: the same WER on corpus and corpus_ml
        # to the word (benchmarks/RESULTS.md), and half its memory (53 MB for base).
        dec.token_embedding.weight.data = dec.token_embedding.weight.data.half()


def _materialise(net: nn.Module) -> nn.Module:
    """``net.to_empty(device="cpu")`` without its detour: for meta tensors that goes through
    torch._refs.empty_like, which imports sympy (~0.5 s of a start)."""
    for module in net.modules():
        for slot in (module._parameters, module._buffers):
            for name, t in slot.items():
                if t is not None and t.is_meta:
                    fresh = torch.empty(t.shape, dtype=t.dtype)
                    slot[name] = nn.Parameter(fresh, requires_grad=t.requires_grad) if slot is module._parameters \
                        else fresh
    return net


def build_modules(variables: dict[str, np.ndarray], path: str = "model.bin",
                  int8_bits: int = 0) -> tuple[Dims, AudioEncoder, TextDecoder]:
    """The model's dimensions and its two networks, weights loaded, in eval mode without gradients.
    ``int8_bits``: the decoder's Linear layers quantised as they are loaded, with activations of
    this many bits (``quantize.row_int8_linears``); 0: a float decoder."""
    dims = dims_from_variables(variables, path)
    w = _Weights(variables, path)
    with torch.no_grad():
        # Built on the meta device and given uninitialised storage: every tensor is then
        # overwritten from the file, and the random init it skips was ~0.8 s of base's load.
        with torch.device("meta"):
            enc, dec = AudioEncoder(dims), TextDecoder(dims)
        enc, dec = _materialise(enc), _materialise(dec)
        _load_encoder(enc, w)
        _load_decoder(dec, w, int8_bits)
    return dims, enc.eval().requires_grad_(False), dec.eval().requires_grad_(False)
