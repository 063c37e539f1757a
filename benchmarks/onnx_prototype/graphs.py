"""Build step: Whisper base as ONNX graphs written with onnx.helper from our own model.bin reader
(wyoming_amanuensis.model.ct2; no torch, no exporter), then the prepared files a torch-free runtime
would keep. Any CTranslate2 Whisper shape builds the same way (dims() reads mel bins, layer and head
counts, width and vocabulary from model.bin; the shapes step builds each into WORK/shapes/NAME/graphs).
Writes into WORK/graphs:

  encoder.onnx        mel [1, n_mels, T] + silence context (extra_k/v [L, 1, H, E, hd], extra_bias [E])
                      -> features [1, T/2, d]; float32, plain MatMul/Softmax attention
  encoder_flash.onnx  the same with com.microsoft.MultiHeadAttention and the context's bias folded into
                      the keys, so that ORT's CPU flash attention runs (the product set-up's encoder)
  cross.onnx          features [1, P, d] -> per-layer cross K, V [1, H, P, hd]; int8 as RowInt8Linear
  decoder.onnx        one step: tokens [B, n], offset, past self K/V, cross K/V + bias -> last position's
                      logits [B, V] and the present self K/V; Linear layers int8, embedding float16
  *.weights           each graph's weights as one external data file (ORT maps it; no protobuf copy)
  mel_filters.npy     wyoming_amanuensis.mel.mel_filters(n_mels) for the numpy log-mel
  silence/            the silence context and decoder tail, computed by these graphs from an all-silent
                      30 s window, pooled once (runtime.PooledTail)
  built.json          written last: its presence means the build is complete
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from wyoming_amanuensis.model.ct2 import dequantize, read_model_bin
from wyoming_amanuensis.model.loader import resolve

from .runtime import OrtWhisper, log_mel_np, session

OPSET = 17
F = TensorProto.FLOAT
I64 = TensorProto.INT64
I32 = TensorProto.INT32
SAVED = ("encoder", "encoder_flash", "cross", "decoder")


class G:
    """A tiny graph builder: nodes, initializers and fresh names. int8: linear_q is RowInt8Linear (else
    float32, the shapes step's float twins of the cross projection and decoder step)."""

    def __init__(self, v: dict, int8: bool = True):
        self.v, self.nodes, self.inits, self.n, self.int8 = v, [], [], 0, int8

    def w(self, name: str) -> np.ndarray:
        return dequantize(self.v, name)  # float32, CTranslate2's int8 undone

    def name(self, hint="t"):
        self.n += 1
        return f"{hint}_{self.n}"

    def init(self, arr, hint="w"):
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def const_i64(self, vals, hint="c"):
        return self.init(np.array(vals, dtype=np.int64), hint)

    def scalar(self, x: float):
        return self.init(np.array(x, np.float32), "s")

    def op(self, op_type, inputs, hint=None, n_out=1, domain=None, **attrs):
        outs = [self.name(hint or op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, domain=domain, **attrs))
        return outs[0] if n_out == 1 else outs

    def output(self, src, name):
        self.nodes.append(helper.make_node("Identity", [src], [name]))

    def filled(self, shape, value: float):
        return self.op("ConstantOfShape", [shape], value=helper.make_tensor("v", F, [1], [value]))

    def layer_norm(self, x, prefix):
        return self.op("LayerNormalization", [x, self.init(self.w(prefix + "gamma")), self.init(self.w(prefix + "beta"))],
                       axis=-1, epsilon=1e-5)

    def gelu(self, x):  # exact (erf) GELU as torch's F.gelu; ORT fuses the pattern
        y = self.op("Add", [self.op("Erf", [self.op("Div", [x, self.scalar(math.sqrt(2.0))])]), self.scalar(1.0)])
        return self.op("Mul", [self.op("Mul", [x, y]), self.scalar(0.5)])

    def linear_f32(self, x, prefix):
        y = self.op("MatMul", [x, self.init(self.w(prefix + "weight").T, "W")])
        return self.op("Add", [y, self.init(self.w(prefix + "bias"), "b")])

    def linear_int8(self, x, w, b):
        """quantize.RowInt8Linear at 8 bits: weights per output row on max|w|/127; each activation row
        mapped onto [0, 1] by its own min and range and quantised in 256 steps (uint8); u8 x s8 integer
        product; then y = span/255 * w_scale * (q_x . q_w) + low * row_sums + bias."""
        qw, scale, row_sums = quantize_rows(w)
        low = self.op("ReduceMin", [x], axes=[-1], keepdims=1)
        high = self.op("ReduceMax", [x], axes=[-1], keepdims=1)
        span = self.op("Max", [self.op("Sub", [high, low]), self.scalar(1e-30)])
        unit = self.op("Div", [self.op("Sub", [x, low]), span])
        q = self.op("Cast", [self.op("Round", [self.op("Mul", [unit, self.scalar(255.0)])])], to=TensorProto.UINT8)
        y = self.op("Cast", [self.op("MatMulInteger", [q, self.init(qw.T.copy(), "Wq")])], to=F)  # int32 exact
        y = self.op("Mul", [self.op("Mul", [y, self.init(scale / np.float32(255.0), "ws")]), span])
        y = self.op("Add", [y, self.op("Mul", [low, self.init(row_sums, "rs")])])
        return self.op("Add", [y, self.init(b, "b")]) if b is not None else y

    def linear_q(self, x, prefix):
        if not self.int8:
            return self.linear_f32(x, prefix)
        return self.linear_int8(x, self.w(prefix + "weight"), self.w(prefix + "bias"))

    def split_heads(self, x, h, hd):  # [B, T, d] -> [B, H, T, hd]
        return self.op("Transpose", [self.op("Reshape", [x, self.const_i64([0, 0, h, hd])])], perm=[0, 2, 1, 3])

    def merge_heads(self, x, d):  # [B, H, T, hd] -> [B, T, d]
        return self.op("Reshape", [self.op("Transpose", [x], perm=[0, 2, 1, 3]), self.const_i64([0, 0, d])])

    def attend(self, q, k, v, hd, mask=None):
        """softmax(q k^T / sqrt(hd) + mask) v; q [B,H,n,hd], k/v [B',H,S,hd] (B' broadcasts)."""
        s = self.op("MatMul", [q, self.op("Transpose", [k], perm=[0, 1, 3, 2])])
        s = self.op("Mul", [s, self.scalar(1.0 / math.sqrt(hd))])
        if mask is not None:
            s = self.op("Add", [s, mask])
        return self.op("MatMul", [self.op("Softmax", [s], axis=-1), v])

    def shape_with(self, x, last: int):  # Shape(x)[:3] + [last]
        return self.op("Concat", [self.op("Slice", [self.op("Shape", [x]), self.const_i64([0]), self.const_i64([3])]),
                                  self.const_i64([last])], axis=0)

    def model(self, name, inputs, outputs, ms=False):
        opsets = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid("com.microsoft", 1)] if ms else [])
        return helper.make_model(helper.make_graph(self.nodes, name, inputs, outputs, self.inits), opset_imports=opsets)


