"""The NPU encoder backend against a faithful fake of pyxrt (tests/fake_pyxrt.py).

What this shows without hardware: the launch is the one the firmware
requires (opcode 3, instruction buffer, group ids, instruction count units,
syncs), the host tiling/padding/accumulation is exact, the encoder output
agrees with the torch CPU encoder at every input length up to the full
30 s window, buffers are allocated once, every fallback path works and
``auto`` selection logs why it skipped the NPU.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fake_pyxrt  # noqa: E402
from benchmarks.corpus import CORPUS_DIR  # noqa: E402

from wyoming_amanuensis.audio import to_16k  # noqa: E402
from wyoming_amanuensis.config import settings_from  # noqa: E402
from wyoming_amanuensis.encoders import BackendUnavailable, EncoderBackend, npu_device, select_backend  # noqa: E402
from wyoming_amanuensis.encoders.torch_backend import TorchEncoderBackend  # noqa: E402
from wyoming_amanuensis.encoders.npu import MAX_CONSECUTIVE_FAILURES, NpuEncoderBackend  # noqa: E402
from wyoming_amanuensis.encoders.npu_device import NpuDevice, find_kernel_files, to_bf16_bits  # noqa: E402
from wyoming_amanuensis.mel import log_mel  # noqa: E402
from wyoming_amanuensis.model.loader import load_model  # noqa: E402
from wyoming_amanuensis.model.modules import AudioEncoder, Dims  # noqa: E402

SMALL_TILE = dict(M=32, K=48, N=40)  # deliberately not dividing the small encoder's widths


# --------------------------------------------------------------------------- fixtures

def fake_machine(tmp: Path, monkeypatch, *, instr_units: str = "words", tile: dict | None = None, **kernel_kw):
    """A machine with an 'NPU': device node, kernel build, and pyxrt importable."""
    hw = fake_pyxrt.FakeNpu(instr_units=instr_units)
    node_dir = tmp / "dev-accel"
    node_dir.mkdir(exist_ok=True)
    (node_dir / "accel0").touch()
    monkeypatch.setattr(npu_device, "DEVICE_NODE_DIR", node_dir)
    monkeypatch.setitem(sys.modules, "pyxrt", hw.module)
    kernels = fake_pyxrt.make_kernel_dir(tmp / "kernels", **(tile or {}), **kernel_kw)
    return SimpleNamespace(hw=hw, kernel_dir=kernels, node_dir=node_dir)


@pytest.fixture
def machine(tmp_path, monkeypatch):
    m = fake_machine(tmp_path, monkeypatch)
    yield m
    assert m.hw.violations == [], "the host code misused the XRT surface"


@pytest.fixture
def small_machine(tmp_path, monkeypatch):
    m = fake_machine(tmp_path, monkeypatch, tile=SMALL_TILE)
    yield m
    assert m.hw.violations == []


@pytest.fixture(scope="module")
def small_encoder() -> AudioEncoder:
    """A 2-layer, 72-wide encoder with random weights: fast, and ragged against SMALL_TILE."""
    torch.manual_seed(0)
    dims = Dims(n_mels=80, width=72, enc_layers=2, dec_layers=1, enc_heads=2, dec_heads=2, n_vocab=10, n_text_ctx=8)
    enc = AudioEncoder(dims)
    with torch.no_grad():
        enc.positions.normal_(0, 0.1)
    return enc.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def models():
    return {name: load_model(name) for name in ("base", "tiny.en")}


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    samples, rate = sf.read(str(CORPUS_DIR / "jfk.wav"), dtype="float32")
    return to_16k(samples, rate)[0]


def mel_of(audio: np.ndarray, seconds: float, n_mels: int = 80) -> torch.Tensor:
    return log_mel(audio, n_mels, n_frames=int(round(seconds * 100)))[None]


def settings(machine, **kw):
    return settings_from(encoder_backend=kw.pop("encoder_backend", "npu"), npu_kernel_dir=str(machine.kernel_dir), **kw)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    return float(a @ b / (a.norm() * b.norm()))


# --------------------------------------------------------------------------- the fake itself

def test_fake_runs_only_the_launch_the_hardware_requires(machine):
    """The earlier project's launch (data buffers only) and every other deviation fail loudly."""
    hw, xrt = machine.hw, machine.hw.module
    dev = NpuDevice(xrt, find_kernel_files(str(machine.kernel_dir)), max_n=512)
    lin = dev.upload_linear("w", torch.randn(512, 512), None)
    b_bo = lin.tiles[0][0]
    bad_launches = {
        "data buffers only": lambda: dev.kernel(dev.a_bo, b_bo, dev.c_bos[0]),
        "opcode 0": lambda: dev.kernel(0, dev.insts_bo, dev.n_insts, dev.a_bo, b_bo, dev.c_bos[0]),
        "count in bytes": lambda: dev.kernel(3, dev.insts_bo, dev.n_insts * 4, dev.a_bo, b_bo, dev.c_bos[0]),
        "A and B swapped": lambda: dev.kernel(3, dev.insts_bo, dev.n_insts, b_bo, dev.a_bo, dev.c_bos[0]),
        "C is A": lambda: dev.kernel(3, dev.insts_bo, dev.n_insts, dev.a_bo, b_bo, dev.a_bo),
    }
    for what, launch in bad_launches.items():
        with pytest.raises(fake_pyxrt.FakeXrtViolation):
            launch()
        assert hw.violations, what
        hw.violations.clear()
    # a data buffer in the wrong memory group
    wrong = xrt.bo(dev.device, 512 * 512 * 2, xrt.bo.host_only, dev.kernel.group_id(5))
    with pytest.raises(fake_pyxrt.FakeXrtViolation, match="group"):
        dev.kernel(3, dev.insts_bo, dev.n_insts, dev.a_bo, wrong, dev.c_bos[0])
    # an instruction buffer written but never synced to the device
    stale = xrt.bo(dev.device, dev.insts_bo.size(), xrt.bo.cacheable, dev.kernel.group_id(1))
    stale.write(dev.insts_bo.read(dev.insts_bo.size(), 0), 0)
    with pytest.raises(fake_pyxrt.FakeXrtViolation, match="instruction stream"):
        dev.kernel(3, stale, dev.n_insts, dev.a_bo, b_bo, dev.c_bos[0])
    # reading C before waiting for the run
    run = dev.kernel(3, dev.insts_bo, dev.n_insts, dev.a_bo, b_bo, dev.c_bos[0])
    with pytest.raises(fake_pyxrt.FakeXrtViolation, match="in flight"):
        dev.c_bos[0].sync(xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_FROM_DEVICE)
    assert run.wait() == xrt.ert_cmd_state.ERT_CMD_STATE_COMPLETED
    hw.violations.clear()
    # host writes reach the device only through sync
    a = np.frombuffer(dev.a_bo.map(), dtype=np.uint16)
    a[:] = to_bf16_bits(torch.ones(a.size))
    assert bytes(dev.a_bo.dev[:4]) == b"\0\0\0\0"
    dev.a_bo.sync(xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE)
    assert bytes(dev.a_bo.dev[:2]) == to_bf16_bits(torch.ones(1)).tobytes()


