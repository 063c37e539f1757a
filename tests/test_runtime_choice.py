"""Which runtime loads a model (runtime_choice.py), decided without importing torch: onnx on the
CPU, torch for CUDA, the NPU and --cpu-runtime torch, a clear error where torch is asked for
and not installed, and auto falling back to the CPU where a device's backend needs torch."""

from __future__ import annotations

import logging

import pytest

from wyoming_amanuensis import runtime_choice
from wyoming_amanuensis.config import settings_from
from wyoming_amanuensis.runtime_choice import RuntimeUnavailable, runtime_for


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """No NPU node, no NVIDIA driver, torch installed: each test changes what it needs."""
    state = {"torch": True}
    monkeypatch.setattr(runtime_choice, "DEVICE_NODE_DIR", tmp_path / "accel")
    monkeypatch.setattr(runtime_choice, "NVIDIA_NODES", (tmp_path / "nvidiactl",))
    monkeypatch.setattr(runtime_choice, "has_torch", lambda: state["torch"])
    return state, tmp_path


def test_the_cpu_runs_on_onnx_unless_told(machine):
    assert runtime_for(settings_from(encoder_backend="auto")) == "onnx"
    assert runtime_for(settings_from(encoder_backend="cpu")) == "onnx"
    assert runtime_for(settings_from(encoder_backend="cpu", cpu_runtime="torch")) == "torch"
    assert runtime_for(settings_from(encoder_backend="cuda")) == "torch"
    assert runtime_for(settings_from(encoder_backend="npu")) == "torch"


def test_auto_takes_torch_where_a_device_may_be(machine):
    state, tmp = machine
    (tmp / "accel").mkdir()
    (tmp / "accel" / "accel0").touch()
    assert runtime_for(settings_from(encoder_backend="auto")) == "torch"
    (tmp / "accel" / "accel0").unlink()
    assert runtime_for(settings_from(encoder_backend="auto")) == "onnx"
    (tmp / "nvidiactl").touch()
    assert runtime_for(settings_from(encoder_backend="auto")) == "torch"


def test_without_torch_auto_uses_the_cpu_and_says_why(machine, caplog):
    state, tmp = machine
    state["torch"] = False
    (tmp / "nvidiactl").touch()
    with caplog.at_level(logging.INFO, logger="wyoming_amanuensis.runtime_choice"):
        assert runtime_for(settings_from(encoder_backend="auto")) == "onnx"
    assert "cuda device may be present" in caplog.text and "wyoming-amanuensis[torch]" in caplog.text


@pytest.mark.parametrize("options, flag", [
    ({"encoder_backend": "cuda"}, "--encoder-backend cuda"),
    ({"encoder_backend": "npu"}, "--encoder-backend npu"),
    ({"encoder_backend": "cpu", "cpu_runtime": "torch"}, "--cpu-runtime torch"),
    ({"encoder_backend": "auto", "cpu_runtime": "torch"}, "--cpu-runtime torch"),
])
def test_torch_asked_for_and_missing_is_a_clear_error(machine, options, flag):
    state, _ = machine
    state["torch"] = False
    with pytest.raises(RuntimeUnavailable, match=f"{flag} needs torch, which is not installed"):
        runtime_for(settings_from(**options))


def test_the_server_refuses_to_start_before_opening_its_port(machine):
    from wyoming_amanuensis.lifetime import EngineHost

    state, _ = machine
    state["torch"] = False
    with pytest.raises(RuntimeUnavailable):
        EngineHost(settings_from(model="tiny.en", encoder_backend="cuda"))
