"""How a short command is fast: the 30 s of padding, computed once and pooled.

Whisper pads every input to a 30 s window, so a 2 s command would pay for
28 s of silence in the encoder and in the decoder's cross-attention. The
fast path encodes only the speech plus a splice margin (``splice_margin_s``)
and stands in for the rest of the window with work done once at start-up:

- Encoder: a short window alone never shows its positions the padding that
  Whisper was trained with, and that costs accuracy (on our corpus, WER 9.5 %
  instead of 5.9 %). So every encoder layer also attends to that layer's
  keys/values over an all-silence window (``SilenceContext``), computed once
  at start-up and pooled 50 positions to a key (``silence_chunk``) with a
  log(count) attention bias; that brings the WER back to the full window's.
- Decoder: the encoder output of the silence window fills the positions after
  the short window's. Its cross-attention keys/values are the same for every
  request, so they are projected once at start-up and pooled 10 positions to
  a key (``decoder_tail_chunk``), and only the speech part is projected per
  request. The tail must reach all the way to position 1500: cut short, the
  decoder loops or truncates.

Pooling a chunk into its mean key, its mean value and a log(count) bias
(``PooledTail``) is exact when the chunk's keys are equal: n keys with one
score s give their values' mean the weight n * exp(s) = exp(s + log n). The
padding's keys barely change from one position to the next, so chunks of
them come close to that.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .modules import N_CTX_AUDIO

# float16 would halve these ~37 MB (base), but together with the int8 embedding it cost a word on
# the English corpus (WER 6.65 -> 6.91 %, --threads 1), and each alone cost nothing: kept float32.
STORAGE_DTYPE = torch.float32


class PooledTail:
    """Keys/values of the silence that pads a short command to 30 s, pooled.

    One mean key/value per chunk of ``chunk`` positions, carrying log(count)
    as an attention bias. Chunks sit at fixed positions and are pooled once;
    ``from_position(p)`` keeps the positions from p up to the next chunk
    boundary exact and pools the rest.
    """

    def __init__(self, k: torch.Tensor, v: torch.Tensor, chunk: int):
        n = k.shape[2]
        c = max(1, int(chunk))
        m = -(-n // c)
        pad = m * c - n
        counts = torch.full((m,), float(c), device=k.device)
        counts[-1] = c - pad
        # The exact keys/values are held in STORAGE_DTYPE and pooled from those same stored
        # values, so that a tail computed now and one read back from the disk cache agree.
        self.k, self.v, self.chunk = k.to(STORAGE_DTYPE), v.to(STORAGE_DTYPE), c
        k, v = self.k.to(k.dtype), self.v.to(v.dtype)

        def pool(x: torch.Tensor) -> torch.Tensor:
            x = F.pad(x, (0, 0, 0, pad)).view(*x.shape[:2], m, c, x.shape[-1]).sum(3)
            return (x / counts[:, None].to(x.dtype)).contiguous()

        self.pooled_k, self.pooled_v = pool(k), pool(v)
        self.log_counts = counts.log()

    def from_position(self, p: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keys, values [B, H, m, hd] standing for positions p..end, and their bias [1, m]."""
        j = -(-p // self.chunk)
        exact = j * self.chunk - p
        k = torch.cat((self.k[:, :, p:p + exact].to(self.pooled_k.dtype), self.pooled_k[:, :, j:]), dim=2)
        v = torch.cat((self.v[:, :, p:p + exact].to(self.pooled_v.dtype), self.pooled_v[:, :, j:]), dim=2)
        bias = torch.cat((torch.zeros(exact, device=k.device), self.log_counts[j:]))[None, :]
        return k, v, bias


class SilenceContext:
    """Each encoder layer's keys/values over the all-silence 30 s window, pooled.

    ``kv``: per layer (keys, values) [1, H, 1500, hd], as the encoder records
    them over the silence window.
    """

    def __init__(self, kv: list[tuple[torch.Tensor, torch.Tensor]], chunk: int):
        if any(k.shape[2] != N_CTX_AUDIO for k, _ in kv):
            raise ValueError("the silence context needs the full 30 s window")
        self.layers = [PooledTail(k, v, chunk) for k, v in kv]

    def for_layer(self, layer: int, start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(keys, values, bias) for positions ``start``..1499 of layer ``layer``, to append to a short window's."""
        return self.layers[layer].from_position(start)
