"""Timing step: ORT against our torch engine at 1 thread, in one process, interleaved call by call (the
machine's load hits both alike), medians after warm-up calls. The ORT side is the product set-up
(runtime.load_pipeline defaults); the plain-attention encoder is timed beside it.

  encoder     a 3 s command's short window (speech + 0.5 s margin, attending to the silence context) and
              a full 30 s window
  cross       the per-request cross-attention K/V projection (decoder.prepare), short window
  step        one decoder step (one new token per row) at batch 1 and 5 (beam 5) after 10, 100 and 200
              past tokens; the ORT graph concatenates past + new K/V, a copy that grows with the past
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .numerics import corpus_audio, torch_engine
from .runtime import OrtWhisper, load_pipeline, session, window_frames

CLIP = "s2p_gen_create_a_timer_for_5_minutes"  # 3.0 s command
SOT = [50258, 50259, 50359, 50363]  # start of transcript, en, transcribe, no timestamps


def bench(fns: dict, reps: int, warm: int) -> dict:
    for _ in range(warm):
        for f in fns.values():
            f()
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append((time.perf_counter() - t0) * 1000)
    return {k: round(statistics.median(v), 3) for k, v in times.items()}


@dataclass
class StepCase:
    """One decoder step (one new token per row) after ``past_len`` past tokens at ``batch`` rows, ready to call
    again and again: torch_step (our TextDecoder on a SelfCache reset to the same past each call) and
    ort_step (OrtWhisper.step on the past as arrays)."""
    past_len: int
    batch: int
    cache: object  # torch SelfCache holding the past (reordered to the batch as beam search does)
    past: list  # per layer (k, v) [batch, H, past_len, hd] from the ORT graph
    new: np.ndarray  # [batch, 1] the new tokens
    cross: list  # ORT cross K/V per layer, and its bias
    bias: np.ndarray
    torch_step: Callable
    ort_step: Callable


def step_cases(loaded, ow: OrtWhisper, enc, rng, past_lens=(10, 100, 200), batches=(1, 5)) -> Iterator[StepCase]:
    """The decoder step at batch 1 and 5 (beam 5) after 10, 100 and 200 past tokens (random text tokens after
    the start-of-transcript prefix) on ``enc``, a short window's encoder output (tail_cached)."""
    import torch
    decoder, net = loaded.decoder, loaded.decoder.net
    with torch.inference_mode():
        cross = decoder.prepare(enc)
    okv, obias = ow.cross_kv(enc.features.numpy())
    for past_len in past_lens:
        prompt = SOT + list(rng.integers(300, 20000, past_len - len(SOT)))
        for batch in batches:
            # torch: a cache holding the past, reordered to the batch as beam search does; cross K/V expanded
            with torch.inference_mode():
                cache = net.new_cache(1)
                net(torch.tensor([prompt]), cache, cross.kv)
                if batch > 1:
                    cache.reorder(torch.zeros(batch, dtype=torch.long))
                kv = cross.kv if batch == 1 else [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1), b)
                                                 for k, v, b in cross.kv]
            new = torch.full((batch, 1), 264, dtype=torch.long)

            def t_step(cache=cache, kv=kv, new=new, past_len=past_len):
                with torch.inference_mode():
                    cache.length = past_len  # back to the same past every call
                    h, _ = net(new, cache, kv)
                    return decoder._logits(h[:, -1])
            _, past = ow.step(np.array([prompt]), 0, ow.empty_past(1), okv, obias)
            past = [(np.repeat(k, batch, 0), np.repeat(v, batch, 0)) for k, v in past]
            new_np = new.numpy()
            yield StepCase(past_len, batch, cache, past, new_np, okv, obias, t_step,
                           lambda new_np=new_np, past_len=past_len, past=past: ow.step(new_np, past_len, past, okv, obias))


def run(work: Path, graphs: Path) -> dict:
    import onnxruntime
    import torch

    from wyoming_amanuensis.mel import log_mel
    loaded = torch_engine(work)
    backend, decoder, context = loaded.backend, loaded.decoder, loaded.context
    ow = load_pipeline(graphs)
    plain = OrtWhisper(session(graphs / "encoder.onnx"), None, None)
    plain.enc_tails = ow.enc_tails
    audio = corpus_audio([CLIP])[CLIP]
    out = {"clip": CLIP, "seconds": round(len(audio) / 16000, 2), "torch": torch.__version__,
           "onnxruntime": onnxruntime.__version__}

    def t_encode(mel):
        with torch.inference_mode():
            return backend.encode(mel, context)
    for label, frames, reps in (("short", window_frames(len(audio)), 20), ("full", 3000, 10)):
        mel = log_mel(audio, 80, n_frames=frames)[None]
        mel_np = mel.numpy()
        out[f"encoder {label} ({frames} frames)"] = bench(
            {"torch": lambda: t_encode(mel), "ort": lambda: ow.encode(mel_np), "ort plain": lambda: plain.encode(mel_np)},
            reps, 2)
        print(f"  encoder {label}: {out[f'encoder {label} ({frames} frames)']}", flush=True)

    enc = t_encode(log_mel(audio, 80, n_frames=window_frames(len(audio)))[None])
    enc.tail_cached = True
    feats = enc.features.numpy()
    out["cross K/V projection (short)"] = bench({"torch": lambda: decoder.prepare(enc),
                                                 "ort": lambda: ow.cross_kv(feats)}, 20, 3)
    for c in step_cases(loaded, ow, enc, np.random.default_rng(0)):
        key = f"decoder step, batch {c.batch}, {c.past_len} past"
        out[key] = bench({"torch": c.torch_step, "ort": c.ort_step}, 20, 3)
        print(f"  {key}: {out[key]}", flush=True)
    return out


def table(r: dict) -> str:
    lines = [f"onnxruntime {r['onnxruntime']} vs torch {r['torch']}, 1 thread, clip {r['clip']} ({r['seconds']} s), "
             "medians (ms)", "", "| stage | torch | ORT | ORT / torch | ORT plain encoder |", "|---|---|---|---|---|"]
    for k, v in r.items():
        if isinstance(v, dict):
            plain = f"{v['ort plain']:.1f}" if "ort plain" in v else ""
            lines.append(f"| {k} | {v['torch']:.2f} | {v['ort']:.2f} | {v['ort'] / v['torch']:.2f} | {plain} |")
    return "\n".join(lines)
