"""Whisper's audio encoder and text decoder as torch modules, named after openai-whisper's.

Shapes follow ../shared/docs/WHISPER_NOTES.md; the weights come from a
CTranslate2 file through ``ct2_whisper``. The modules are written for
inference only: the decoder takes explicit key/value caches so that the
cross-attention keys/values are computed once per request (and the silence
tail's once per process), and the self-attention cache grows in place.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from .silence import SilenceContext

from .whisper_spec import N_CTX_AUDIO, Dims


class MLP(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.ln(x))))


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[B, T, d] -> [B, H, T, d/H]."""
    b, t, d = x.shape
    return x.view(b, t, n_heads, d // n_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, t, hd = x.shape
    return x.transpose(1, 2).reshape(b, t, h * hd)


# One layer's four matrix products by name ("qkv", "out", "fc1", "fc2"), each x -> x @ W^T + b.
# An encoder block uses its own Linear layers unless another device computes them (the NPU backend).
Products = Mapping[str, Callable[[torch.Tensor], torch.Tensor]]


class EncoderBlock(nn.Module):
    def __init__(self, d: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.attn_ln = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.mlp = MLP(d)

    def linears(self) -> dict[str, nn.Module]:
        """This block's four products as its own Linear layers (looked up per call: int8
        quantisation replaces the modules)."""
        return {"qkv": self.qkv, "out": self.out, "fc1": self.mlp.fc1, "fc2": self.mlp.fc2}

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra: Optional[tuple]) -> torch.Tensor:
        """``extra``: (keys, values, bias) appended after this window's own keys, from
        ``SilenceContext.for_layer``."""
        if extra is None:
            return merge_heads(F.scaled_dot_product_attention(q, k, v))
        ek, ev, bias = extra
        keys = torch.cat((k, ek.to(k.dtype)), dim=2)
        values = torch.cat((v, ev.to(v.dtype)), dim=2)
        mask = torch.cat((torch.zeros(1, k.shape[2], device=q.device), bias.to(q.device)), dim=1).to(q.dtype)
        return merge_heads(F.scaled_dot_product_attention(q, keys, values, attn_mask=mask))

    def forward(self, x: torch.Tensor, extra: Optional[tuple] = None, products: Optional[Products] = None,
                record: Optional[list] = None) -> torch.Tensor:
        """``products``: computes the four products instead of ``linears()``.
        ``record``: gets this layer's (keys, values) [B, H, T, hd] appended (for a SilenceContext)."""
        f = products or self.linears()
        q, k, v = (split_heads(t, self.n_heads) for t in f["qkv"](self.attn_ln(x)).chunk(3, dim=-1))
        if record is not None:
            record.append((k, v))
        x = x + f["out"](self.attention(q, k, v, extra))
        return x + f["fc2"](F.gelu(f["fc1"](self.mlp.ln(x))))


class AudioEncoder(nn.Module):
    def __init__(self, dims: Dims):
        super().__init__()
        d = dims.width
        self.dims = dims
        self.conv1 = nn.Conv1d(dims.n_mels, d, 3, padding=1)
        self.conv2 = nn.Conv1d(d, d, 3, stride=2, padding=1)
        self.register_buffer("positions", torch.zeros(N_CTX_AUDIO, d), persistent=False)
        self.blocks = nn.ModuleList(EncoderBlock(d, dims.enc_heads) for _ in range(dims.enc_layers))
        self.ln_post = nn.LayerNorm(d)

    def stem(self, mel: torch.Tensor) -> torch.Tensor:
        """Conv stem + positions: [B, n_mels, T] -> [B, T/2, d]."""
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        n = x.shape[1]
        if n > N_CTX_AUDIO:
            raise ValueError(f"encoder input of {n} positions exceeds the 30 s window ({N_CTX_AUDIO})")
        return x + self.positions[:n]

    def forward(self, mel: torch.Tensor, context: Optional[SilenceContext] = None,
                products: Optional[Sequence[Products]] = None, record: Optional[list] = None) -> torch.Tensor:
        """[B, n_mels, T] log-mel -> [B, T/2, d] encoder states.

        ``context``: for a short window (T/2 < 1500), every layer also attends to the pooled
        silence keys. ``products``: per layer, the four products (see ``EncoderBlock.forward``).
        ``record``: gets every layer's (keys, values), to build a ``SilenceContext`` from.
        """
        return self.run_layers(self.stem(mel), context, products, record)

    def run_layers(self, x: torch.Tensor, context: Optional[SilenceContext] = None,
                   products: Optional[Sequence[Products]] = None, record: Optional[list] = None) -> torch.Tensor:
        """``forward`` after the stem: a backend that falls back reruns only this."""
        n = x.shape[1]
        for i, block in enumerate(self.blocks):
            extra = context.for_layer(i, n) if context is not None and n < N_CTX_AUDIO else None
            x = block(x, extra, None if products is None else products[i], record)
        return self.ln_post(x)


class SelfCache:
    """Preallocated self-attention keys/values for every decoder layer: [L, 2, B, H, T, hd]."""

    def __init__(self, n_layers: int, batch: int, n_heads: int, max_len: int, head_dim: int, dtype=torch.float32,
                 device: torch.device | str = "cpu"):
        self.kv = torch.zeros(n_layers, 2, batch, n_heads, max_len, head_dim, dtype=dtype, device=device)
        self.length = 0

    def reorder(self, origins: Sequence[int]) -> None:
        """Beam search: keep the cache rows of the surviving beams. Only the filled positions
        are gathered: copying all 448 every token was ~70 % of beam search's time."""
        index = torch.tensor(list(origins), device=self.kv.device)
        n = index.numel()
        if n == self.kv.shape[2] and bool((index == torch.arange(n, device=index.device)).all()):
            return
        rows = self.kv[:, :, :, :, :self.length].index_select(2, index)
        if n != self.kv.shape[2]:  # the batch grows or shrinks (the prefix row becomes the beams)
            shape = list(self.kv.shape)
            shape[2] = n
            self.kv = torch.zeros(shape, dtype=self.kv.dtype, device=self.kv.device)
        self.kv[:, :, :, :, :self.length] = rows

    def fork(self, row: int, length: int, rows: int, max_len: Optional[int] = None) -> "SelfCache":
        """``rows`` rows holding the first ``length`` positions of row ``row``."""
        layers, _, _, heads, size, head_dim = self.kv.shape
        out = SelfCache(layers, rows, heads, max_len or size, head_dim, dtype=self.kv.dtype, device=self.kv.device)
        out.kv[:, :, :, :, :length] = self.kv[:, :, row:row + 1, :, :length]
        out.length = length
        return out


class DecoderBlock(nn.Module):
    def __init__(self, d: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.self_ln = nn.LayerNorm(d)
        self.self_qkv = nn.Linear(d, 3 * d)
        self.self_out = nn.Linear(d, d)
        self.cross_ln = nn.LayerNorm(d)
        self.cross_q = nn.Linear(d, d)
        self.cross_kv = nn.Linear(d, 2 * d)
        self.cross_out = nn.Linear(d, d)
        self.mlp = MLP(d)

    def project_cross(self, enc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Audio keys/values for cross-attention, [B, H, P, hd] each."""
        k, v = self.cross_kv(enc).chunk(2, dim=-1)
        return split_heads(k, self.n_heads), split_heads(v, self.n_heads)

    def forward(self, x, cache_kv: torch.Tensor, start: int, cross: tuple,
                want_weights: bool = False):
        # causal self-attention against the cache
        n = x.shape[1]
        q, k, v = self.self_qkv(self.self_ln(x)).chunk(3, dim=-1)
        cache_kv[0, :, :, start:start + n] = split_heads(k, self.n_heads)
        cache_kv[1, :, :, start:start + n] = split_heads(v, self.n_heads)
        keys = cache_kv[0, :, :, :start + n]
        values = cache_kv[1, :, :, :start + n]
        q = split_heads(q, self.n_heads)
        if n == 1:
            a = F.scaled_dot_product_attention(q, keys, values)
        else:
            mask = torch.ones(n, start + n, dtype=torch.bool, device=x.device).tril(diagonal=start)
            a = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        x = x + self.self_out(merge_heads(a))

        # cross-attention over the audio
        q = split_heads(self.cross_q(self.cross_ln(x)), self.n_heads)
        if isinstance(cross, list):
            # A batch of requests: each row attends over its own audio exactly as it would alone
            # (padding every row to the longest would change its sums, and with them its tokens).
            parts = [self._attend_audio(q[b:b + 1], *row, want_weights) for b, row in enumerate(cross)]
            a = torch.cat([part for part, _ in parts])
            weights = [w[0] for _, w in parts] if want_weights else None
        else:
            a, weights = self._attend_audio(q, *cross, want_weights)
        x = x + self.cross_out(merge_heads(a))
        x = x + self.mlp(x)
        return x, weights

    @staticmethod
    def _attend_audio(q, ck, cv, bias, want_weights: bool):
        if not want_weights:
            return F.scaled_dot_product_attention(q, ck, cv, attn_mask=bias), None
        scale = 1.0 / math.sqrt(q.shape[-1])
        scores = (q @ ck.transpose(-1, -2)) * scale
        weights = torch.softmax(scores if bias is None else scores + bias, dim=-1)
        return weights @ cv, weights


class TextDecoder(nn.Module):
    def __init__(self, dims: Dims):
        super().__init__()
        d = dims.width
        self.dims = dims
        # Given its (uninitialised) storage: Embedding's own init draws normal_, and on the meta
        # device that the loaders build on, normal_ imports torch._dynamo (~1 s of a start).
        self.token_embedding = nn.Embedding(dims.n_vocab, d, _weight=torch.empty(dims.n_vocab, d))
        self.register_buffer("positions", torch.zeros(dims.n_text_ctx, d), persistent=False)
        self.blocks = nn.ModuleList(DecoderBlock(d, dims.dec_heads) for _ in range(dims.dec_layers))
        self.ln = nn.LayerNorm(d)
        # Tied output projection as its own Linear so it can be quantised independently.
        self.proj = nn.Linear(d, dims.n_vocab, bias=False)

    def project_cross(self, enc: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [b.project_cross(enc) for b in self.blocks]

    def new_cache(self, batch: int, max_len: Optional[int] = None) -> SelfCache:
        d = self.dims
        return SelfCache(d.dec_layers, batch, d.dec_heads, max_len or d.n_text_ctx, d.width // d.dec_heads,
                         device=self.positions.device)

    def forward(self, tokens: torch.Tensor, cache: SelfCache, cross: list[tuple],
                weight_layers: frozenset = frozenset()):
        """Feed ``tokens`` [B, n] after ``cache.length`` cached ones.

        Returns the hidden states [B, n, d] before the final LayerNorm (the
        caller projects only the positions it needs: the vocabulary projection
        is the costliest step per token) and, for the layers in
        ``weight_layers``, the cross-attention weights [B, H, n, P] (per row [H, n, P_row]
        for a batch). ``cross`` holds per layer (keys, values, bias or None), or for a batch of
        requests a list of those, one per row.
        """
        start = cache.length
        n = tokens.shape[1]
        if start + n > self.dims.n_text_ctx:
            raise ValueError(f"decoder context overflow: {start + n} > {self.dims.n_text_ctx} tokens")
        x = self.token_embedding(tokens) + self.positions[start:start + n]
        weights = {}
        for i, block in enumerate(self.blocks):
            x, w = block(x, cache.kv[i], start, cross[i], want_weights=i in weight_layers)
            if w is not None:
                weights[i] = w
        cache.length = start + n
        return x, weights
