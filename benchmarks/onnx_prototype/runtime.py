"""The prototype's torch-free runtime pieces: audio in, numpy log-mel, ORT sessions, the silence
context/tail (pooled in RAM, exact positions pread from disk) and a greedy decoding loop.

Nothing here may import torch: the floor step measures a process built from this module alone.
"""

from __future__ import annotations

import json
import math
import os
import wave
from pathlib import Path

import numpy as np

from wyoming_amanuensis.audio import SAMPLE_RATE, pcm_to_16k
from wyoming_amanuensis.config import settings_from

N_FFT, HOP = 400, 160  # Whisper's STFT (wyoming_amanuensis.mel, which imports torch)
N_CTX_AUDIO = 1500  # encoder positions of a full 30 s window
SETTINGS = settings_from()  # the server's defaults: fast decoder, silence_chunk 50, decoder_tail_chunk 10


def read_audio(path) -> np.ndarray:
    """A corpus wav as the server converts Wyoming PCM: 16 kHz mono float32. (The stdlib wave module, not
    soundfile as benchmarks.corpus reads: the server itself never imports soundfile, and the floor step
    measures what a process imports.)"""
    with wave.open(str(path), "rb") as w:
        return pcm_to_16k(w.readframes(w.getnframes()), w.getframerate(), w.getsampwidth(), w.getnchannels())[0]


