"""Audio stage: PCM of any rate, sample width and channel count -> 16 kHz mono float32."""

from __future__ import annotations

from math import gcd

import numpy as np
from scipy.signal import resample_poly

SAMPLE_RATE = 16000
SUPPORTED_WIDTHS = (1, 2, 3, 4)


class AudioFormatError(ValueError):
    """Audio the pipeline cannot interpret (bad width, rate, channels or length)."""


def check_format(rate: int, width: int, channels: int) -> None:
    if width not in SUPPORTED_WIDTHS:
        raise AudioFormatError(f"unsupported sample width {width} bytes (supported: 1, 2, 3, 4)")
    if not 1000 <= rate <= 384000:
        raise AudioFormatError(f"unsupported sample rate {rate} Hz (1000-384000)")
    if not 1 <= channels <= 32:
        raise AudioFormatError(f"unsupported channel count {channels} (1-32)")


def pcm_to_float(pcm: bytes, width: int, channels: int) -> np.ndarray:
    """Interleaved little-endian PCM -> float32 [frames, channels] in [-1, 1)."""
    frame = width * channels
    usable = len(pcm) - len(pcm) % frame  # a trailing partial frame carries no full sample
    raw = np.frombuffer(pcm, dtype=np.uint8, count=usable)
    if width == 1:  # 8-bit WAV PCM is unsigned
        x = (raw.astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        x = raw.view("<i2").astype(np.float32) / 32768.0
    elif width == 3:
        b = raw.reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = np.where(v & 0x800000, v - 0x1000000, v)
        x = v.astype(np.float32) / 8388608.0
    else:
        x = raw.view("<i4").astype(np.float32) / 2147483648.0
    return x.reshape(-1, channels)


def to_mono_16k(samples: np.ndarray, rate: int) -> np.ndarray:
    """float samples [frames] or [frames, channels] at ``rate`` -> float32 mono 16 kHz."""
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1)
    elif x.ndim != 1:
        raise AudioFormatError(f"audio must be 1-D or [frames, channels], got shape {x.shape}")
    if rate != SAMPLE_RATE and x.size:
        g = gcd(int(rate), SAMPLE_RATE)
        x = resample_poly(x, SAMPLE_RATE // g, int(rate) // g).astype(np.float32)
    return np.ascontiguousarray(x, dtype=np.float32)


def pcm_to_16k(pcm: bytes, rate: int, width: int, channels: int) -> np.ndarray:
    check_format(rate, width, channels)
    return to_mono_16k(pcm_to_float(pcm, width, channels), rate)
