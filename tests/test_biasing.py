"""Names biasing (biasing.py): candidate readings, the margin rule, list bounds, the token trie,
and the tokenizer repair they rely on. Real tokenizer of the bundled base model."""

from __future__ import annotations

import time

import pytest

from wyoming_amanuensis import biasing
from wyoming_amanuensis.biasing import NameTrie, Reading, choose, clean_names, readings
from wyoming_amanuensis.model.loader import load_model
from wyoming_amanuensis.model.tokenizer import _restore_merges

HOME = ("Bed Light", "Kitchen", "Shopping List", "Mood Lighting", "Path Lights", "Apple TV", "Standing Light",
        "Party Time", "EcoBee", "Living Room", "Spotlights", "TV")


@pytest.fixture(scope="module")
def tokenizer():
    return load_model("base").tokenizer


def texts(text: str) -> list[str]:
    return [r.text for r in readings(text, HOME, 0.45)]


def test_misheard_names_become_candidate_readings():
    # the most alike first; less alike ones ("Standing Light") are left to the audio to reject
    assert texts("Turn bad light off.")[0] == "Turn Bed Light off."
    assert "Add apples to my Shopping List." in texts("Add apples to my chocolate list.")
    assert "Activate Mood Lighting" in texts("Activate Blue Lighting")
    assert texts("Turn on standing lights.")[0] == "Turn on Standing Light."
    assert texts("set bedlight to 50") == ["set Bed Light to 50"]  # run together
    assert texts("What is the Eco Bee temp?") == ["What is the EcoBee temp?"]  # split apart
    assert texts("Run Party Timescript.") == ["Run Party Time script."]  # ran into the next word


def test_ordinary_words_are_not_read_as_names():
    # a candidate needs a word of the name, or every word alike it: "apples to" is not "Apple TV"
    assert texts("Add apples to it") == []
    assert texts("Turn on the lamp") == []
    assert texts("Set lights to red.")[:1] != ["Spotlights to red."]  # "set lights" run together is 0.8 alike only
    # words already heard as a known name are not re-read as another ("TV" is one)
    assert texts("turn on the TV") == []
    assert texts("Turn on the living room light") == []
    # a shared word makes a candidate; the audio decides (tests/test_engine.py): "the lights"
    # stays "the lights" because the model finds "Path Lights" far less likely
    assert "Turn on Path Lights" in texts("Turn on the lights")


def test_a_reading_is_chosen_only_within_the_margin():
    a, b = Reading("x Bed Light", "Bed Light", 1, 3), Reading("x Mood Lighting", "Mood Lighting", 1, 3)
    assert choose([a, b], [-9.0, -3.0], margin=8.0) is b
    assert choose([a, b], [-9.0, -8.5], margin=8.0) is None
    assert choose([], [], margin=8.0) is None


def test_off_and_empty():
    assert readings("Turn bad light off.", (), 0.45) == []
    assert readings("Turn bad light off.", HOME, 0.0) == []
    assert readings("", HOME, 0.45) == []


def test_clean_names_is_bounded_linear_and_keeps_the_first_spelling():
    assert clean_names(["  Bed   Light ", "bed light", "", "Kitchen", "x" * 500, "a b c d e f g"]) == ("Bed Light", "Kitchen")
    many = [f"Name {i}" for i in range(48_000)]
    t0 = time.perf_counter()
    cleaned = clean_names(many)
    assert time.perf_counter() - t0 < 0.5
    assert len(cleaned) == biasing.MAX_NAMES and cleaned[0] == "Name 0"


def test_readings_with_hundreds_of_names_stay_cheap():
    home = HOME + tuple(f"Device Number {i}" for i in range(600))
    t0 = time.perf_counter()
    for _ in range(10):
        readings("Turn bad light off in the kitchen and set the brightness to 50 percent.", home, 0.45)
    # a generous bound: it is ~1-3 ms per transcript; the point is no blow-up with the list
    assert (time.perf_counter() - t0) / 10 < 0.25


