"""Decoder cost per token, alone and batched, and whether batching changes anyone's tokens.

    .venv/bin/python -m benchmarks.bench_batch --threads 1 [--sizes 1,2,4,8] [--rounds 3]

The engine (base, int8 decoder as served) transcribes the corpus in groups
of each size, as the scheduler hands them to it with ``--batch-decoding``.
The decode step of every group is timed (prefix + greedy tokens; the
per-request cross-attention projection is not in it) and divided by the
tokens the group produced (its requests' tokens + end-of-text each): the
decoder's cost per token of output. Each clip's tokens are compared with
its solo decode. Medians over ``--rounds`` rounds. One system, in-process:
faster-whisper has no batch of independent requests to compare with (its
wyoming server runs one request at a time); bench_load compares the served
throughput with wyoming-faster-whisper's.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.corpus import clips
from wyoming_amanuensis.audio import to_16k
from wyoming_amanuensis.config import settings_from
from wyoming_amanuensis.pipeline import Engine
from wyoming_amanuensis.request import Job, Request


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="base")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sizes", default="1,2,4,8")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    torch.set_num_threads(args.threads)
    engine = Engine.load(settings_from(model=args.model, encoder_backend="cpu", threads=args.threads,
                                       batch_decode_size=max(sizes)))
    decodes: list[tuple[float, int]] = []  # (ms, tokens incl. end-of-text) per decode call
    real = engine._decode

    def timed(works):
        t0 = time.perf_counter()
        real(works)
        decodes.append(((time.perf_counter() - t0) * 1000.0, sum(len(w.dec.tokens) + 1 for w in works)))

    engine._decode = timed
    corpus = clips()
    audio = [to_16k(*c.read())[0] for c in corpus]
    engine.run([Job(audio[0], Request(language="en"))])  # warm-up
    solo_tokens = None
    per_token: dict[int, list[float]] = {n: [] for n in sizes}
    differ: dict[int, int] = {n: 0 for n in sizes}
    for _ in range(args.rounds):
        for n in sizes:
            decodes.clear()
            results = []
            for k in range(0, len(audio), n):
                results += engine.run([Job(a, Request(language="en")) for a in audio[k:k + n]])
            tokens = [r.token_ids for r in results]
            if n == 1 and solo_tokens is None:
                solo_tokens = tokens
            if solo_tokens is not None:
                differ[n] = max(differ[n], sum(a != b for a, b in zip(tokens, solo_tokens)))
            per_token[n].append(sum(ms for ms, _ in decodes) / sum(t for _, t in decodes))
    base = statistics.median(per_token[sizes[0]])
    print(f"model {args.model}, {len(audio)} clips, threads {args.threads}, {args.rounds} rounds, language en")
    print(f"{'batch':>5} {'ms/token':>9} {'vs ' + str(sizes[0]):>7} {'clips whose tokens differ from solo':>36}")
    for n in sizes:
        med = statistics.median(per_token[n])
        print(f"{n:>5} {med:>9.2f} {med / base:>7.2f} {differ[n]:>36}")


if __name__ == "__main__":
    main()
