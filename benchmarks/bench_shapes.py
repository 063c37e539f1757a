"""How every Whisper shape reads and agrees, on random weights (issue 12, item 3).

For each shape of ``tests/fake_ct2_whisper.py`` (written in CTranslate2's
format, stored as float16, int8 and so on in turn) it prints:

- ``ct2``: largest |difference| between CTranslate2's encoder states and ours
  over a full 30 s window of a corpus clip, and whether its greedy tokens are
  ours (text tokens; every special token suppressed on both sides);
- ``enc cos``: cosine of the short window's encoder states with the full
  window's over the speech, with the silence cache and without it;
- ``splice``: largest |logit difference| between the decoder's spliced
  cross-attention (speech + cached silence tail, unpooled) and the full
  window's function over the same states, and the pooled tail's KL against
  it next to no tail's.

Accuracy only, no timings: random weights say nothing about speed or WER.
Run: ``.venv/bin/python -m benchmarks.bench_shapes [--threads 1]``.
"""

from __future__ import annotations

import argparse
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch

from tests.fake_ct2_whisper import QUANTIZATIONS, SHAPES, write_model
from wyoming_amanuensis.config import settings_from
from wyoming_amanuensis.decoding import DecodeOptions, Decoder
from wyoming_amanuensis import scoring
from wyoming_amanuensis.encoders.base import EncoderOutput
from wyoming_amanuensis.mel import N_FRAMES_30S, log_mel
from wyoming_amanuensis.model.torch_net import TorchDecoderNet
from wyoming_amanuensis.pipeline import Engine


def logits(decoder: Decoder, cross, seq: list[int], n_prefix: int) -> np.ndarray:
    """Teacher-forced: the suppressed logits [steps, vocab] at every position after the
    prefix, through the decoder's network. Shared with the tests and the GPU check."""
    net = decoder.net
    out, _ = net.step([seq], net.new_cache(1), cross, list(range(n_prefix - 1, len(seq))))
    return out[0] + decoder.suppress


def exact_decoder(model, silence: torch.Tensor) -> Decoder:
    """A float torch decoder whose silence tail is not pooled (chunk 1): spliced onto it, a short
    window computes exactly the full window's function. Shared with the tests."""
    return Decoder(model, TorchDecoderNet(model.decoder, silence, model.alignment_heads, tail_chunk=1))


def kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """Mean KL(p || q) over the steps, in nats."""
    p, q = scoring.log_softmax(p_logits), scoring.log_softmax(q_logits)
    with np.errstate(invalid="ignore"):
        terms = np.where(np.isfinite(p), np.exp(p) * (p - q), 0.0)
    return float(terms.sum(-1).mean())


def one(name: str, directory: Path, audio: np.ndarray, threads: int) -> str:
    import ctranslate2

    shape = SHAPES[name]
    engine = Engine.load(settings_from(model=str(directory), encoder_backend="cpu", cpu_runtime="torch",
                                       int8_decoder=False, threads=threads))
    loaded = engine.models[name]
    tok, n_mels = loaded.model.tokenizer, shape.n_mels

    def encode(samples: np.ndarray, frames: int, context) -> torch.Tensor:
        return loaded.backend.encode(log_mel(samples, n_mels, n_frames=frames)[None], context).features

    full = encode(audio, N_FRAMES_30S, None)
    theirs = ctranslate2.models.Whisper(str(directory), device="cpu", compute_type="float32", intra_threads=threads)
    mel = log_mel(audio, n_mels, n_frames=N_FRAMES_30S)[None]
    their_states = np.array(theirs.encode(ctranslate2.StorageView.from_array(mel), to_cpu=True))
    prefix = tok.sot_sequence("en")
    their_tokens = theirs.generate(ctranslate2.StorageView.from_array(their_states), [prefix], beam_size=1,
                                   max_length=8, suppress_tokens=[-1, *range(tok.eot + 1, loaded.model.dims.n_vocab)]
                                   )[0].sequences_ids[0]
    exact = exact_decoder(loaded.model, encode(np.zeros(0, np.float32), N_FRAMES_30S, None))
    cross_full = exact.prepare(EncoderOutput(features=full, tail_cached=False, backend="cpu"))
    ours = logits(exact, cross_full, prefix + their_tokens, len(prefix)).argmax(-1)[:len(their_tokens)].tolist()

    frames = engine._window_frames(len(audio))
    short, bare = encode(audio, frames, loaded.context), encode(audio, frames, None)
    n = short.shape[1]

    def cos(a: torch.Tensor) -> float:
        return float(torch.nn.functional.cosine_similarity(a.flatten(), full[:, :n].flatten(), dim=0))

    silence = encode(np.zeros(0, np.float32), N_FRAMES_30S, None)
    spliced = exact.prepare(EncoderOutput(features=short, tail_cached=True, backend="cpu"))
    whole = exact.prepare(EncoderOutput(features=torch.cat((short, silence[:, n:]), 1), tail_cached=False,
                                        backend="cpu"))
    greedy = exact.decode(whole, DecodeOptions(language="en", max_tokens=12))
    seq = prefix + greedy.tokens + tok.encode(" turn on the lights")
    want, got = logits(exact, whole, seq, len(prefix)), logits(exact, spliced, seq, len(prefix))
    finite = np.isfinite(want)
    pooled = logits(loaded.decoder, loaded.decoder.prepare(
        EncoderOutput(features=short, tail_cached=True, backend="cpu")), seq, len(prefix))
    no_tail = logits(loaded.decoder, loaded.decoder.prepare(
        EncoderOutput(features=short, tail_cached=False, backend="cpu")), seq, len(prefix))
    return (f"| {name} | {shape.real} | {shape.width}, {shape.enc_layers}+{shape.dec_layers} | "
            f"{np.abs(their_states - full.numpy()).max():.1e}, tokens {'same' if ours == their_tokens else 'DIFFER'} | "
            f"{cos(short):.3f} / {cos(bare):.3f} | {float(np.abs(want[finite] - got[finite]).max()):.1e} | "
            f"{kl(want, pooled):.3f} / {kl(want, no_tail):.3f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from benchmarks.corpus import clips  # soundfile: not needed by the GPU check, which imports logits

    audio, _ = next(c for c in clips() if c.name == "s2p_gen_turn_on_the_lights").read()
    print("| shape | real dims | fake width, layers | ct2: encoder max diff, greedy | enc cos cache / none "
          "| splice max logit diff | KL pooled / no tail |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(SHAPES):
            directory = write_model(Path(tmp) / name, SHAPES[name], QUANTIZATIONS[i % len(QUANTIZATIONS)],
                                    seed=zlib.crc32(name.encode()))
            print(one(name, directory, audio, args.threads), flush=True)


if __name__ == "__main__":
    main()
