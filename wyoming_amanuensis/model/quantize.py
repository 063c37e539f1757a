"""int8 weights for torch modules on the CPU.

Weights are quantised once per output channel (per-channel scales keep the
few large rows of Whisper's projections from crushing the small ones);
activations are quantised per call. torch.ao.quantization prints deprecation
notices from torch 2.13 on, its successor being the torchao package; it is
still shipped and tested here, and callers keep the float path as fallback.

Two flavours:

* :func:`int8_linears`: torch's dynamic quantisation as it is. It takes one
  activation scale for the whole input tensor, so a row's result depends on
  the other rows: fine for the encoder (one request per call).
* :func:`row_int8_linears`: the same int8 kernel with one scale per row
  (:class:`RowInt8Linear`), so that a request decoded in a batch gets exactly
  the tokens it gets alone: a server's answer must not depend on who else is
  talking (issue 13).
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import nn

def _quantized(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


def int8_linears(module: nn.Module, *, inplace: bool, per_channel: bool = True) -> nn.Module:
    """``module`` with its Linear layers running on int8 weights: a copy, or (``inplace``) the
    module itself, which then no longer holds its float Linear weights (saves their memory)."""
    def quantize():
        from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

        qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
        return quantize_dynamic(module, {nn.Linear: qconfig}, dtype=torch.qint8, inplace=inplace)
    return _quantized(quantize)


class RowInt8Linear(nn.Module):
    """A Linear on per-channel int8 weights whose activations get one scale per row.

    torch's dynamic int8 linear (fbgemm) derives its activation scale from the
    whole input's minimum and maximum. Each row is therefore first mapped onto
    [0, 1] by its own minimum and range (its minimum becomes exactly 0, its
    maximum exactly 1), so every input the kernel sees spans [0, 1]: its scale
    is the same constant on every call, its integer products are exact, and
    what it returns for a row depends on that row alone. The map is undone on
    the output: W x = r (W u) + m (W 1). As precise as torch's per-tensor
    scale for a lone row (7 bits over that row's own range, which need not
    include 0), and any batch gives the solo tokens.

    Rows must fill the kernel's vector lanes whole (``in_features`` a multiple
    of 16, as every Whisper width is): a tail element may be rounded by the
    scalar path, which would make a row's result depend on its place.

    ``bits``: 7 is torch's recipe (its per-channel weight observer, scale
    max|w| / 127.5 over [-128, 127], which clips each channel's largest weight;
    activations in 128 steps, fbgemm's ``reduce_range``). 8 maps each row onto
    256 steps and puts the weights on CTranslate2's grid (scale max|w| / 127,
    none clipped): teacher-forced, the decoder's divergence from the float
    decoder halves. 8 needs exact sums of pairs of 8-bit products, which
    fbgemm has only with AVX512-VNNI (without it they saturate 16-bit lanes);
    elsewhere 8 falls back to 7 (:func:`int8_activation_bits`).
    """

    def __init__(self, linear: nn.Linear, *, bits: int = 7) -> None:
        super().__init__()
        if linear.in_features % 16:
            raise ValueError(f"per-row int8 needs in_features divisible by 16, got {linear.in_features}")
        bits = int8_activation_bits(bits)
        weight = linear.weight.detach().float()

        def quantize():
            if bits == 8:
                scales = (weight.abs().amax(dim=1) / 127).clamp_min_(1e-30).double()
                zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
            else:
                from torch.ao.quantization.observer import default_per_channel_weight_observer

                observer = default_per_channel_weight_observer()
                observer(weight)
                scales, zero_points = observer.calculate_qparams()
            return torch.quantize_per_channel(weight, scales.double(), zero_points.long(), 0, torch.qint8)
        qweight = _quantized(quantize)
        # W 1 with the weights the kernel really uses, so the minimum is added back exactly.
        row_sums = qweight.dequantize().sum(dim=1)
        bias = linear.bias.detach().float().clone() if linear.bias is not None else None
        self._setup(qweight, row_sums, bias, bits)

    def _setup(self, qweight: torch.Tensor, row_sums: torch.Tensor, bias: Optional[torch.Tensor], bits: int) -> None:
        self.bits = bits
        self.out_features, self.in_features = qweight.shape
        self._packed = _quantized(lambda: torch.ops.quantized.linear_prepack(qweight, None))
        self.register_buffer("row_sums", row_sums, persistent=False)
        self.register_buffer("bias", bias, persistent=False)

    @classmethod
    def from_parts(cls, weight: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor,
                   row_sums: torch.Tensor, bias: Optional[torch.Tensor], bits: torch.Tensor) -> "RowInt8Linear":
        """The layer :meth:`parts` described (the prepared-model cache): the same packed
        weights, without torch.ao's observers (whose import alone costs ~0.5 s)."""
        if weight.dtype != torch.int8 or weight.dim() != 2 or weight.shape[1] % 16:
            raise ValueError(f"not a per-row int8 weight: {weight.dtype} {tuple(weight.shape)}")
        if bits.numel() != 1 or int(bits) not in (7, 8) or int8_activation_bits(int(bits)) != int(bits):
            raise ValueError(f"{int(bits) if bits.numel() == 1 else bits.shape} activation bits cannot run here")
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        qweight = _quantized(lambda: torch._make_per_channel_quantized_tensor(
            weight, scales.double(), zero_points.long(), 0))
        self._setup(qweight, row_sums, bias, int(bits))
        return self

    def parts(self) -> dict[str, torch.Tensor]:
        """What :meth:`from_parts` rebuilds this layer from: the int8 weight [out, in], its
        per-row scales (float64) and zero points (int64), ``row_sums``, the activation ``bits``
        and ``bias`` (if any)."""
        qweight, _ = torch.ops.quantized.linear_unpack(self._packed)
        out = {"weight": qweight.int_repr(), "scales": qweight.q_per_channel_scales().double(),
               "zero_points": qweight.q_per_channel_zero_points().long(), "row_sums": self.row_sums,
               "bits": torch.tensor(self.bits, dtype=torch.int64)}
        if self.bias is not None:
            out["bias"] = self.bias
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, self.in_features)
        low, high = rows.aminmax(dim=1, keepdim=True)
        span = (high - low).clamp_min_(1e-30)  # a constant row maps to 0s: its result is m (W 1)
        unit = (rows - low).div_(span)
        y = torch.ops.quantized.linear_dynamic(unit, self._packed, self.bits == 7)  # reduce_range: 7 bits
        y = y.mul_(span).add_(low * self.row_sums)
        if self.bias is not None:
            y = y.add_(self.bias)
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, int8, "
                f"per-row {self.bits}-bit activation scales")