def quantize_rows(w: np.ndarray):
    """int8 weights on max|w|/127 per output row with torch.quantize_per_channel's rounding (round half to
    even of w * (1 / scale) in float32), the scales, and the rows' sums of the dequantised weights."""
    w = w.astype(np.float32)
    scale = np.maximum(np.abs(w).max(axis=1) / np.float32(127), np.float32(1e-30)).astype(np.float32)
    inv = (np.float32(1.0) / scale).astype(np.float32)
    q = np.clip(np.rint(w * inv[:, None]), -128, 127).astype(np.int8)
    row_sums = (q.astype(np.float32) * scale[:, None]).sum(axis=1, dtype=np.float32)
    return q, scale, row_sums


def load_variables(model: str = "base") -> dict:
    """A model.bin through our own reader: the bundled base (its two packaged parts joined in memory), or
    any CTranslate2 Whisper directory (the shapes step's random-weight models)."""
    name, directory, blob = resolve(model)
    return read_model_bin(blob if blob is not None else directory / "model.bin", name=f"{name} model.bin")


def dims(v: dict) -> dict:
    def layers(side):
        return 1 + max(int(m.group(1)) for k in v for m in [re.match(side + r"/layer_(\d+)/", k)] if m)
    d = v["encoder/conv1/weight"].shape[0]
    return dict(d=d, n_mels=v["encoder/conv1/weight"].shape[1], L_enc=layers("encoder"), L_dec=layers("decoder"),
                H_enc=int(v["encoder/num_heads"]), H_dec=int(v["decoder/num_heads"]),
                n_vocab=v["decoder/embeddings/weight"].shape[0])


