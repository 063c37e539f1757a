"""The decoder network on torch (``decoder_net.DecoderNet``): CUDA, the NPU backend's CPU
decoder, and ``--cpu-runtime torch``.

It owns the torch side of decoding: the quantised or device-placed ``TextDecoder``, the
silence tail's cross-attention keys/values (projected once per process, pooled), the token
tensors and the self-attention cache. The search (``decoding.py``) sees only numpy.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from ..decoder_net import CrossAttention
from .modules import N_CTX_AUDIO, SelfCache, TextDecoder
from .quantize import row_int8_linears
from .silence import PooledTail


class TorchDecoderNet:
    def __init__(self, module: TextDecoder, silence: torch.Tensor, alignment_heads: Sequence[tuple[int, int]], *,
                 device: torch.device | str = "cpu", int8_bits: int = 0, tail_chunk: int = 1):
        """``silence``: encoder output of an all-silence 30 s window, [1, 1500, d].
        ``int8_bits``: the Linear layers on int8 weights with activations of this many bits
        (``quantize.RowInt8Linear``; a model loaded so already is), 0: as loaded.
        ``tail_chunk``: pool the silence tail's cross-attention keys in chunks of this many positions (1 = exact)."""
        self.device = torch.device(device)
        if int8_bits:
            if self.device.type != "cpu":
                raise ValueError("the int8 decoder runs on the CPU only")
            # In place (the float decoder is only ever used through this object), with per-row
            # activation scales: a request's tokens must not depend on what it is batched with.
            module = row_int8_linears(module, bits=int8_bits)
        elif self.device.type != "cpu":
            module = module.to(self.device)
        self.module = module
        self.int8 = bool(int8_bits)
        self.heads = list(alignment_heads)
        self.alignment_layers = frozenset(layer for layer, _ in self.heads)
        with torch.inference_mode():
            self.silence_tails = [PooledTail(k.contiguous(), v.contiguous(), tail_chunk)
                                  for k, v in module.project_cross(silence.to(self.device))]

    @torch.inference_mode()
    def cross(self, features, tail_cached: bool) -> CrossAttention:
        feats = torch.as_tensor(features)
        if feats.device != self.device:
            feats = feats.to(self.device)
        p = feats.shape[1]
        kv = []
        for (k, v), tail in zip(self.module.project_cross(feats), self.silence_tails):
            bias = None
            if tail_cached and p < N_CTX_AUDIO:
                tk, tv, tb = tail.from_position(p)
                k = torch.cat((k, tk), dim=2)
                v = torch.cat((v, tv), dim=2)
                bias = torch.cat((torch.zeros(1, p, device=tb.device), tb), dim=1)
            kv.append((k, v, bias))
        return CrossAttention(kv=kv)

    def join(self, crosses: Sequence[CrossAttention]) -> CrossAttention:
        """Per layer one (keys, values, bias) per row: ``DecoderBlock`` attends each row over its own."""
        if len(crosses) == 1:
            return crosses[0]
        return CrossAttention(kv=[[c.kv[layer] for c in crosses] for layer in range(len(crosses[0].kv))],
                              rows=len(crosses))

    def new_cache(self, batch: int, max_len: Optional[int] = None) -> SelfCache:
        return self.module.new_cache(batch, max_len)

    @torch.inference_mode()
    def step(self, tokens: Sequence[Sequence[int]], cache: SelfCache, cross: CrossAttention,
             positions: Sequence[int], alignment: bool = False) -> tuple[np.ndarray, Optional[list[np.ndarray]]]:
        batch = len(tokens)
        kv = cross.kv
        if cross.rows == 1 and batch > 1:  # one request's audio for all rows (views, no copies)
            kv = [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1), b) for k, v, b in kv]
        hidden, weights = self.module(torch.tensor(tokens, device=self.device), cache, kv,
                                      weight_layers=self.alignment_layers if alignment else frozenset())
        picked = hidden[:, list(positions)]
        logits = self.module.proj(self.module.ln(picked)).float()
        logits = logits.numpy() if logits.device.type == "cpu" else logits.cpu().numpy()
        rows = None
        if alignment:
            # weights[layer]: [B, H, n, S], or per row [H, n, S_b] for joined requests
            rows = [torch.stack([weights[layer][b][head] for layer, head in self.heads]).float().cpu().numpy()
                    for b in range(batch)]
        return logits, rows
