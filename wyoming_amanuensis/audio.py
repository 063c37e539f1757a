"""Audio stage: PCM or float samples of any rate, width and channel count -> 16 kHz mono float32.

The one conversion path of the project. The server feeds a
:class:`Converter` chunk by chunk as audio arrives (memory stays bounded by
the 16 kHz result, whatever the client's format); the ``transcribe`` command
and the benchmarks convert a whole file with :func:`to_16k`, which is the same
converter fed once. One resampler everywhere (soxr, chosen by measurement:
``benchmarks/bench_resample.py``), so a file gives the same samples, and the
same words, whichever way it comes in.

The converter times its own work: that time is the request's ``audio_ms``,
spent as the audio arrived rather than after ``audio-stop``.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator, Optional

import numpy as np
import soxr

SAMPLE_RATE = 16000
SUPPORTED_WIDTHS = (1, 2, 3, 4)
# soxr's "high quality" preset: passband flat to 91 % of Nyquist and 20-bit
# precision at a per-chunk cost far below a millisecond (bench_resample.py).
RESAMPLE_QUALITY = "HQ"


class AudioFormatError(ValueError):
    """Audio the pipeline cannot interpret (bad width, rate, channels or length)."""


def check_rate(rate: int) -> None:
    if not 1000 <= rate <= 384000:
        raise AudioFormatError(f"unsupported sample rate {rate} Hz (1000-384000)")


def check_format(rate: int, width: int, channels: int) -> None:
    if width not in SUPPORTED_WIDTHS:
        raise AudioFormatError(f"unsupported sample width {width} bytes (supported: 1, 2, 3, 4)")
    check_rate(rate)
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


def _mono(samples: np.ndarray) -> np.ndarray:
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 2:
        # averaged, not summed: summing clips as soon as the channels are loud together
        x = x.mean(axis=1, dtype=np.float32) if x.shape[1] > 1 else x[:, 0]
    elif x.ndim != 1:
        raise AudioFormatError(f"audio must be 1-D or [frames, channels], got shape {x.shape}")
    return x


class Converter:
    """Audio in any format, chunk by chunk -> 16 kHz mono float32.

    The resampler keeps its filter state between chunks, so chunked input
    gives a continuous signal; :meth:`flush` returns the samples still held
    in the filter at the end of an utterance. A change of input rate
    mid-stream flushes the old resampler and starts a new one.
    """

    def __init__(self) -> None:
        self.ms = 0.0  # time spent converting, for the request's audio_ms
        self._rate = SAMPLE_RATE
        self._stream: Optional[soxr.ResampleStream] = None

    def pcm(self, pcm: bytes, rate: int, width: int, channels: int) -> np.ndarray:
        """Interleaved PCM bytes -> 16 kHz samples (raises AudioFormatError)."""
        check_format(rate, width, channels)
        with self._timed():
            return self._resample(_mono(pcm_to_float(pcm, width, channels)), rate, last=False)

    def samples(self, samples: np.ndarray, rate: int, *, last: bool = False) -> np.ndarray:
        """Float samples [frames] or [frames, channels] -> 16 kHz samples; ``last`` flushes too."""
        check_rate(int(rate))
        with self._timed():
            return self._resample(_mono(samples), int(rate), last=last)

    def flush(self) -> np.ndarray:
        """The samples the resampler still holds (end of the utterance)."""
        with self._timed():
            return self._drain()

    @contextmanager
    def _timed(self) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.ms += (time.perf_counter() - t0) * 1000.0

    def _drain(self) -> np.ndarray:
        stream, self._stream = self._stream, None
        if stream is None:
            return np.zeros(0, dtype=np.float32)
        return stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)

    def _resample(self, x: np.ndarray, rate: int, *, last: bool) -> np.ndarray:
        head = np.zeros(0, dtype=np.float32)
        if rate != self._rate:
            head = self._drain()
            self._rate = rate
        if rate == SAMPLE_RATE:
            out = np.ascontiguousarray(x, dtype=np.float32)
        else:
            if self._stream is None:
                self._stream = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality=RESAMPLE_QUALITY)
            out = self._stream.resample_chunk(np.ascontiguousarray(x, dtype=np.float32), last=last)
            if last:
                self._stream = None
        return np.concatenate((head, out)) if head.size else out


def to_16k(samples: np.ndarray, rate: int) -> tuple[np.ndarray, float]:
    """A whole recording -> (16 kHz mono float32, ms the conversion took)."""
    converter = Converter()
    audio = converter.samples(samples, rate, last=True)
    return audio, converter.ms


def pcm_to_16k(pcm: bytes, rate: int, width: int, channels: int) -> tuple[np.ndarray, float]:
    """Whole interleaved PCM -> (16 kHz mono float32, ms the conversion took)."""
    converter = Converter()
    audio = converter.pcm(pcm, rate, width, channels)
    tail = converter.flush()
    return (np.concatenate((audio, tail)) if tail.size else audio), converter.ms