def build_encoder(v, record=False, flash=False):
    """record: also output each layer's self-attention K, V (to compute the silence context);
    flash: MultiHeadAttention with the context's bias folded into the keys."""
    D = dims(v)
    d, H, L = D["d"], D["H_enc"], D["L_enc"]
    hd = d // H
    g = G(v)
    inputs = [helper.make_tensor_value_info("mel", F, [1, D["n_mels"], "T"]),
              # the silence context (SilenceContext.for_layer for every layer, stacked); E = 0 for a full window
              helper.make_tensor_value_info("extra_k", F, [L, 1, H, "E", hd]),
              helper.make_tensor_value_info("extra_v", F, [L, 1, H, "E", hd]),
              helper.make_tensor_value_info("extra_bias", F, ["E"])]
    x = g.op("Conv", ["mel", g.init(g.w("encoder/conv1/weight")), g.init(g.w("encoder/conv1/bias"))],
             kernel_shape=[3], pads=[1, 1], strides=[1])
    x = g.op("Conv", [g.gelu(x), g.init(g.w("encoder/conv2/weight")), g.init(g.w("encoder/conv2/bias"))],
             kernel_shape=[3], pads=[1, 1], strides=[2])
    x = g.op("Transpose", [g.gelu(x)], perm=[0, 2, 1])  # [1, P, d]
    P = g.op("Gather", [g.op("Shape", [x]), g.const_i64([1])], axis=0)  # [1]
    x = g.op("Add", [x, g.op("Slice", [g.init(g.w("encoder/position_encodings/encodings")), g.const_i64([0]), P,
                                       g.const_i64([0])])])
    if not flash:  # mask [P + E]: zeros over the window's own keys, the pooled tail's log(count) after them
        mask = g.op("Concat", [g.filled(P, 0.0), "extra_bias"], axis=0)
    outputs = [helper.make_tensor_value_info("features", F, [1, "P", d])]
    for i in range(L):
        p = f"encoder/layer_{i}/"
        h = g.layer_norm(x, p + "self_attention/layer_norm/")
        qkv = g.linear_f32(h, p + "self_attention/linear_0/")
        q, k, vv = (g.split_heads(t, H, hd) for t in g.op("Split", [qkv, g.const_i64([d, d, d])], axis=-1, n_out=3))
        if record:
            for kind, t in (("k", k), ("v", vv)):
                g.output(t, f"{kind}{i}")
                outputs.append(helper.make_tensor_value_info(f"{kind}{i}", F, [1, H, "P", hd]))
        li = g.const_i64([i])
        ek = g.op("Squeeze", [g.op("Gather", ["extra_k", li], axis=0), g.const_i64([0])])
        ev = g.op("Squeeze", [g.op("Gather", ["extra_v", li], axis=0), g.const_i64([0])])
        vals = g.op("Concat", [vv, ev], axis=2)
        if flash:
            # ORT's CPU flash attention (which never holds the P x (P+E) scores) runs only without an
            # attention_bias, so the tail's log(count) goes into the keys: q gets a 65th component 1, the
            # window's keys 0, the tail's keys bias * sqrt(hd); with the scale 1/sqrt(hd) that is
            # q.k/sqrt(hd) + bias exactly as before. Values get a 0 column (one head size), dropped after.
            eb = g.op("Reshape", [g.op("Mul", ["extra_bias", g.scalar(math.sqrt(hd))]), g.const_i64([1, 1, -1, 1])])
            eb = g.op("Expand", [eb, g.op("Concat", [g.const_i64([1, H]), g.op("Shape", ["extra_bias"]),
                                                     g.const_i64([1])], axis=0)])
            qa = g.op("Concat", [q, g.filled(g.shape_with(q, 1), 1.0)], axis=3)  # [1, H, P, hd+1]
            keys = g.op("Concat", [g.op("Concat", [k, g.filled(g.shape_with(k, 1), 0.0)], axis=3),
                                   g.op("Concat", [ek, eb], axis=3)], axis=2)
            vals = g.op("Concat", [vals, g.filled(g.shape_with(vals, 1), 0.0)], axis=3)

            # as [1, S, H*(hd+1)]: with 4-D (BNSH) inputs ORT takes its unfused path, never flash
            def bsd(t):
                return g.op("Reshape", [g.op("Transpose", [t], perm=[0, 2, 1, 3]), g.const_i64([0, 0, H * (hd + 1)])])
            a = g.op("MultiHeadAttention", [bsd(qa), bsd(keys), bsd(vals)], domain="com.microsoft", num_heads=H,
                     scale=1.0 / math.sqrt(hd))
            a = g.op("Reshape", [a, g.const_i64([0, 0, H, hd + 1])])
            a = g.op("Slice", [a, g.const_i64([0]), g.const_i64([hd]), g.const_i64([3])])
            a = g.op("Reshape", [a, g.const_i64([0, 0, d])])
        else:
            a = g.merge_heads(g.attend(q, g.op("Concat", [k, ek], axis=2), vals, hd, mask), d)
        x = g.op("Add", [x, g.linear_f32(a, p + "self_attention/linear_1/")])
        h = g.gelu(g.linear_f32(g.layer_norm(x, p + "ffn/layer_norm/"), p + "ffn/linear_0/"))
        x = g.op("Add", [x, g.linear_f32(h, p + "ffn/linear_1/")])
    g.output(g.layer_norm(x, "encoder/layer_norm/"), "features")
    return g.model("whisper_encoder", inputs, outputs, ms=flash)


