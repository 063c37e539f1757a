"""Log-mel stage: Whisper's 80-bin front end with the filterbank and window built once."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .audio import SAMPLE_RATE

N_FFT = 400
HOP = 160
FRAMES_PER_SECOND = SAMPLE_RATE // HOP  # 100
N_SAMPLES_30S = 30 * SAMPLE_RATE
N_FRAMES_30S = N_SAMPLES_30S // HOP  # 3000


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney mel scale (linear below 1 kHz, log above), as librosa's default."""
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    mel = f / f_sp
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, mel)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    f = f_sp * m
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f)


@lru_cache(maxsize=4)
def mel_filters(n_mels: int = 80) -> np.ndarray:
    """Slaney-normalised triangular filterbank [n_mels, N_FFT//2 + 1], float32 (read-only: shared)."""
    fft_freqs = np.linspace(0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    mel_pts = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(SAMPLE_RATE / 2), n_mels + 2))
    fdiff = np.diff(mel_pts)
    ramps = mel_pts[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_pts[2:n_mels + 2] - mel_pts[:n_mels]))[:, None]
    weights = weights.astype(np.float32)
    weights.flags.writeable = False
    return weights


@lru_cache(maxsize=1)
def _window() -> np.ndarray:
    """Periodic Hann window, as torch.hann_window."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)


def log_mel(audio: np.ndarray, n_mels: int = 80, n_frames: int | None = None) -> np.ndarray:
    """16 kHz mono float32 -> normalised log-mel [n_mels, frames], float32 numpy.

    Whisper's front end (openai-whisper's torch.stft, centred, reflect-padded) on numpy, so
    that the CPU runtime never needs torch. The audio is zero-padded (or cut) to ``n_frames``
    * 160 samples first when given, exactly as Whisper pads to 30 s; clamping to (max - 8)
    then only ever touches padding, so a shorter window yields the same leading frames.
    """
    x = np.asarray(audio, dtype=np.float32).reshape(-1)
    if n_frames is not None:
        want = n_frames * HOP
        x = x[:want] if x.shape[0] >= want else np.pad(x, (0, want - x.shape[0]))
    x = np.pad(x, (N_FFT // 2, N_FFT // 2), mode="reflect")
    n = 1 + (x.shape[0] - N_FFT) // HOP
    frames = np.lib.stride_tricks.as_strided(x, (n, N_FFT), (x.strides[0] * HOP, x.strides[0]))
    spec = np.fft.rfft(frames * _window(), axis=1)[:-1]  # Whisper drops the last frame
    power = (spec.real ** 2 + spec.imag ** 2).astype(np.float32)
    log_spec = np.log10(np.maximum(mel_filters(n_mels) @ power.T, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)
