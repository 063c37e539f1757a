"""Whisper as ONNX graphs, written with onnx.helper from the model.bin variables.

No exporter and no torch: every node is written here, so the graphs compute what the torch
modules (``model/modules.py``) compute, with the int8 linears of ``quantize.RowInt8Linear`` where
asked (8-bit activations, or 7 where this CPU's u8 x s8 kernel is not exact: ``activation_probe``).
This is the only module of the runtime that imports ``onnx``; it runs when a model's graphs are
built (``store.py``), never when they are loaded.

Graphs (dims from ``whisper_spec``; H heads of width hd, L layers):

  encoder         mel [1, n_mels, T] + silence context extra_k/v [L, 1, H, E, hd], extra_bias [E]
                  -> features [1, T/2, d]. ``com.microsoft.MultiHeadAttention`` with the context's
                  bias folded into the keys, so that ORT's CPU flash attention runs (the request
                  encoder). ``record=True``: plain attention that also outputs every layer's keys
                  and values (k{i}, v{i}): used at build time for the silence context only.
  cross           features [1, P, d] -> cross_k{i}, cross_v{i} [1, H, P, hd]
  decoder         one step (see build_decoder): the "plain" graph (one audio for the batch, with
                  the alignment heads' weights) and the "loop" graph (several requests' audio,
                  each row attending over its own)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..model.ct2 import dequantize
from ..model.whisper_spec import Dims

OPSET = 17  # ReduceMin/Max still take axes as an attribute; every node here exists at 17
F = TensorProto.FLOAT
I64 = TensorProto.INT64
INT64_MAX = np.iinfo(np.int64).max


def quantize_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RowInt8Linear's 8-bit weights: int8 on max|w|/127 per output row, rounded as
    torch.quantize_per_channel rounds (half to even of w * (1/scale) in float32); the scales;
    and each row's sum of the dequantised weights (W 1, which adds the row minimum back)."""
    w = w.astype(np.float32)
    scale = np.maximum(np.abs(w).max(axis=1) / np.float32(127), np.float32(1e-30)).astype(np.float32)
    inv = (np.float32(1.0) / scale).astype(np.float32)
    q = np.clip(np.rint(w * inv[:, None]), -128, 127).astype(np.int8)
    row_sums = (q.astype(np.float32) * scale[:, None]).sum(axis=1, dtype=np.float32)
    return q, scale, row_sums


ACTIVATION_BITS = (7, 8)


