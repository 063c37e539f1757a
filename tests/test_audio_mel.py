"""Audio and log-mel stages."""

from __future__ import annotations

import numpy as np
import pytest

from wyoming_amanuensis.audio import AudioFormatError, Converter, pcm_to_16k, pcm_to_float, to_16k
from wyoming_amanuensis.mel import N_FRAMES_30S, log_mel, mel_filters


def sine(freq: float, rate: int, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def encode(x: np.ndarray, width: int) -> bytes:
    if width == 1:
        return (np.clip(x * 128 + 128, 0, 255)).astype(np.uint8).tobytes()
    if width == 3:
        v = (x * (2 ** 23 - 1)).astype("<i4")
        return np.stack([v & 0xFF, (v >> 8) & 0xFF, (v >> 16) & 0xFF], axis=-1).astype(np.uint8).tobytes()
    dtype = {2: "<i2", 4: "<i4"}[width]
    return (x * (2 ** (8 * width - 1) - 1)).astype(dtype).tobytes()


@pytest.mark.parametrize("width", [1, 2, 3, 4])
@pytest.mark.parametrize("rate, channels", [(16000, 1), (44100, 2), (8000, 1), (48000, 6)])
def test_any_pcm_format_becomes_16k_mono(width, rate, channels):
    x = sine(440, rate)
    interleaved = np.repeat(x[:, None], channels, axis=1).reshape(-1)
    out, ms = pcm_to_16k(encode(interleaved, width), rate, width, channels)
    assert ms > 0
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(len(out) - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) * 16000 / len(out) - 440) < 2
    assert 0.45 < np.abs(out[100:-100]).max() < 0.55


@pytest.mark.parametrize("rate, width, channels", [(16000, 2, 1), (44100, 2, 2), (48000, 4, 1), (8000, 1, 1),
                                                   (22050, 3, 2), (16000, 2, 6)])
def test_chunk_by_chunk_equals_whole(rate, width, channels):
    """The server converts chunk by chunk, the transcribe command whole: the same samples."""
    x = sine(440, rate) + sine(3000, rate, amp=0.2)
    raw = encode(np.repeat(x[:, None], channels, axis=1).reshape(-1), width)
    whole, _ = pcm_to_16k(raw, rate, width, channels)
    converter = Converter()
    step = 1024 * width * channels
    parts = [converter.pcm(raw[i:i + step], rate, width, channels) for i in range(0, len(raw), step)]
    chunked = np.concatenate(parts + [converter.flush()])
    assert chunked.shape == whole.shape and abs(len(whole) - 16000) <= 1
    assert np.abs(chunked - whole).max() < 1e-4
    floats, _ = to_16k(pcm_to_float(raw, width, channels), rate)
    assert np.array_equal(floats, whole)


def test_a_rate_change_mid_stream_keeps_every_sample():
    converter = Converter()
    first = converter.pcm(encode(sine(440, 44100), 2), 44100, 2, 1)
    second = converter.pcm(encode(sine(440, 16000), 2), 16000, 2, 1)
    assert len(first) + len(second) + len(converter.flush()) == pytest.approx(32000, abs=2)


def test_signed_24_bit_negative_values():
    out = pcm_to_float(encode(np.array([-0.5, 0.25], dtype=np.float32), 3), 3, 1)
    assert out[:, 0] == pytest.approx([-0.5, 0.25], abs=1e-6)


def test_partial_trailing_frame_is_dropped():
    assert pcm_to_float(b"\x00\x01" * 3 + b"\x07", 2, 2).shape == (1, 2)


@pytest.mark.parametrize("rate, width, channels, message", [
    (16000, 5, 1, "sample width 5"), (16000, 0, 1, "sample width 0"), (10, 2, 1, "sample rate"), (16000, 2, 0, "channel"),
])
def test_bad_formats_are_refused(rate, width, channels, message):
    with pytest.raises(AudioFormatError, match=message):
        pcm_to_16k(b"\0" * 64, rate, width, channels)


def test_filterbank_is_built_once_and_slaney_shaped():
    fb = mel_filters(80)
    assert fb is mel_filters(80)
    assert fb.shape == (80, 201)
    peaks = fb.argmax(axis=1)
    assert bool((peaks[1:] >= peaks[:-1]).all())  # filters climb in frequency
    # Slaney normalisation: every triangle has unit area in Hz (FFT bins are 40 Hz apart)
    areas = fb.sum(axis=1) * 40.0
    assert np.allclose(areas, 1.0, atol=0.1)  # sampled on a coarse 40 Hz grid


def test_log_mel_shape_range_and_tone_position():
    x = sine(1000, 16000, 2.0)
    m = log_mel(x)
    assert m.shape == (80, 200)
    assert float(m.max() - m.min()) <= 2.0 + 1e-6  # clamped to max - 8 in log10, then / 4
    # 1 kHz sits at mel bin ~ 1000 / (8000 / 80 slaney-ish) -> the loudest bin is in the lower third
    loud = int(m[:, 100].argmax())
    assert 20 <= loud <= 30


def test_padding_to_30s_keeps_leading_frames():
    x = sine(300, 16000, 1.0) + sine(2000, 16000, 1.0)
    short = log_mel(x, n_frames=150)
    full = log_mel(x, n_frames=N_FRAMES_30S)
    assert full.shape == (80, 3000)
    assert np.allclose(short[:, :95], full[:, :95], atol=1e-5)
