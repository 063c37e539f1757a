"""Our beam search against the reference one: CTranslate2's own Whisper decoder (what
faster-whisper runs), fed the same encoder output, on real corpus_ml speech.

Both decoders in float32 over the full 30 s window, so only the search can differ. The two
Spanish commands are ones where the older ranking (end-of-text counted in the length, and an
end-of-text ranked below the beam width finishing a reading) chose another reading than
CTranslate2 (found by scanning corpus_ml; benchmarks/RESULTS.md, session 5)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.bench_engine import materialise_model
from benchmarks.corpus import CORPUS_DIR, clips
from wyoming_amanuensis.audio import to_16k
from wyoming_amanuensis.config import settings_from
from wyoming_amanuensis.decoding import DecodeOptions
from wyoming_amanuensis.mel import N_FRAMES_30S, log_mel
from wyoming_amanuensis.pipeline import Engine

CLIPS = ("es_002", "es_013")


@pytest.fixture(scope="module")
def decoders(tmp_path_factory):
    ctranslate2 = pytest.importorskip("ctranslate2")  # in the test extra; skipped only outside it
    theirs = ctranslate2.models.Whisper(str(materialise_model("base", tmp_path_factory.mktemp("base"))),
                                        device="cpu", compute_type="float32", intra_threads=1)
    ours = Engine.load(settings_from(model="base", encoder_backend="cpu", threads=1, fast_decoder=False,
                                     int8_decoder=False, cache_dir="none"))
    yield ctranslate2, theirs, ours.models["base"]
    ours.close()


@pytest.mark.parametrize("name", CLIPS)
def test_beam_search_reads_what_ctranslate2_reads(decoders, name):
    ctranslate2, theirs, loaded = decoders
    clip = next(c for c in clips(CORPUS_DIR.parent / "corpus_ml") if c.name == name)
    tok, decoder = loaded.model.tokenizer, loaded.decoder
    mel = log_mel(to_16k(*clip.read())[0], loaded.model.dims.n_mels, n_frames=N_FRAMES_30S)[None]
    enc = loaded.backend.encode(mel, None)
    suppress = sorted(set(loaded.model.suppress_ids) | set(range(tok.eot + 1, loaded.model.dims.n_vocab)))
    features = ctranslate2.StorageView.from_array(np.ascontiguousarray(np.asarray(enc.features)))
    reference = theirs.generate(features, [tok.sot_sequence("es")], beam_size=5, suppress_tokens=suppress,
                                suppress_blank=True)[0].sequences_ids[0]
    cross = decoder.prepare(enc)
    options = DecodeOptions(language="es", beam_size=5, max_tokens=200)
    assert decoder.beam_like_ctranslate2  # the default
    assert decoder.decode(cross, options).tokens == list(reference), tok.decode(list(reference))
    decoder.beam_like_ctranslate2 = False  # the older rule reads these commands otherwise
    try:
        assert decoder.decode(cross, options).tokens != list(reference)
    finally:
        decoder.beam_like_ctranslate2 = True