def build_cross(v, int8=True):
    """int8: the projection as RowInt8Linear (cross.onnx); False: float32 (the shapes step's float twin)."""
    D = dims(v)
    d, H, L = D["d"], D["H_dec"], D["L_dec"]
    hd = d // H
    g = G(v, int8)
    outputs = []
    for i in range(L):
        kv = g.linear_q("features", f"decoder/layer_{i}/attention/linear_1/")
        for kind, t in zip("kv", g.op("Split", [kv, g.const_i64([d, d])], axis=-1, n_out=2)):
            g.output(g.split_heads(t, H, hd), f"cross_{kind}{i}")
            outputs.append(helper.make_tensor_value_info(f"cross_{kind}{i}", F, [1, H, "P", hd]))
    return g.model("whisper_cross_kv", [helper.make_tensor_value_info("features", F, [1, "P", d])], outputs)


def build_decoder(v, cross="plain", self_attn="concat", int8=True):
    """One decoder step. The defaults are decoder.onnx; the variants (build_variant) answer the batching and
    KV-cache steps with the same weights and int8 linears:

    cross      plain: cross_k/v [Bc, H, S, hd], cross_bias [S] (one audio length for the batch)
               pad:   cross_k/v [B, H, Smax, hd], each row padded to the longest, cross_bias [B, Smax] (-inf on
                      the padding)
               loop:  the rows' audio concatenated, cross_k/v [1, H, sum S_b, hd], cross_bias [sum S_b], and
                      cross_off [B + 1] int64; an ONNX Loop attends each row over its own slice (as
                      wyoming_amanuensis.model.modules attends each row over its own audio)
    self_attn  concat: past_k/v [B, H, past, hd] in, present = past + new out (a Concat copy)
               gqa:    com.microsoft.GroupQueryAttention on a preallocated cache [B, H, maxT, hd], meant to be
                       bound as past_k{i} and present_k{i} at once (IOBinding) and written in place;
                       seqlens_k [B] int32 (= past + n - 1), total_len [1] int32
    int8       True: Linear layers and the output projection int8, embedding float16 (decoder.onnx); False:
               all float32 as our float decoder (the shapes step compares both with random weights)
    """
    D = dims(v)
    d, H, L = D["d"], D["H_dec"], D["L_dec"]
    hd = d // H
    g = G(v, int8)
    inputs = [helper.make_tensor_value_info("tokens", I64, ["B", "n"]),
              helper.make_tensor_value_info("offset", I64, [1]),
              helper.make_tensor_value_info("cross_bias", F, ["B", "S"] if cross == "pad" else ["S"])]
    if cross == "loop":
        inputs.append(helper.make_tensor_value_info("cross_off", I64, ["B1"]))
    if self_attn == "gqa":
        inputs += [helper.make_tensor_value_info("seqlens_k", I32, ["B"]),
                   helper.make_tensor_value_info("total_len", I32, [1])]
    past = ["B", H, "maxT" if self_attn == "gqa" else "past", hd]
    inputs += [helper.make_tensor_value_info(f"past_{kind}{i}", F, past) for i in range(L) for kind in "kv"]
    cshape = {"plain": ["Bc", H, "S", hd], "pad": ["B", H, "S", hd], "loop": [1, H, "S", hd]}[cross]
    inputs += [helper.make_tensor_value_info(f"cross_{kind}{i}", F, cshape) for i in range(L) for kind in "kv"]
    emb = g.w("decoder/embeddings/weight")  # [V, d]; its int8 copy is the output projection (tied)
    if int8:
        x = g.op("Cast", [g.op("Gather", [g.init(emb.astype(np.float16), "emb16"), "tokens"], axis=0)], to=F)
    else:
        emb_name = g.init(emb, "emb")
        x = g.op("Gather", [emb_name, "tokens"], axis=0)
    n = g.op("Gather", [g.op("Shape", ["tokens"]), g.const_i64([1])], axis=0)  # [1]
    end = g.op("Add", ["offset", n])
    x = g.op("Add", [x, g.op("Slice", [g.init(g.w("decoder/position_encodings/encodings")), "offset", end,
                                       g.const_i64([0])])])
    if self_attn == "concat":  # causal mask [n, offset + n]: row i sees keys j <= offset + i
        zero, one = g.init(np.array(0, np.int64)), g.init(np.array(1, np.int64))
        rows = g.op("Add", [g.op("Unsqueeze", [g.op("Range", [zero, g.op("Squeeze", [n]), one]), g.const_i64([1])]),
                            "offset"])
        cols = g.op("Unsqueeze", [g.op("Range", [zero, g.op("Squeeze", [end]), one]), g.const_i64([0])])
        causal = g.op("Where", [g.op("LessOrEqual", [cols, rows]), g.scalar(0.0), g.scalar(-np.inf)])
    cbias = g.op("Unsqueeze", ["cross_bias", g.const_i64([1, 2])]) if cross == "pad" else "cross_bias"  # [B,1,1,S]
    outputs = [helper.make_tensor_value_info("logits", F, ["B", D["n_vocab"]])]
    for i in range(L):
        p = f"decoder/layer_{i}/"
        qkv = g.linear_q(g.layer_norm(x, p + "self_attention/layer_norm/"), p + "self_attention/linear_0/")
        if self_attn == "concat":
            q, k, vv = (g.split_heads(t, H, hd) for t in g.op("Split", [qkv, g.const_i64([d, d, d])], axis=-1, n_out=3))
            keys = g.op("Concat", [f"past_k{i}", k], axis=2)
            vals = g.op("Concat", [f"past_v{i}", vv], axis=2)
            for kind, t in (("k", keys), ("v", vals)):
                g.output(t, f"present_{kind}{i}")
                outputs.append(helper.make_tensor_value_info(f"present_{kind}{i}", F, ["B", H, "total", hd]))
            a = g.merge_heads(g.attend(q, keys, vals, hd, causal), d)
        else:  # [B, n, d] in and out; the new K/V written into the bound cache at seqlens_k + 1 - n
            qkv_split = g.op("Split", [qkv, g.const_i64([d, d, d])], axis=-1, n_out=3)
            a = g.name("gqa")
            g.nodes.append(helper.make_node(
                "GroupQueryAttention", [*qkv_split, f"past_k{i}", f"past_v{i}", "seqlens_k", "total_len"],
                [a, f"present_k{i}", f"present_v{i}"], domain="com.microsoft", num_heads=H, kv_num_heads=H))
            outputs += [helper.make_tensor_value_info(f"present_{kind}{i}", F, past) for kind in "kv"]
        x = g.op("Add", [x, g.linear_q(a, p + "self_attention/linear_1/")])
        q = g.split_heads(g.linear_q(g.layer_norm(x, p + "attention/layer_norm/"), p + "attention/linear_0/"), H, hd)
        if cross == "loop":
            a = g.merge_heads(loop_attend(g, q, f"cross_k{i}", f"cross_v{i}", "cross_bias", "cross_off", hd), d)
        else:
            a = g.merge_heads(g.attend(q, f"cross_k{i}", f"cross_v{i}", hd, cbias), d)
        x = g.op("Add", [x, g.linear_q(a, p + "attention/linear_2/")])
        h = g.gelu(g.linear_q(g.layer_norm(x, p + "ffn/layer_norm/"), p + "ffn/linear_0/"))
        x = g.op("Add", [x, g.linear_q(h, p + "ffn/linear_1/")])
    last = g.op("Slice", [x, g.const_i64([-1]), g.const_i64([np.iinfo(np.int64).max]), g.const_i64([1])])  # [B,1,d]
    last = g.layer_norm(g.op("Squeeze", [last, g.const_i64([1])]), "decoder/layer_norm/")
    if int8:
        g.output(g.linear_int8(last, emb, None), "logits")
    else:
        g.output(g.op("MatMul", [last, g.op("Transpose", [emb_name], perm=[1, 0])]), "logits")
    name = "whisper_decoder_step" + ("" if (cross, self_attn) == ("plain", "concat") else f"_{cross}_{self_attn}")
    name += "" if int8 else "_f32"
    return g.model(name, inputs, outputs, ms=self_attn == "gqa")