def row_int8_linears(module: nn.Module, *, bits: int = 7) -> nn.Module:
    """``module`` itself, its Linear layers replaced by :class:`RowInt8Linear` (their float
    weights are released)."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, RowInt8Linear(child, bits=bits))
        else:
            row_int8_linears(child, bits=bits)
    return module


_EXACT_8BIT: dict[str, bool] = {}


def int8_activation_bits(bits: int) -> int:
    """``bits``, or 7 where 8-bit activations are not exact on this CPU's int8 kernel.

    Without AVX512-VNNI fbgemm adds pairs of u8 x s8 products in saturating 16-bit lanes:
    255 * 127 * 2 overflows them (127 * 128 * 2, torch's reduce_range, does not). Checked
    once per process on the worst case rather than guessed from the CPU's name."""
    if bits != 8:
        return bits
    engine = torch.backends.quantized.engine
    if engine not in _EXACT_8BIT:
        def probe():
            # every product 255 * 127; one row and a batch (the kernel's paths may differ)
            weight = torch.quantize_per_channel(torch.full((32, 512), 1.0), torch.full((32,), 1 / 127).double(),
                                                torch.zeros(32, dtype=torch.long), 0, torch.qint8)
            packed = torch.ops.quantized.linear_prepack(weight, None)
            return all(torch.allclose(torch.ops.quantized.linear_dynamic(torch.ones(rows, 512), packed, False),
                                      torch.full((rows, 32), 512.0), rtol=1e-4) for rows in (1, 33))
        _EXACT_8BIT[engine] = _quantized(probe)
    return 8 if _EXACT_8BIT[engine] else 7
