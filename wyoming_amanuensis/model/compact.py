"""The decoder's token embedding in int8, shared with its int8 output projection.

Whisper ties the embedding to the vocabulary projection. Once ``int8_linears``
has quantised the projection per output channel (one scale per token), the
float embedding (51865 x 512 float32 = 106 MB for base) would be the only
float copy left of that matrix; this reads its rows from the projection's own
int8 values and scales instead (27 MB), so both ends of the decoder see the
same quantised matrix.
"""

from __future__ import annotations

import torch
from torch import nn


class Int8Embedding(nn.Module):
    """Rows of an int8 matrix times their per-row scale, looked up like ``nn.Embedding``."""

    def __init__(self, values: torch.Tensor, scales: torch.Tensor):
        super().__init__()
        self.register_buffer("values", values.contiguous(), persistent=False)
        self.register_buffer("scales", scales.to(torch.float32).contiguous(), persistent=False)

    @property
    def num_embeddings(self) -> int:
        return self.values.shape[0]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.values[tokens].to(torch.float32) * self.scales[tokens].unsqueeze(-1)


def share_int8_embedding(net: nn.Module) -> bool:
    """Replace ``net.token_embedding`` by the int8 rows of ``net.proj`` when that projection is
    a dynamically quantised Linear with symmetric per-row scales; False (nothing changed) otherwise."""
    if isinstance(net.token_embedding, Int8Embedding):
        return True
    weight_fn = getattr(net.proj, "weight", None)
    if not callable(weight_fn):  # a float Linear: its weight is the embedding itself, already shared
        return False
    q = weight_fn()
    if q.qscheme() not in (torch.per_channel_symmetric, torch.per_channel_affine) or q.q_per_channel_axis() != 0:
        return False
    if bool(q.q_per_channel_zero_points().ne(0).any()):
        return False
    net.token_embedding = Int8Embedding(q.int_repr(), q.q_per_channel_scales())
    return True