@pytest.mark.parametrize("rows", [1, 31, 32, 33, 70])
def test_tiled_product_is_exact_for_bf16_operands(small_machine, rows):
    """Tiling, zero padding and float32 K-accumulation add no error of their own."""
    xrt = small_machine.hw.module
    dev = NpuDevice(xrt, find_kernel_files(str(small_machine.kernel_dir)), max_n=216, precision="bf16")
    torch.manual_seed(rows)
    w, bias, x = torch.randn(216, 72), torch.randn(216), torch.randn(rows, 72)
    lin = dev.upload_linear("w", w, bias)
    assert (len(lin.tiles), len(lin.tiles[0])) == (2, 6)  # 72 = 48 + 24 (ragged), 216 = 5 * 40 + 16 (ragged)
    y, busy = dev.matmul(x, lin)
    bf = lambda t: t.to(torch.bfloat16).double()  # noqa: E731
    want = (bf(x) @ bf(w).t() + bias.double()).numpy()
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-4)
    assert busy > 0 and dev.launches == 2 * 6 * ((rows + 31) // 32)


def test_split_precision_is_float32_class(small_machine):
    """bf16x3 (hi*hi + lo*hi + hi*lo) is ~100x closer to float32 than one bf16 pass."""
    xrt = small_machine.hw.module
    files = find_kernel_files(str(small_machine.kernel_dir))
    torch.manual_seed(1)
    w, x = torch.randn(216, 72), torch.randn(70, 72)
    want = (x.double() @ w.double().t()).numpy()
    errors = {}
    for precision, launches in (("bf16", 1), ("bf16x2", 2), ("bf16x3", 3)):
        dev = NpuDevice(xrt, files, max_n=216, precision=precision)
        y, _ = dev.matmul(x, dev.upload_linear("w", w, None))
        errors[precision] = float(np.abs(y - want).max() / np.abs(want).max())
        assert dev.launches == launches * 2 * 6 * 3
    assert errors["bf16"] < 2e-2 and errors["bf16x3"] < 2e-5
    assert errors["bf16x3"] < errors["bf16x2"] < errors["bf16"]
    with pytest.raises(ValueError, match="npu precision must be one of bf16, bf16x2, bf16x3"):
        NpuDevice(xrt, files, max_n=216, precision="fp8")


# --------------------------------------------------------------------------- numerics against the CPU encoder

NUMERICS: list[str] = []


@pytest.mark.parametrize("model_name, precision", [("base", "bf16x3"), ("tiny.en", "bf16x3"), ("base", "bf16")])
def test_encoder_matches_cpu_encoder_at_every_length(machine, models, speech, model_name, precision):
    model = models[model_name]
    backend = NpuEncoderBackend.open(model.encoder, settings(machine), precision=precision)
    cpu = TorchEncoderBackend(model.encoder, "cpu")
    for seconds in (0.3, 1, 5, 10, 30):
        mel = mel_of(speech, seconds, model.dims.n_mels)
        got, want = backend.encode(mel), cpu.encode(mel)
        assert (got.backend, got.fallback, got.tail_cached) == ("npu", False, False)
        assert got.features.shape == want.features.shape == (1, int(seconds * 50), model.dims.width)
        assert got.npu_ms > 0
        cos = cosine(got.features, want.features)
        err = (got.features - want.features).abs()
        per_position = F.cosine_similarity(got.features[0].double(), want.features[0].double(), dim=1)
        NUMERICS.append(f"{model_name:8s} {precision:6s} {seconds:5.1f} s: cosine {cos:.7f} (1-cos {1 - cos:.1e}), "
                        f"max abs error {float(err.max()):.2e} (|ref| max {float(want.features.abs().max()):.1f}), "
                        f"mean abs error {float(err.mean()):.1e}, worst position cosine {float(per_position.min()):.5f}")
        assert cos > 0.999, NUMERICS[-1]
        assert float(per_position.min()) > 0.95, NUMERICS[-1]
        if precision == "bf16x3":
            assert cos > 0.99999 and float(err.max()) < 0.05, NUMERICS[-1]
    if precision == "bf16x3":  # the start-up silence encoding and its keys go through the NPU too
        silent = log_mel(np.zeros(0, dtype=np.float32), model.dims.n_mels, n_frames=3000)[None]
        (feats, context), (want_feats, want_context) = backend.silence(silent, 50), cpu.silence(silent, 50)
        assert cosine(feats, want_feats) > 0.99999
        assert cosine(context.layers[-1].k, want_context.layers[-1].k) > 0.99999
    backend.close()
    print("\n" + "\n".join(n for n in NUMERICS if n.startswith(f"{model_name:8s} {precision:6s}")))


# --------------------------------------------------------------------------- selection and its reasons

def test_auto_picks_the_npu_when_it_works(small_machine, small_encoder, caplog):
    caplog.set_level(logging.INFO)
    backend = select_backend(small_encoder, settings(small_machine, encoder_backend="auto"))
    assert isinstance(backend, NpuEncoderBackend) and backend.name == "npu"
    assert "encoder backend auto: using npu" in caplog.text
    assert "self-test" in caplog.text and "ready" in caplog.text


def _break_no_pyxrt(m, monkeypatch, tmp):
    monkeypatch.setitem(sys.modules, "pyxrt", None)


def _break_no_node(m, monkeypatch, tmp):
    (m.node_dir / "accel0").unlink()


def _break_no_kernels(m, monkeypatch, tmp):
    (m.kernel_dir / "final.xclbin").unlink()


def _break_no_insts(m, monkeypatch, tmp):
    (m.kernel_dir / "insts.bin").unlink()


def _break_kernel_name(m, monkeypatch, tmp):
    fake_pyxrt.make_kernel_dir(m.kernel_dir, **SMALL_TILE, kernel_name="SOMETHING_ELSE")


def _break_wrong_results(m, monkeypatch, tmp):
    m.hw.corrupt_output = True


def _break_instr_units(m, monkeypatch, tmp):
    m.hw.instr_units = "bytes"  # the firmware wants bytes; the setting says words


def _break_launch_error(m, monkeypatch, tmp):
    m.hw.fail_next("error", count=100)  # every launch fails, also the explicit retry below


def _break_meta_shape(m, monkeypatch, tmp):
    (m.kernel_dir / "kernel.json").write_text('{"M": 16, "K": 48, "N": 40, "dtype_in": "bf16", "dtype_out": "f32"}')


@pytest.mark.parametrize("breakage, reason", [
    (_break_no_pyxrt, "pyxrt cannot be imported"),
    (_break_no_node, "no NPU device node"),
    (_break_no_kernels, "no NPU kernel files"),
    (_break_no_insts, "no NPU kernel files"),
    (_break_kernel_name, "has no MLIR_AIE kernel"),
    (_break_wrong_results, "self-test failed"),
    (_break_instr_units, "self-test failed"),
    (_break_launch_error, "self-test failed"),
    (_break_meta_shape, "self-test failed"),
])
def test_auto_skips_the_npu_and_says_why(tmp_path, monkeypatch, small_encoder, caplog, breakage, reason):
    m = fake_machine(tmp_path, monkeypatch, tile=SMALL_TILE)
    breakage(m, monkeypatch, tmp_path)
    caplog.set_level(logging.INFO)
    backend = select_backend(small_encoder, settings(m, encoder_backend="auto"))
    assert isinstance(backend, TorchEncoderBackend) and backend.name == "cpu"
    skip = [r.getMessage() for r in caplog.records if "skipping npu" in r.getMessage()]
    assert skip and reason in skip[0], caplog.text
    assert "encoder backend auto: using cpu" in caplog.text
    with pytest.raises(BackendUnavailable, match=reason):  # asked for explicitly: a clear error, no silent CPU
        select_backend(small_encoder, settings(m, encoder_backend="npu"))
    if breakage in (_break_instr_units, _break_meta_shape):
        assert m.hw.violations  # the fake refused the launch loudly; the backend turned that into "unavailable"
    elif breakage is not _break_no_pyxrt:
        assert m.hw.violations == []


def test_instruction_count_in_bytes_and_text_instructions(tmp_path, monkeypatch, small_encoder):
    m = fake_machine(tmp_path, monkeypatch, instr_units="bytes", tile=SMALL_TILE, insts_name="insts.txt")
    backend = NpuEncoderBackend.open(small_encoder, settings(m, npu_instr_units="bytes"))
    assert backend.npu.n_insts == 640 * 4
    out = backend.encode(torch.randn(1, 80, 64))
    assert out.backend == "npu" and not out.fallback and m.hw.violations == []


# --------------------------------------------------------------------------- run-time behaviour

@pytest.mark.parametrize("mode", ["error", "timeout", "raise"])
def test_failed_launch_falls_back_to_cpu_for_that_request(small_machine, small_encoder, caplog, mode):
    backend = NpuEncoderBackend.open(small_encoder, settings(small_machine))
    mel = torch.randn(1, 80, 100)
    want = TorchEncoderBackend(small_encoder, "cpu").encode(mel).features
    small_machine.hw.fail_next(mode, after=5)  # fail in the middle of a request
    with caplog.at_level(logging.WARNING):
        out = backend.encode(mel)
    assert out.fallback and out.backend == "cpu"
    assert torch.equal(out.features, want)  # the CPU encoder's output exactly
    assert backend.fallback_count == 1 and backend.stats()["fallbacks"] == 1
    assert "npu encoder failed" in caplog.text and "encoded on the CPU" in caplog.text
    again = backend.encode(mel)  # the next request is back on the NPU
    assert again.backend == "npu" and not again.fallback and backend.fallback_count == 1
    assert cosine(again.features, want) > 0.999


def test_npu_given_up_after_consecutive_failures(small_machine, small_encoder, caplog):
    backend = NpuEncoderBackend.open(small_encoder, settings(small_machine))
    small_machine.hw.fail_next("raise", count=MAX_CONSECUTIVE_FAILURES)
    mel = torch.randn(1, 80, 40)
    for _ in range(MAX_CONSECUTIVE_FAILURES):
        assert backend.encode(mel).fallback
    assert backend.disabled_reason and "disabled until restart" in caplog.text
    launches = small_machine.hw.launches
    out = backend.encode(mel)  # no more launches: straight to the CPU, still counted
    assert out.fallback and small_machine.hw.launches == launches
    assert backend.fallback_count == MAX_CONSECUTIVE_FAILURES + 1 and backend.stats()["disabled"]
    assert "failed requests in a row" in backend.stats()["disabled_reason"]


def test_stats_for_telemetry(small_machine, small_encoder):
    """Every backend answers stats(): the NPU its counters, torch backends None."""
    backend = NpuEncoderBackend.open(small_encoder, settings(small_machine, npu_precision="bf16x2"))
    assert isinstance(backend, EncoderBackend)
    backend.encode(torch.randn(1, 80, 40))
    stats = backend.stats()
    assert stats == {"precision": "bf16x2", "requests": 1, "fallbacks": 0, "launches": stats["launches"],
                     "npu_busy_ms": stats["npu_busy_ms"], "disabled": False, "disabled_reason": None,
                     "last_error": None}
    assert stats["launches"] > 0 and stats["npu_busy_ms"] > 0
    cpu = TorchEncoderBackend(small_encoder, "cpu")
    assert isinstance(cpu, EncoderBackend) and cpu.stats() is None


def test_bad_input_is_an_error_not_a_fallback(small_machine, small_encoder):
    backend = NpuEncoderBackend.open(small_encoder, settings(small_machine))
    with pytest.raises(ValueError, match="30 s window"):
        backend.encode(torch.randn(1, 80, 3002))
    assert backend.fallback_count == 0


def test_buffers_are_allocated_once(machine, models, speech):
    """Start-up allocates everything; requests of any length, 30 s included, allocate nothing."""
    model = models["tiny.en"]  # 4 layers, width 384: K padded to the 512-wide tile
    backend = NpuEncoderBackend.open(model.encoder, settings(machine))
    hw = machine.hw
    # 4 layers x (qkv 1x3 + out 1x1 + fc1 1x3 + fc2 3x1) weight tiles, hi and lo (bf16x3),
    # instructions, A, 3 C, self-test B
    assert backend.npu.precision == "bf16x3"
    assert hw.bo_allocations == 4 * 10 * 2 + 1 + 1 + 3 + 1
    allocated, nbytes = hw.bo_allocations, hw.bo_bytes
    launches = []
    for seconds in (0.3, 30, 12.34):
        before = hw.launches
        out = backend.encode(mel_of(speech, seconds))
        launches.append(hw.launches - before)
        assert out.backend == "npu" and out.npu_ms > 0
        assert (hw.bo_allocations, hw.bo_bytes) == (allocated, nbytes)
    assert launches[:2] == [4 * 10 * 3, 4 * 10 * 3 * 6]  # one M-tile; 1500 positions = 6 M-tiles of 256
    backend.close()