def window_frames(n_samples: int) -> int:
    """The mel frames the engine encodes for this much audio: twin of Engine._window_frames with the default
    settings (that method needs the engine's torch modules imported): the speech plus the splice margin,
    an even count (conv2 halves it), at most the 30 s window."""
    frames = int(math.ceil((n_samples / SAMPLE_RATE + SETTINGS.splice_margin_s) * (SAMPLE_RATE // HOP)))
    return max(2, min(N_CTX_AUDIO * 2, frames + frames % 2))


def log_mel_np(audio: np.ndarray, n_frames: int, filters: np.ndarray) -> np.ndarray:
    """numpy twin of wyoming_amanuensis.mel.log_mel (torch.stft, center=True, reflect pad): [n_mels, n_frames].
    ``filters`` is mel.mel_filters(n_mels), saved by the build step (graphs.build)."""
    want = n_frames * HOP
    x = audio[:want] if audio.shape[0] >= want else np.pad(audio, (0, want - audio.shape[0]))
    x = np.pad(x.astype(np.float32), (N_FFT // 2, N_FFT // 2), mode="reflect")
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)  # periodic Hann
    n = 1 + (x.shape[0] - N_FFT) // HOP
    frames = np.lib.stride_tricks.as_strided(x, (n, N_FFT), (x.strides[0] * HOP, x.strides[0]))
    spec = np.fft.rfft(frames * window, axis=1)[:-1]  # log_mel drops the last frame
    power = (spec.real ** 2 + spec.imag ** 2).astype(np.float32)
    log_spec = np.log10(np.maximum(filters @ power.T, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


class NpyRows:
    """A [1, H, N, hd] float32 .npy file read by position range with os.pread: rows[:, :, a:b].
    Memory-mapping instead made whole large folios resident on this kernel (2.6 of 3 MB per array
    for a 4-position read), which is what a short request needs."""

    def __init__(self, path):
        with open(path, "rb") as f:
            np.lib.format.read_magic(f)
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            self.offset = f.tell()
        assert dtype == np.float32 and not fortran and shape[0] == 1
        self.shape = shape
        self.fd = os.open(path, os.O_RDONLY)

    def __getitem__(self, idx):
        _, H, N, hd = self.shape
        a, b, _ = idx[2].indices(N)
        out = np.empty((1, H, max(0, b - a), hd), np.float32)
        for h in range(H if b > a else 0):
            raw = os.pread(self.fd, (b - a) * hd * 4, self.offset + (h * N + a) * hd * 4)
            out[0, h] = np.frombuffer(raw, np.float32).reshape(b - a, hd)
        return out


class PooledTail:
    """numpy twin of wyoming_amanuensis.model.silence.PooledTail over k, v [1, H, 1500, hd]: the silence
    after position p as the exact positions up to the next chunk boundary, then one mean per chunk
    (attended with a log(count) bias, so a chunk weighs as its positions would)."""

    def __init__(self, k: np.ndarray, v: np.ndarray, chunk: int):
        n, c = k.shape[2], max(1, int(chunk))
        m = -(-n // c)
        pad = m * c - n
        counts = np.full((m,), float(c), np.float32)
        counts[-1] = c - pad

        def pool(x):
            x = np.pad(x, ((0, 0), (0, 0), (0, pad), (0, 0))).reshape(*x.shape[:2], m, c, x.shape[-1]).sum(3)
            return np.ascontiguousarray(x / counts[:, None])
        self.k, self.v, self.chunk = k.astype(np.float32, copy=False), v.astype(np.float32, copy=False), c
        self.pooled_k, self.pooled_v, self.log_counts = pool(self.k), pool(self.v), np.log(counts)

    def save(self, prefix: Path):
        for name in ("k", "v", "pooled_k", "pooled_v", "log_counts"):
            np.save(f"{prefix}_{name}.npy", getattr(self, name))

    @classmethod
    def load(cls, prefix: Path, chunk: int, pread: bool = True):
        """The pooled arrays read whole; the exact ones read whole too, or (pread) left on disk."""
        self = cls.__new__(cls)
        self.chunk = chunk
        exact = NpyRows if pread else np.load
        self.k, self.v = exact(f"{prefix}_k.npy"), exact(f"{prefix}_v.npy")
        for name in ("pooled_k", "pooled_v", "log_counts"):
            setattr(self, name, np.load(f"{prefix}_{name}.npy"))
        return self

    def from_position(self, p: int):
        j = -(-p // self.chunk)
        exact = j * self.chunk - p
        k = np.concatenate((self.k[:, :, p:p + exact], self.pooled_k[:, :, j:]), axis=2)
        v = np.concatenate((self.v[:, :, p:p + exact], self.pooled_v[:, :, j:]), axis=2)
        bias = np.concatenate((np.zeros(exact, np.float32), self.log_counts[j:])).astype(np.float32)
        return k, v, bias


def session(path: Path | bytes, threads: int = 1, pattern: bool = True, arena: bool = True, prepack: bool = True):
    """One CPU session, sequential, ``threads`` intra-op threads. pattern: ORT's memory pattern (one
    planned block per input shape); arena: its CPU arena; prepack: weights repacked for its kernels
    (prepacked weights are copies; without it they stay in the mapped external-data file)."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.enable_mem_pattern = pattern
    so.enable_cpu_mem_arena = arena
    if not prepack:
        so.add_session_config_entry("session.disable_prepacking", "1")
    return ort.InferenceSession(path if isinstance(path, bytes) else str(path), so, providers=["CPUExecutionProvider"])


class OrtWhisper:
    """Encoder, cross-K/V and decoder-step sessions plus the silence context (the short window's encoder
    layers attend to it) and the decoder's silence tail (cross-attention after the short window)."""

    def __init__(self, enc, cross, dec, n_layers=6, n_heads=8, head_dim=64, dec_layers=None):
        """Base's dimensions unless told (graphs.dims: n_layers the encoder's, dec_layers the decoder's)."""
        self.enc, self.cross, self.dec = enc, cross, dec
        self.L, self.H, self.hd = n_layers, n_heads, head_dim
        self.Ld = n_layers if dec_layers is None else dec_layers
        self.enc_tails = self.dec_tails = None  # per layer PooledTail

    def set_silence(self, enc_kv, tail_kv):
        """From per-layer (k, v) arrays of the all-silent window: encoder self-attention, cross projection."""
        self.enc_tails = [PooledTail(k, v, SETTINGS.silence_chunk) for k, v in enc_kv]
        self.dec_tails = [PooledTail(k, v, SETTINGS.decoder_tail_chunk) for k, v in tail_kv]

    def save_silence(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        for i, e in enumerate(self.enc_tails):
            e.save(directory / f"enc{i}")
        for i, t in enumerate(self.dec_tails):
            t.save(directory / f"tail{i}")

    def load_silence(self, directory: Path, pread: bool = True):
        """The files graphs.prepare_silence wrote, pooled as the server's defaults pool them."""
        self.enc_tails = [PooledTail.load(directory / f"enc{i}", SETTINGS.silence_chunk, pread) for i in range(self.L)]
        self.dec_tails = [PooledTail.load(directory / f"tail{i}", SETTINGS.decoder_tail_chunk, pread)
                          for i in range(self.Ld)]

    def encode(self, mel: np.ndarray, outputs=("features",)):
        """mel [1, n_mels, T] -> features [1, T/2, d]; a short window attends to the silence context too.
        outputs=None: all the graph's outputs (the recording encoder's K/V too)."""
        p = mel.shape[2] // 2
        if p < N_CTX_AUDIO and self.enc_tails is not None:
            parts = [t.from_position(p) for t in self.enc_tails]
            ek, ev, eb = np.stack([k for k, _, _ in parts]), np.stack([v for _, v, _ in parts]), parts[0][2]
        else:
            ek = ev = np.zeros((self.L, 1, self.H, 0, self.hd), np.float32)
            eb = np.zeros(0, np.float32)
        out = self.enc.run(outputs and list(outputs), {"mel": mel, "extra_k": ek, "extra_v": ev, "extra_bias": eb})
        return out[0] if outputs else out

    def cross_kv(self, feats: np.ndarray):
        """Per layer (k, v) [1, H, S, hd] and the bias [S]: the window's own positions, then (after a short
        window) the pooled silence tail."""
        outs = self.cross.run(None, {"features": feats})
        p = feats.shape[1]
        kv, bias = [], np.zeros(p, np.float32)
        for i in range(self.Ld):
            k, v = outs[2 * i], outs[2 * i + 1]
            if p < N_CTX_AUDIO and self.dec_tails is not None:
                tk, tv, tb = self.dec_tails[i].from_position(p)
                k, v = np.concatenate((k, tk), axis=2), np.concatenate((v, tv), axis=2)
                bias = np.concatenate((np.zeros(p, np.float32), tb))
            kv.append((np.ascontiguousarray(k), np.ascontiguousarray(v)))
        return kv, bias

    def empty_past(self, batch: int):
        z = np.zeros((batch, self.H, 0, self.hd), np.float32)
        return [(z, z) for _ in range(self.Ld)]

    def step(self, tokens: np.ndarray, offset: int, past, cross, bias):
        """tokens [B, n] after ``offset`` past ones -> last position's logits [B, V], the new past."""
        feeds = {"tokens": tokens.astype(np.int64), "offset": np.array([offset], np.int64), "cross_bias": bias}
        for i in range(self.Ld):
            feeds[f"past_k{i}"], feeds[f"past_v{i}"] = past[i]
            feeds[f"cross_k{i}"], feeds[f"cross_v{i}"] = cross[i]
        outs = self.dec.run(None, feeds)
        return outs[0], [(outs[1 + 2 * i], outs[2 + 2 * i]) for i in range(self.Ld)]


def suppress_masks(eot: int, config: dict, n_vocab: int):
    """(first step's, later steps') additive logit masks, as decoding.Decoder builds them from config.json."""
    mask = np.zeros(n_vocab, np.float32)
    mask[eot + 1:] = -np.inf
    mask[[i for i in config.get("suppress_ids") or [] if 0 <= i < n_vocab]] = -np.inf
    begin = mask.copy()
    begin[[i for i in config.get("suppress_ids_begin") or [eot] if 0 <= i < n_vocab]] = -np.inf
    return begin, mask


def greedy(ow: OrtWhisper, cross, bias, prefix: list[int], eot: int, masks, max_tokens: int = 40) -> list[int]:
    """Greedy decoding on the step graph (no loop rule, timestamps or language detection: enough for
    a short command with the language given)."""
    first, later = masks
    logits, past = ow.step(np.array([prefix]), 0, ow.empty_past(1), cross, bias)
    offset, tokens, mask = len(prefix), [], first
    for _ in range(max_tokens):
        nxt = int(np.argmax(logits[0] + mask))
        mask = later
        if nxt == eot:
            break
        tokens.append(nxt)
        logits, past = ow.step(np.array([[nxt]]), offset, past, cross, bias)
        offset += 1
    return tokens


def load_pipeline(graphs: Path, *, flash=True, pattern=False, arena=True, prepack=True, enc_prepack=True,
                  pread=True, threads=1) -> OrtWhisper:
    """The ORT pipeline over WORK/graphs (graphs.build). The defaults are the product set-up: flash encoder,
    memory pattern off (it keeps one planned block per input shape, and every request has its own
    window length), weights prepacked, the silence's exact positions pread per request."""
    opts = dict(threads=threads, pattern=pattern, arena=arena)
    built = json.loads((graphs / "built.json").read_text()) if (graphs / "built.json").is_file() else {}
    D = built.get("dims") or dict(L_enc=6, H_enc=8, d=512, L_dec=6)  # a build from before dims were recorded: base
    ow = OrtWhisper(session(graphs / ("encoder_flash.onnx" if flash else "encoder.onnx"),
                            prepack=prepack and enc_prepack, **opts),
                    session(graphs / "cross.onnx", prepack=prepack, **opts),
                    session(graphs / "decoder.onnx", prepack=prepack, **opts),
                    n_layers=D["L_enc"], n_heads=D["H_enc"], head_dim=D["d"] // D["H_enc"], dec_layers=D["L_dec"])
    ow.load_silence(graphs / "silence", pread=pread)
    return ow
