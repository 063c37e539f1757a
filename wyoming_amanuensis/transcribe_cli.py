"""``python -m wyoming_amanuensis transcribe FILE...``: the pipeline without a server."""

from __future__ import annotations

import json
import sys

import soundfile as sf

from .config import Settings
from .pipeline import Engine, TranscriptionError
from .request import Request


def run(settings: Settings, files: list[str], *, as_json: bool = False, repeat: int = 1) -> int:
    engine = Engine.load(settings)
    failed = 0
    for path in files:
        try:
            samples, rate = sf.read(path, dtype="float32", always_2d=True)
        except (OSError, RuntimeError, sf.LibsndfileError) as err:
            print(f"{path}: cannot read audio: {err}", file=sys.stderr)
            failed += 1
            continue
        try:
            for _ in range(max(1, repeat)):
                result = engine.transcribe(samples, rate, Request())
        except TranscriptionError as err:
            print(f"{path}: {err.code}: {err}", file=sys.stderr)
            failed += 1
            continue
        if as_json:
            print(json.dumps({"file": path, **result.as_dict()}, ensure_ascii=False))
        else:
            t = result.timings
            print(f"{path}: {result.text}")
            print(f"  language {result.language}, {result.audio_seconds:.2f} s audio, {result.tokens} tokens, "
                  f"encoder {result.encoder_backend}, model {result.model}")
            print(f"  ms: audio {t.audio_ms:.1f}, mel {t.mel_ms:.1f}, encoder {t.encoder_ms:.1f}, "
                  f"decoder {t.decoder_ms:.1f}, alignment {t.alignment_ms:.1f}, total {t.total_ms:.1f} "
                  f"(realtime factor {result.realtime_factor:.3f})")
            for w in result.words or []:
                print(f"    {w.start:6.2f}-{w.end:6.2f} {w.word}")
    engine.close()
    return 1 if failed else 0