class _Graph:
    """Nodes, initializers and fresh names for one graph. ``int8``: ``linear_q`` is
    RowInt8Linear with ``bits``-bit activations (7 or 8), else float32."""

    def __init__(self, variables: dict, int8: bool = False, bits: int = 8):
        if bits not in ACTIVATION_BITS:
            raise ValueError(f"activation bits must be 7 or 8, got {bits}")
        self.v, self.nodes, self.inits, self.n, self.int8, self.bits = variables, [], [], 0, int8, bits

    def w(self, name: str) -> np.ndarray:
        return dequantize(self.v, name)  # float32: CTranslate2's int8 undone

    def name(self, hint: str = "t") -> str:
        self.n += 1
        return f"{hint}_{self.n}"

    def init(self, arr: np.ndarray, hint: str = "w") -> str:
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def i64(self, vals, hint: str = "c") -> str:
        return self.init(np.array(vals, dtype=np.int64), hint)

    def scalar(self, x: float) -> str:
        return self.init(np.array(x, np.float32), "s")

    def op(self, op_type: str, inputs, hint: Optional[str] = None, n_out: int = 1, domain=None, **attrs):
        outs = [self.name(hint or op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, domain=domain, **attrs))
        return outs[0] if n_out == 1 else outs

    def output(self, src: str, name: str) -> None:
        self.nodes.append(helper.make_node("Identity", [src], [name]))

    def filled(self, shape: str, value: float) -> str:
        return self.op("ConstantOfShape", [shape], value=helper.make_tensor("v", F, [1], [value]))

    def layer_norm(self, x: str, prefix: str) -> str:
        return self.op("LayerNormalization", [x, self.init(self.w(prefix + "gamma")), self.init(self.w(prefix + "beta"))],
                       axis=-1, epsilon=1e-5)

    def gelu(self, x: str) -> str:
        """Exact (erf) GELU as torch's F.gelu; ORT fuses the pattern."""
        y = self.op("Add", [self.op("Erf", [self.op("Div", [x, self.scalar(math.sqrt(2.0))])]), self.scalar(1.0)])
        return self.op("Mul", [self.op("Mul", [x, y]), self.scalar(0.5)])

    def linear_f32(self, x: str, prefix: str) -> str:
        y = self.op("MatMul", [x, self.init(self.w(prefix + "weight").T, "W")])
        return self.op("Add", [y, self.init(self.w(prefix + "bias"), "b")])

    def linear_int8(self, x: str, w: np.ndarray, b: Optional[np.ndarray]) -> str:
        """RowInt8Linear: each activation row mapped onto [0, 1] by its own minimum and range and
        quantised in ``steps`` = 2**bits - 1 steps (255, or 127 at 7 bits) (so a row's result
        never depends on the other rows of the batch), an exact u8 x s8 integer product, then
        y = span/steps * w_scale * (q_x . q_w) + low * row_sums + bias.

        At 7 bits only the activations narrow: the weights stay on CTranslate2's 8-bit grid
        (max|w|/127). torch's 7-bit recipe (RowInt8Linear(bits=7)) also moves the weights (its
        observer's max|w|/127.5 over [-128, 127]); 127 * 127 * 2 fits the int16 lanes all the
        same, so the ONNX variant keeps the finer weights."""
        steps = float(2 ** self.bits - 1)
        qw, scale, row_sums = quantize_rows(w)
        low = self.op("ReduceMin", [x], axes=[-1], keepdims=1)
        high = self.op("ReduceMax", [x], axes=[-1], keepdims=1)
        span = self.op("Max", [self.op("Sub", [high, low]), self.scalar(1e-30)])
        unit = self.op("Div", [self.op("Sub", [x, low]), span])
        q = self.op("Cast", [self.op("Round", [self.op("Mul", [unit, self.scalar(steps)])])], to=TensorProto.UINT8)
        y = self.op("Cast", [self.op("MatMulInteger", [q, self.init(qw.T.copy(), "Wq")])], to=F)  # int32: exact
        y = self.op("Mul", [self.op("Mul", [y, self.init(scale / np.float32(steps), "ws")]), span])
        y = self.op("Add", [y, self.op("Mul", [low, self.init(row_sums, "rs")])])
        return self.op("Add", [y, self.init(b, "b")]) if b is not None else y

    def linear_q(self, x: str, prefix: str) -> str:
        if not self.int8:
            return self.linear_f32(x, prefix)
        return self.linear_int8(x, self.w(prefix + "weight"), self.w(prefix + "bias"))

    def split_heads(self, x: str, h: int, hd: int) -> str:  # [B, T, d] -> [B, H, T, hd]
        return self.op("Transpose", [self.op("Reshape", [x, self.i64([0, 0, h, hd])])], perm=[0, 2, 1, 3])

    def merge_heads(self, x: str, d: int) -> str:  # [B, H, T, hd] -> [B, T, d]
        return self.op("Reshape", [self.op("Transpose", [x], perm=[0, 2, 1, 3]), self.i64([0, 0, d])])

    def softmax_scores(self, q: str, k: str, hd: int, mask: Optional[str] = None) -> str:
        """softmax(q k^T / sqrt(hd) + mask); q [B, H, n, hd], k [B', H, S, hd] (B' broadcasts)."""
        s = self.op("MatMul", [q, self.op("Transpose", [k], perm=[0, 1, 3, 2])])
        s = self.op("Mul", [s, self.scalar(1.0 / math.sqrt(hd))])
        if mask is not None:
            s = self.op("Add", [s, mask])
        return self.op("Softmax", [s], axis=-1)

    def shape_with(self, x: str, last: int) -> str:  # Shape(x)[:3] + [last]
        return self.op("Concat", [self.op("Slice", [self.op("Shape", [x]), self.i64([0]), self.i64([3])]),
                                  self.i64([last])], axis=0)

    def model(self, name: str, inputs, outputs, ms: bool = False) -> onnx.ModelProto:
        opsets = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid("com.microsoft", 1)] if ms else [])
        return helper.make_model(helper.make_graph(self.nodes, name, inputs, outputs, self.inits), opset_imports=opsets)


