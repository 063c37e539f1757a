"""benchmarks/bench_accuracy.py's measuring helpers: the dithered copies every system hears, the
bootstrap's unit (the clip, not the copy) and the names table's false insertions."""

from __future__ import annotations

import numpy as np

from benchmarks.bench_accuracy import DITHER, dithered, names_report, per_clip


def test_dithered_copies_are_the_same_for_every_system_and_copy_0_is_the_recording():
    audio = np.linspace(-0.5, 0.5, 16000, dtype=np.float32)
    assert dithered(audio, "/x/de_001.wav", 0) is audio
    a, b = dithered(audio, "/x/de_001.wav", 1), dithered(audio, "/elsewhere/de_001.wav", 1)
    assert a.dtype == np.float32 and np.array_equal(a, b)  # drawn from the clip's name and the seed
    assert not np.array_equal(a, dithered(audio, "/x/de_001.wav", 2))
    assert not np.array_equal(a, dithered(audio, "/x/de_002.wav", 1))
    noise = (a - audio).astype(np.float64)
    assert 0.8 * DITHER < noise.std() < 1.2 * DITHER  # one 16-bit step


def test_per_clip_sums_a_clips_copies():
    items = [{"clip": c, "ref": "turn on the light", "lang": "en"} for c in ("a", "b", "a", "b")]
    recs = [{"text": t} for t in ("turn on the light", "turn of the light", "turn on a light", "turn on the light")]
    errors, words = per_clip(items, recs)
    assert errors.tolist() == [1.0, 1.0] and words.tolist() == [8.0, 8.0]


def test_names_table_counts_the_names_biasing_put_there():
    items = [{"clip": "pl_007", "ref": "wyłącz Lampę główną", "lang": "pl", "corpus": "ml", "named": True},
             {"clip": "nl_006", "ref": "is Garagedeur gesloten", "lang": "nl", "corpus": "ml", "named": True},
             {"clip": "pl_001", "ref": "anuluj", "lang": "pl", "corpus": "ml", "named": False}]
    none = [{"text": "Wyłącz lampę główną.", "ms": 100.0}, {"text": "Is garage door gesloten.", "ms": 100.0},
            {"text": "Anuluj.", "ms": 100.0}]
    snap = [{"text": "Wyłącz Lampa główna.", "ms": 112.0, "names_ms": 4.0}, none[1], none[2]]
    scores = names_report({"items": items, "names": ("Lampa główna", "Garage", "Garagedeur"),
                           "systems": {"none": {"base": "none"}, "snap": {"base": "none"}},
                           "results": {"none": none, "snap": snap}})
    # "garage" was heard without any names: a false insertion of the metric, not of the biasing
    assert scores["none"]["false_insertions"] == 1 and scores["none"]["new_insertions"] == 0
    assert scores["snap"]["false_insertions"] == 2 and scores["snap"]["new_insertions"] == 1
    assert scores["none"]["exact_named"] == 50.0 and scores["snap"]["exact_named"] == 0.0
    assert scores["none"]["exact_other"] == 100.0
    assert round(scores["snap"]["cost_pct"], 1) == 4.0
