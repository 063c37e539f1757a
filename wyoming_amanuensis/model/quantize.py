"""int8 weights for torch modules on the CPU (dynamic quantisation of every Linear).

Weights are quantised once per output channel (per-channel scales keep the
few large rows of Whisper's projections from crushing the small ones);
activations are quantised per call. torch.ao.quantization prints deprecation
notices from torch 2.13 on, its successor being the torchao package; it is
still shipped and tested here, and callers keep the float path as fallback.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn


def int8_linears(module: nn.Module, *, inplace: bool, per_channel: bool = True) -> nn.Module:
    """``module`` with its Linear layers running on int8 weights: a copy, or (``inplace``) the
    module itself, which then no longer holds its float Linear weights (saves their memory)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

        qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
        return quantize_dynamic(module, {nn.Linear: qconfig}, dtype=torch.qint8, inplace=inplace)