def loop_attend(g: G, q, ck, cv, bias, off, hd):
    """q [B, H, n, hd]; row b attends over ck/cv[:, :, off[b]:off[b+1]] with bias[off[b]:off[b+1]]: an ONNX
    Loop over the rows whose body is the plain attention of one row (the Loop stacks them: [B, H, n, hd])."""
    B = g.op("Gather", [g.op("Shape", [q]), g.const_i64([0])], axis=0)  # [1]
    outer, g.nodes = g.nodes, []  # the body's nodes; its constants stay initializers of the main graph
    it, cond_in, cond_out = g.name("iter"), g.name("cond_in"), g.name("cond_out")
    i1 = g.op("Unsqueeze", [it, g.const_i64([0])])  # [1]
    a0 = g.op("Gather", [off, i1], axis=0)
    a1 = g.op("Gather", [off, g.op("Add", [i1, g.const_i64([1])])], axis=0)
    qb = g.op("Slice", [q, i1, g.op("Add", [i1, g.const_i64([1])]), g.const_i64([0])])  # [1, H, n, hd]
    kb, vb = (g.op("Slice", [t, a0, a1, g.const_i64([2])]) for t in (ck, cv))
    out = g.attend(qb, kb, vb, hd, g.op("Slice", [bias, a0, a1, g.const_i64([0])]))
    g.nodes.append(helper.make_node("Identity", [cond_in], [cond_out]))
    scan = g.op("Squeeze", [out, g.const_i64([0])])  # [H, n, hd]
    body = helper.make_graph(
        g.nodes, g.name("body"),
        [helper.make_tensor_value_info(it, I64, []), helper.make_tensor_value_info(cond_in, TensorProto.BOOL, [])],
        [helper.make_tensor_value_info(cond_out, TensorProto.BOOL, []),
         helper.make_tensor_value_info(scan, F, [None, None, None])])
    g.nodes = outer
    return g.op("Loop", [B, ""], "loop_out", body=body)


