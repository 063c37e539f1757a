"""A request's tokens do not depend on what it is decoded with: the int8 linear's per-row
scales, and the engine's batches against solo decodes on real corpus speech."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmarks.corpus import clips
from wyoming_amanuensis.audio import to_16k
from wyoming_amanuensis.config import settings_from
from wyoming_amanuensis.model.quantize import RowInt8Linear, int8_linears
from wyoming_amanuensis.pipeline import Engine
from wyoming_amanuensis.request import Job, Request


@pytest.mark.parametrize("bits", [7, 8])
@pytest.mark.parametrize("features", [(384, 1152), (512, 2048), (2048, 512)])
def test_row_int8_linear_gives_each_row_its_solo_result_and_int8_precision(features, bits):
    torch.manual_seed(0)
    linear = nn.Linear(*features)
    row = RowInt8Linear(linear, bits=bits)
    per_tensor = int8_linears(nn.Sequential(linear), inplace=False)
    # rows of very different ranges: torch's one scale per tensor would crush the small ones
    x = torch.randn(8, 1, features[0]) * torch.tensor([0.01, 0.1, 1, 10, 3, 0.5, 30, 2])[:, None, None]
    together = row(x)
    for i in range(8):
        assert torch.equal(together[i], row(x[i:i + 1])[0]), i
    assert not all(torch.equal(per_tensor(x)[i], per_tensor(x[i:i + 1])[0]) for i in range(8))  # what it fixes
    exact = linear(x)
    for i in range(8):  # as close to float as torch's int8 is for that row alone
        ours = (row(x[i:i + 1]) - exact[i:i + 1]).abs().mean()
        theirs = (per_tensor(x[i:i + 1]) - exact[i:i + 1]).abs().mean()
        # 8 bits (where the kernel's sums are exact) halves the error of torch's 7
        assert ours <= (0.8 if row.bits == 8 else 1.2) * theirs, (i, float(ours), float(theirs))


def test_row_int8_linear_8_bits_is_ctranslate2s_arithmetic():
    torch.manual_seed(0)
    linear = nn.Linear(512, 64)
    row = RowInt8Linear(linear, bits=8)
    if row.bits != 8:
        pytest.skip("this CPU's int8 kernel is not exact with 8-bit activations (it falls back to 7)")
    w = linear.weight.detach()
    scale = w.abs().amax(dim=1, keepdim=True) / 127
    # the weights CTranslate2 quantises to (none clipped), and each row in 256 steps of its range
    ct2_w = torch.round(w / scale) * scale
    x = torch.randn(4, 512)
    low, high = x.aminmax(dim=1, keepdim=True)
    unit = torch.round((x - low) / (high - low) * 255) / 255 * (high - low) + low
    assert torch.allclose(row(x), unit @ ct2_w.T + linear.bias, atol=1e-4)
    assert RowInt8Linear(linear, bits=7).bits == 7
    rebuilt = RowInt8Linear.from_parts(**row.parts())
    assert rebuilt.bits == 8 and torch.equal(rebuilt(x), row(x))


def test_row_int8_linear_constant_and_zero_rows():
    linear = nn.Linear(64, 32)
    row = RowInt8Linear(linear)
    x = torch.stack([torch.zeros(64), torch.full((64,), 0.75), torch.randn(64)])
    y = row(x)
    assert torch.allclose(y[:2], linear(x[:2]), atol=1e-2)
    assert torch.equal(y[0], row(x[:1])[0]) and torch.equal(y[1], row(x[1:2])[0])


def test_engine_batches_give_exactly_the_solo_tokens_on_the_corpus():
    engine = Engine.load(settings_from(model="base", encoder_backend="cpu", threads=1, batch_decode_size=8))
    try:
        audio = [to_16k(*c.read())[0] for c in clips()[:24]]
        solo = [engine.run([Job(a, Request(language="en"))])[0].token_ids for a in audio]
        batched = []
        for k in range(0, len(audio), 8):
            batched += [r.token_ids for r in engine.run([Job(a, Request(language="en")) for a in audio[k:k + 8]])]
    finally:
        engine.close()
    assert all(solo)
    assert batched == solo