def _io(name: str, elem: int, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def build_encoder(v: dict, dims: Dims, record: bool = False) -> onnx.ModelProto:
    """The request encoder (flash attention), or with ``record`` the plain-attention encoder that
    also outputs each layer's self-attention keys/values (the silence context's source)."""
    d, H, L = dims.width, dims.enc_heads, dims.enc_layers
    hd = d // H
    flash = not record
    g = _Graph(v)
    inputs = [_io("mel", F, [1, dims.n_mels, "T"]),
              # SilenceContext.for_layer of every layer, stacked; E = 0 without a context
              _io("extra_k", F, [L, 1, H, "E", hd]), _io("extra_v", F, [L, 1, H, "E", hd]), _io("extra_bias", F, ["E"])]
    x = g.op("Conv", ["mel", g.init(g.w("encoder/conv1/weight")), g.init(g.w("encoder/conv1/bias"))],
             kernel_shape=[3], pads=[1, 1], strides=[1])
    x = g.op("Conv", [g.gelu(x), g.init(g.w("encoder/conv2/weight")), g.init(g.w("encoder/conv2/bias"))],
             kernel_shape=[3], pads=[1, 1], strides=[2])
    x = g.op("Transpose", [g.gelu(x)], perm=[0, 2, 1])  # [1, P, d]
    P = g.op("Gather", [g.op("Shape", [x]), g.i64([1])], axis=0)  # [1]
    x = g.op("Add", [x, g.op("Slice", [g.init(g.w("encoder/position_encodings/encodings")), g.i64([0]), P,
                                       g.i64([0])])])
    if not flash:  # mask [P + E]: zeros over the window's own keys, the pooled tail's log(count) after
        mask = g.op("Concat", [g.filled(P, 0.0), "extra_bias"], axis=0)
    outputs = [_io("features", F, [1, "P", d])]
    for i in range(L):
        p = f"encoder/layer_{i}/"
        h = g.layer_norm(x, p + "self_attention/layer_norm/")
        qkv = g.linear_f32(h, p + "self_attention/linear_0/")
        q, k, vv = (g.split_heads(t, H, hd) for t in g.op("Split", [qkv, g.i64([d, d, d])], axis=-1, n_out=3))
        if record:
            for kind, t in (("k", k), ("v", vv)):
                g.output(t, f"{kind}{i}")
                outputs.append(_io(f"{kind}{i}", F, [1, H, "P", hd]))
        li = g.i64([i])
        ek = g.op("Squeeze", [g.op("Gather", ["extra_k", li], axis=0), g.i64([0])])
        ev = g.op("Squeeze", [g.op("Gather", ["extra_v", li], axis=0), g.i64([0])])
        vals = g.op("Concat", [vv, ev], axis=2)
        if flash:
            # ORT's CPU flash attention (which never holds the P x (P+E) scores) runs only without an
            # attention bias, so the context's log(count) goes into the keys: q gets an extra
            # component 1, the window's keys 0, the context's keys bias * sqrt(hd); with the scale
            # 1/sqrt(hd) that is q.k/sqrt(hd) + bias as before. Values get a 0 column, dropped after.
            eb = g.op("Reshape", [g.op("Mul", ["extra_bias", g.scalar(math.sqrt(hd))]), g.i64([1, 1, -1, 1])])
            eb = g.op("Expand", [eb, g.op("Concat", [g.i64([1, H]), g.op("Shape", ["extra_bias"]), g.i64([1])], axis=0)])
            qa = g.op("Concat", [q, g.filled(g.shape_with(q, 1), 1.0)], axis=3)  # [1, H, P, hd+1]
            keys = g.op("Concat", [g.op("Concat", [k, g.filled(g.shape_with(k, 1), 0.0)], axis=3),
                                   g.op("Concat", [ek, eb], axis=3)], axis=2)
            vals = g.op("Concat", [vals, g.filled(g.shape_with(vals, 1), 0.0)], axis=3)

            def bsd(t: str) -> str:  # [1, S, H*(hd+1)]: with 4-D (BNSH) inputs ORT never takes its flash path
                return g.op("Reshape", [g.op("Transpose", [t], perm=[0, 2, 1, 3]), g.i64([0, 0, H * (hd + 1)])])
            a = g.op("MultiHeadAttention", [bsd(qa), bsd(keys), bsd(vals)], domain="com.microsoft", num_heads=H,
                     scale=1.0 / math.sqrt(hd))
            a = g.op("Reshape", [a, g.i64([0, 0, H, hd + 1])])
            a = g.op("Slice", [a, g.i64([0]), g.i64([hd]), g.i64([3])])
            a = g.op("Reshape", [a, g.i64([0, 0, d])])
        else:
            keys = g.op("Concat", [k, ek], axis=2)
            a = g.merge_heads(g.op("MatMul", [g.softmax_scores(q, keys, hd, mask), vals]), d)
        x = g.op("Add", [x, g.linear_f32(a, p + "self_attention/linear_1/")])
        h = g.gelu(g.linear_f32(g.layer_norm(x, p + "ffn/layer_norm/"), p + "ffn/linear_0/"))
        x = g.op("Add", [x, g.linear_f32(h, p + "ffn/linear_1/")])
    g.output(g.layer_norm(x, "encoder/layer_norm/"), "features")
    return g.model("whisper_encoder" + ("_record" if record else ""), inputs, outputs, ms=flash)


def build_cross(v: dict, dims: Dims, int8: bool = True, bits: int = 8) -> onnx.ModelProto:
    """The decoder layers' cross-attention keys/values of one request's audio, projected once."""
    d, H = dims.width, dims.dec_heads
    hd = d // H
    g = _Graph(v, int8, bits)
    outputs = []
    for i in range(dims.dec_layers):
        kv = g.linear_q("features", f"decoder/layer_{i}/attention/linear_1/")
        for kind, t in zip("kv", g.op("Split", [kv, g.i64([d, d])], axis=-1, n_out=2)):
            g.output(g.split_heads(t, H, hd), f"cross_{kind}{i}")
            outputs.append(_io(f"cross_{kind}{i}", F, [1, H, "P", hd]))
    return g.model("whisper_cross_kv", [_io("features", F, [1, "P", d])], outputs)


def build_decoder(v: dict, dims: Dims, alignment_heads: Sequence[tuple[int, int]] = (), int8: bool = True,
                  loop: bool = False, bits: int = 8) -> onnx.ModelProto:
    """One decoder step with a Concat self-attention cache (past in, past + new out).

    Inputs: tokens [B, n] int64 fed after ``offset`` [1] cached positions; positions [m] int64,
    which of the n positions to layer-norm and project onto the vocabulary (negative counts
    from the end); past_k{i}/past_v{i} [B, H, past, hd]; the audio:
      plain  cross_k{i}/cross_v{i} [Bc, H, S, hd] (Bc 1 broadcasts to every row, or B), cross_bias [S]
      loop   the rows' audio concatenated, cross_k{i}/cross_v{i} [1, H, sum S_b, hd], cross_bias
             [sum S_b], cross_off [B + 1]: an ONNX Loop attends each row over its own slice, so a
             row's logits are bitwise those it gets alone (padding to a common length is not)
    Outputs: logits [B, m, V], present_k{i}/present_v{i} [B, H, past + n, hd]; the plain graph
    also ``alignment`` [B, A, n, S]: the cross-attention softmax of ``alignment_heads`` (layer,
    head), in that order.
    ``int8``: Linear layers and the tied output projection as RowInt8Linear (``bits``-bit
    activations), the embedding float16; else float32 throughout.
    """
    d, H, L = dims.width, dims.dec_heads, dims.dec_layers
    hd = d // H
    g = _Graph(v, int8, bits)
    inputs = [_io("tokens", I64, ["B", "n"]), _io("offset", I64, [1]), _io("positions", I64, ["m"]),
              _io("cross_bias", F, ["S"])]
    if loop:
        inputs.append(_io("cross_off", I64, ["B1"]))
    inputs += [_io(f"past_{kind}{i}", F, ["B", H, "past", hd]) for i in range(L) for kind in "kv"]
    inputs += [_io(f"cross_{kind}{i}", F, [1 if loop else "Bc", H, "S", hd]) for i in range(L) for kind in "kv"]
    emb = g.w("decoder/embeddings/weight")  # [V, d]; the output projection is tied to it
    if int8:  # float16 rows for the lookup: exact enough for an embedding, half the memory
        x = g.op("Cast", [g.op("Gather", [g.init(emb.astype(np.float16), "emb16"), "tokens"], axis=0)], to=F)
    else:
        emb_name = g.init(emb, "emb")
        x = g.op("Gather", [emb_name, "tokens"], axis=0)
    n = g.op("Gather", [g.op("Shape", ["tokens"]), g.i64([1])], axis=0)  # [1]
    end = g.op("Add", ["offset", n])
    x = g.op("Add", [x, g.op("Slice", [g.init(g.w("decoder/position_encodings/encodings")), "offset", end, g.i64([0])])])
    # causal mask [n, offset + n]: fed position i sees keys j <= offset + i
    zero, one = g.init(np.array(0, np.int64)), g.init(np.array(1, np.int64))
    rows = g.op("Add", [g.op("Unsqueeze", [g.op("Range", [zero, g.op("Squeeze", [n]), one]), g.i64([1])]), "offset"])
    cols = g.op("Unsqueeze", [g.op("Range", [zero, g.op("Squeeze", [end]), one]), g.i64([0])])
    causal = g.op("Where", [g.op("LessOrEqual", [cols, rows]), g.scalar(0.0), g.scalar(-np.inf)])
    outputs = [_io("logits", F, ["B", "m", dims.n_vocab])]
    weights: dict[int, str] = {}
    want = {layer for layer, _ in alignment_heads} if not loop else set()
    for i in range(L):
        p = f"decoder/layer_{i}/"
        qkv = g.linear_q(g.layer_norm(x, p + "self_attention/layer_norm/"), p + "self_attention/linear_0/")
        q, k, vv = (g.split_heads(t, H, hd) for t in g.op("Split", [qkv, g.i64([d, d, d])], axis=-1, n_out=3))
        keys = g.op("Concat", [f"past_k{i}", k], axis=2)
        vals = g.op("Concat", [f"past_v{i}", vv], axis=2)
        for kind, t in (("k", keys), ("v", vals)):
            g.output(t, f"present_{kind}{i}")
            outputs.append(_io(f"present_{kind}{i}", F, ["B", H, "total", hd]))
        a = g.merge_heads(g.op("MatMul", [g.softmax_scores(q, keys, hd, causal), vals]), d)
        x = g.op("Add", [x, g.linear_q(a, p + "self_attention/linear_1/")])
        q = g.split_heads(g.linear_q(g.layer_norm(x, p + "attention/layer_norm/"), p + "attention/linear_0/"), H, hd)
        if loop:
            a = _loop_attend(g, q, f"cross_k{i}", f"cross_v{i}", "cross_bias", "cross_off", hd)
        else:
            w = g.softmax_scores(q, f"cross_k{i}", hd, "cross_bias")  # [B, H, n, S]
            if i in want:
                weights[i] = w
            a = g.op("MatMul", [w, f"cross_v{i}"])
        x = g.op("Add", [x, g.linear_q(g.merge_heads(a, d), p + "attention/linear_2/")])
        h = g.gelu(g.linear_q(g.layer_norm(x, p + "ffn/layer_norm/"), p + "ffn/linear_0/"))
        x = g.op("Add", [x, g.linear_q(h, p + "ffn/linear_1/")])
    # only the asked positions are normed and projected: the vocabulary projection is the costliest part
    x = g.layer_norm(g.op("Gather", [x, "positions"], axis=1), "decoder/layer_norm/")  # [B, m, d]
    if int8:
        g.output(g.linear_int8(x, emb, None), "logits")
    else:
        g.output(g.op("MatMul", [x, g.op("Transpose", [emb_name], perm=[1, 0])]), "logits")
    if not loop:
        heads = [g.op("Slice", [weights[layer], g.i64([h]), g.i64([h + 1]), g.i64([1])]) for layer, h in alignment_heads]
        if heads:
            g.output(g.op("Concat", heads, axis=1) if len(heads) > 1 else heads[0], "alignment")
        else:  # no alignment heads: an empty [B, 0, n, S] keeps the graph's interface
            g.output(g.op("Slice", [weights.get(0) or g.softmax_scores(q, "cross_k0", hd), g.i64([0]), g.i64([0]),
                                    g.i64([1])]), "alignment")
        outputs.append(_io("alignment", F, ["B", len(alignment_heads), "n", "S"]))
    name = "whisper_decoder_step" + ("_loop" if loop else "") + ("" if int8 else "_f32")
    return g.model(name, inputs, outputs)


def _loop_attend(g: _Graph, q: str, ck: str, cv: str, bias: str, off: str, hd: int) -> str:
    """q [B, H, n, hd]; row b attends over ck/cv[:, :, off[b]:off[b+1]] with bias[off[b]:off[b+1]]:
    an ONNX Loop over the rows whose body is one row's plain attention (stacked: [B, H, n, hd])."""
    B = g.op("Gather", [g.op("Shape", [q]), g.i64([0])], axis=0)  # [1]
    outer, g.nodes = g.nodes, []  # the body's nodes; its constants stay initializers of the main graph
    it, cond_in, cond_out = g.name("iter"), g.name("cond_in"), g.name("cond_out")
    i1 = g.op("Unsqueeze", [it, g.i64([0])])  # [1]
    a0 = g.op("Gather", [off, i1], axis=0)
    a1 = g.op("Gather", [off, g.op("Add", [i1, g.i64([1])])], axis=0)
    qb = g.op("Slice", [q, i1, g.op("Add", [i1, g.i64([1])]), g.i64([0])])  # [1, H, n, hd]
    kb, vb = (g.op("Slice", [t, a0, a1, g.i64([2])]) for t in (ck, cv))
    out = g.op("MatMul", [g.softmax_scores(qb, kb, hd, g.op("Slice", [bias, a0, a1, g.i64([0])])), vb])
    g.nodes.append(helper.make_node("Identity", [cond_in], [cond_out]))
    scan = g.op("Squeeze", [out, g.i64([0])])  # [H, n, hd]
    body = helper.make_graph(
        g.nodes, g.name("body"),
        [_io(it, I64, []), _io(cond_in, TensorProto.BOOL, [])],
        [_io(cond_out, TensorProto.BOOL, []), _io(scan, F, [None, None, None])])
    g.nodes = outer
    return g.op("Loop", [B, ""], "loop_out", body=body)


PROBE_ROWS = (1, 33)  # one row and a batch: the kernel's paths may differ
PROBE_K = (512, 2048)  # a width and an FFN's inner width
PROBE_N = 32


def activation_probe() -> onnx.ModelProto:
    """The worst case of the int8 linears' u8 x s8 product: ``u{K}`` [rows, K] uint8 (fed all
    255) times a weight initializer [K, 32] of int8 127 (prepacked as the models' are), each K
    of PROBE_K its own MatMulInteger; exact, ``y{K}`` is 255 * 127 * K everywhere. Where the
    kernel adds pairs of products in saturating int16 lanes (x86 VPMADDUBSW without VNNI),
    255 * 127 * 2 overflows them and it is not."""
    g = _Graph({})
    inputs, outputs = [], []
    for k in PROBE_K:
        y = g.op("MatMulInteger", [f"u{k}", g.init(np.full((k, PROBE_N), 127, np.int8), "Wq")])
        g.output(y, f"y{k}")
        inputs.append(_io(f"u{k}", TensorProto.UINT8, ["rows", k]))
        outputs.append(_io(f"y{k}", TensorProto.INT32, ["rows", PROBE_N]))
    return g.model("int8_activation_probe", inputs, outputs)


def save(model: onnx.ModelProto, directory: Path, name: str) -> list[str]:
    """Checked, then written as NAME.onnx with its weights as one external data file NAME.weights
    (ORT maps it instead of holding a protobuf copy). Returns the file names written."""
    onnx.checker.check_model(model)
    (directory / f"{name}.weights").unlink(missing_ok=True)  # onnx appends to an existing file
    onnx.save_model(model, str(directory / f"{name}.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{name}.weights", size_threshold=1024, convert_attribute=False)
    return [f"{name}.onnx", f"{name}.weights"]