def ort_dims(D: dict) -> dict:
    """OrtWhisper's dimension arguments for dims(v)."""
    return dict(n_layers=D["L_enc"], n_heads=D["H_enc"], head_dim=D["d"] // D["H_enc"], dec_layers=D["L_dec"])


def prepare_silence(record_graph, graphs: Path, filters: np.ndarray, D: dict) -> None:
    """The all-silent 30 s window through the recording encoder (its per-layer self-attention K/V: the
    silence context) and the cross projection (the decoder's silence tail), pooled and saved as the
    runtime reads them."""
    ow = OrtWhisper(session(record_graph.SerializeToString()), session(graphs / "cross.onnx"), None,  # in memory:
                    **ort_dims(D))
    features, *kv = ow.encode(log_mel_np(np.zeros(0, np.float32), 3000, filters)[None], outputs=None)  # only here
    tail = ow.cross.run(None, {"features": features})
    ow.set_silence(list(zip(kv[0::2], kv[1::2])), list(zip(tail[0::2], tail[1::2])))
    ow.save_silence(graphs / "silence")


def save(m, directory: Path, name: str) -> Path:
    """Checked, then written as NAME.onnx with its weights as one external data file NAME.weights."""
    onnx.checker.check_model(m)
    (directory / f"{name}.weights").unlink(missing_ok=True)  # onnx appends to an existing file
    onnx.save_model(m, str(directory / f"{name}.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{name}.weights", size_threshold=1024, convert_attribute=False)
    print(f"  {name}.onnx: {len(m.graph.node)} nodes, weights {(directory / f'{name}.weights').stat().st_size / 2**20:.1f} MiB",
          flush=True)
    return directory / f"{name}.onnx"


def build_variant(graphs: Path, cross: str, self_attn: str) -> Path:
    """WORK/graphs/variants/decoder_CROSS_SELFATTN.onnx (build_decoder's variants, for the batching and
    kvcache steps), built unless there; the .onnx is written after its weights, so its presence means done."""
    directory = graphs / "variants"
    name = f"decoder_{cross}_{self_attn}"
    if not (directory / f"{name}.onnx").is_file():
        directory.mkdir(parents=True, exist_ok=True)
        save(build_decoder(load_variables(), cross, self_attn), directory, name)
    return directory / f"{name}.onnx"


def build(work: Path, model: str = "base", graphs: Path | None = None) -> Path:
    """WORK/graphs (or ``graphs``) for ``model`` (a name or CTranslate2 directory; default the bundled base),
    built unless built.json says a complete build is there already."""
    graphs = graphs or work / "graphs"
    if (graphs / "built.json").is_file():
        print(f"graphs: reusing {graphs} (delete it to rebuild)")
        return graphs
    graphs.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    from wyoming_amanuensis.mel import mel_filters  # imports torch: a build-time asset only
    v = load_variables(model)
    D = dims(v)
    filters = mel_filters(D["n_mels"]).numpy()
    np.save(graphs / "mel_filters.npy", filters)
    builders = {"encoder": lambda: build_encoder(v), "encoder_flash": lambda: build_encoder(v, flash=True),
                "cross": lambda: build_cross(v), "decoder": lambda: build_decoder(v)}
    for name in SAVED:
        save(builders[name](), graphs, name)
    prepare_silence(build_encoder(v, record=True), graphs, filters, D)
    import onnxruntime
    (graphs / "built.json").write_text(json.dumps({"graphs": list(SAVED), "model": model, "dims": D,
                                                   "onnx": onnx.__version__,
                                                   "onnxruntime": onnxruntime.__version__,
                                                   "seconds": round(time.perf_counter() - t0, 1)}))
    print(f"graphs: built in {graphs} in {time.perf_counter() - t0:.0f} s")
    return graphs