def test_trie_continues_a_name_begun(tokenizer):
    trie = NameTrie(tokenizer, ("Bed Light", "Mood Lighting"))
    bed = tokenizer.encode(" Bed")
    light = tokenizer.encode(" Light")
    assert bed[0] in trie.starts
    assert set(light[:1]) <= trie.continuations(tokenizer.encode(" Turn") + bed)
    assert trie.continuations(tokenizer.encode(" Turn the")) == set()


def test_tokenizer_restores_the_merge_the_bundled_file_lacks(tokenizer):
    # the bundled base tokenizer.json lacks GPT-2's first merge ("Ġ t"); without it " timer"
    # encodes as " " + "timer", tokens Whisper never produces there
    assert len(tokenizer.encode(" timer")) == 1
    assert tokenizer.encode(" Turn on the TV") == tokenizer.encode(" Turn") + tokenizer.encode(" on the TV")
    spec = {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, **{f"<{i}>": i for i in range(2, 256)},
                                               "ab": 256, "abb": 257, "<|endoftext|>": 258},
                      "merges": ["ab b"]}}
    _restore_merges(spec)
    assert spec["model"]["merges"] == ["a b", "ab b"]


def test_a_name_declined_or_in_the_plural_needs_the_model_to_prefer_its_own_form():
    # Polish says the light "Lampa główna" as "lampę główną" after "włącz": the words heard are
    # right, and the name's own form replaces them only about as likely as they are
    (polish,) = readings("Włącz lampę główną.", ("Lampa główna",), 0.45, language="pl")
    assert polish.text == "Włącz Lampa główna." and polish.declined
    assert choose([polish], [-5.7], margin=8.0) is None  # what the model scored on corpus_ml's pl_007
    assert choose([polish], [-0.5], margin=8.0) is polish
    assert readings("Включи ночную лампу.", ("Ночная лампа",), 0.45, language="ru")[0].declined
    # English does not decline names: "lights" for "Light" is a final "s" misheard as often as said
    assert not readings("Turn on standing lights.", ("Standing Light",), 0.45, language="en")[0].declined
    # a mishearing is not a declension: the stems differ, or an ending is longer than 3 letters
    assert not readings("Turn bad light off.", HOME, 0.45, language="de")[0].declined
    assert not readings("Zet lamperen aan.", ("Lampje",), 0.45, language="nl")[0].declined
    assert not readings("accendi la lampoda", ("Lampada",), 0.45, language="it")[0].declined  # a vowel misheard
    # and the best reading decides: a declined one refused is not passed over for a worse one
    bed = Reading("x Bed Light", "Bed Light", 1, 3)
    assert choose([polish, bed], [-2.0, -3.0], margin=8.0) is None


def test_a_name_much_shorter_than_the_words_does_not_replace_them():
    # "Garage-Tour" (corpus_ml's de_006, "Garagentor") is not the name "Garage" with a word dropped
    assert [r.name for r in readings("Öffne das Garage-Tour.", ("Garage", "Garagentor"), 0.45)] == ["Garagentor"]


def test_a_reading_is_scored_in_the_case_the_words_were_heard_in():
    # Whisper scores "Staande Lamp" mid-sentence 8 nats below "staande lamp" (corpus_ml's nl_009)
    (r,) = readings("Maak helderheid van staan de lamp naar 20 procent.", ("Staande Lamp",), 0.45, language="nl")
    assert r.text == "Maak helderheid van Staande Lamp naar 20 procent."  # written in the name's spelling
    assert r.scored == "Maak helderheid van staande lamp naar 20 procent."
    assert readings("Turn bad light off.", HOME, 0.45)[0].scored == "Turn bed light off."
    assert readings("Bad light off.", ("Bed Light",), 0.45)[0].scored == "Bed Light off."  # heard capitalised
    assert Reading("x Bed Light", "Bed Light", 1, 3).scored == "x Bed Light"
