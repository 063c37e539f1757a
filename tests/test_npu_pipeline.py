"""The whole pipeline through the NPU backend (fake pyxrt) against the CPU backend, on real speech.

The default run covers ten representative corpus clips with the default
model (base); ``AMANUENSIS_NPU_FULL_CORPUS=1`` runs every clip (slow: the
fake executes every kernel launch as a numpy/torch GEMM).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fake_pyxrt  # noqa: E402
from benchmarks.corpus import CORPUS_DIR  # noqa: E402

from wyoming_amanuensis.config import settings_from  # noqa: E402
from wyoming_amanuensis.encoders import npu_device  # noqa: E402
from wyoming_amanuensis.model import modules  # noqa: E402
from wyoming_amanuensis.pipeline import Engine  # noqa: E402

SUBSET = [  # long speech, 44.1 kHz stereo, real recordings and TTS, numbers, short and long commands
    "jfk", "lamp_44k_stereo", "living_room_light", "s2p_gen_create_timer_for_6_hours_and_20_minutes",
    "s2p_gen_set_the_brightness_of_the_kitchen_to_25_percent", "s2p_gen_what_s_the_weather_in_new_york",
    "s2p_rec_add_apples_to_my_shopping_list", "s2p_rec_set_a_timer_for_30_seconds", "s2p_rec_next",
    "s2p_rec_what_s_the_temperature_of_the_ecobee",
]
FULL = os.environ.get("AMANUENSIS_NPU_FULL_CORPUS") == "1"


def read(name: str):
    samples, rate = sf.read(str(CORPUS_DIR / f"{name}.wav"), dtype="float32")
    return samples, rate


@pytest.fixture(scope="module")
def fake_npu(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("npu")
    hw = fake_pyxrt.FakeNpu()
    (tmp / "accel").mkdir()
    (tmp / "accel" / "accel0").touch()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(npu_device, "DEVICE_NODE_DIR", tmp / "accel")
        mp.setitem(sys.modules, "pyxrt", hw.module)
        hw.kernel_dir = fake_pyxrt.make_kernel_dir(tmp / "kernels")
        yield hw
    assert hw.violations == []


@pytest.fixture(scope="module")
def engines(fake_npu, tmp_path_factory):
    # Float decoder on both sides: the int8 decoder (the default) quantises its activations dynamically and
    # turns encoder differences of ~1e-3 (bf16x3 NPU vs float32 CPU) into different tokens on knife-edge clips
    # (8 of 73 corpus clips with base); with the float decoder every clip matches. This test is about the encoder.
    cpu = Engine.load(settings_from(encoder_backend="cpu", int8_decoder=False))
    # The fake device's silence encoding stays out of the user's cache, where a real NPU would read it.
    npu = Engine.load(settings_from(encoder_backend="npu", npu_kernel_dir=str(fake_npu.kernel_dir), int8_decoder=False,
                                    cache_dir=str(tmp_path_factory.mktemp("npu-cache"))))
    assert npu.encoder_backend == "npu" and cpu.encoder_backend == "cpu"
    yield cpu, npu
    npu.close()
    cpu.close()


@pytest.fixture(scope="module")
def cpu_texts(engines):
    cpu, _ = engines
    names = SUBSET if not FULL else sorted(p.stem for p in CORPUS_DIR.glob("*.wav"))
    return {name: cpu.transcribe(*read(name)).text for name in names}


def test_transcripts_match_the_cpu_backend(engines, cpu_texts, fake_npu):
    _, npu = engines
    differ = []
    for name, want in cpu_texts.items():
        result = npu.transcribe(*read(name))
        assert result.encoder_backend == "npu" and not result.encoder_fallback
        assert result.timings.npu_ms > 0 and result.timings.npu_ms <= result.timings.encoder_ms
        if result.text != want:
            differ.append(f"{name}: cpu {want!r} / npu {result.text!r}")
    assert not differ, f"{len(differ)} of {len(cpu_texts)} transcripts differ:\n" + "\n".join(differ)
    print(f"\n{len(cpu_texts)} transcripts identical through the NPU backend; {fake_npu.launches} launches")


def test_the_decoder_consumes_the_npu_output(engines, cpu_texts, fake_npu, monkeypatch):
    """No hidden CPU re-encode: with the CPU encoder's forward and every CPU matrix product of its layers
    poisoned, NPU requests still work, and a kernel that computes wrong values changes the transcript."""
    _, npu = engines

    def poisoned(*_a, **_k):
        raise AssertionError("the CPU encoder ran during an NPU request")

    name = "living_room_light"
    with monkeypatch.context() as mp:
        mp.setattr(modules.AudioEncoder, "forward", poisoned)
        mp.setattr(modules.EncoderBlock, "linears", poisoned)
        for block in npu.models[npu.default_model].model.encoder.blocks:
            for lin in (block.qkv, block.out, block.mlp.fc1, block.mlp.fc2):
                mp.setattr(lin, "forward", poisoned)
        result = npu.transcribe(*read(name))
    assert result.text == cpu_texts[name] and result.encoder_backend == "npu"
    fake_npu.corrupt_output = True
    try:
        broken = npu.transcribe(*read(name))
    finally:
        fake_npu.corrupt_output = False
    assert broken.encoder_backend == "npu" and broken.text != cpu_texts[name]


@pytest.mark.parametrize("mode", ["error", "raise"])
def test_a_failed_launch_still_gives_the_cpu_transcript(engines, cpu_texts, fake_npu, mode):
    _, npu = engines
    backend = npu.models[npu.default_model].backend
    before = backend.fallback_count
    name = "s2p_rec_add_apples_to_my_shopping_list"
    fake_npu.fail_next(mode, after=30)
    result = npu.transcribe(*read(name))
    assert result.encoder_fallback and result.encoder_backend == "cpu"
    assert result.text == cpu_texts[name]
    assert backend.fallback_count == before + 1
    assert result.as_dict()["encoder_fallback"] is True
    again = npu.transcribe(*read(name))
    assert not again.encoder_fallback and again.encoder_backend == "npu"
