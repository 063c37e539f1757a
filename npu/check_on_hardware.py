"""Verify and benchmark the NPU encoder backend on a real AMD XDNA NPU.

Run through ./check_on_hardware.sh (it checks the driver and XRT first). Exits
non-zero when anything the fake-based test suite assumes does not hold on the
real hardware. Prints a report and writes it as JSON (--out).

    python3 npu/check_on_hardware.py --kernel-dir npu/build --instr-units words
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from wyoming_amanuensis.config import settings_from
from wyoming_amanuensis.encoders.torch_backend import TorchEncoderBackend
from wyoming_amanuensis.encoders.npu import NpuEncoderBackend
from wyoming_amanuensis.encoders.npu_device import (PRECISIONS, NpuDevice, find_device_node, find_kernel_files,
                                                    import_pyxrt)
from wyoming_amanuensis.mel import log_mel
from wyoming_amanuensis.model.loader import load_model

REPORT: dict = {"ok": True, "failures": []}


def fail(what: str) -> None:
    REPORT["ok"] = False
    REPORT["failures"].append(what)
    print(f"FAIL: {what}", flush=True)


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def check_device(args) -> None:
    pyxrt = import_pyxrt()
    node = find_device_node(args.device_index)
    files = find_kernel_files(args.kernel_dir)
    print(f"device node {node}; kernels {files.directory} (tile {files.spec})", flush=True)
    for precision in PRECISIONS:
        dev = NpuDevice(pyxrt, files, args.device_index, args.instr_units, max_n=2048, precision=precision)
        if precision == "bf16":
            REPORT["device"] = dev.name
            REPORT["self_test"] = dev.self_test()  # raises with the reason on a mismatch
            print(f"self-test: {REPORT['self_test']}", flush=True)
        rng = np.random.default_rng(0)
        worst = 0.0
        for p, k, n in ((1, 384, 1152), (255, 512, 512), (256, 512, 2048), (700, 2048, 512), (1500, 1536, 384)):
            x = torch.from_numpy(rng.standard_normal((p, k), dtype=np.float32))
            w = torch.from_numpy(rng.standard_normal((n, k), dtype=np.float32))
            lin = dev.upload_linear("check", w, None)
            y, _ = dev.matmul(x, lin)
            want = (x.double() @ w.double().t()).numpy()
            worst = max(worst, float(np.abs(y - want).max() / np.abs(want).max()))
        limit = {"bf16": 2e-2, "bf16x2": 1e-2, "bf16x3": 1e-4}[precision]
        REPORT[f"gemm_{precision}_max_rel_error"] = worst
        print(f"GEMM {precision}: max error / max |C| = {worst:.2e} (limit {limit:g})", flush=True)
        if worst > limit:
            fail(f"GEMM {precision} error {worst:.2e} > {limit:g}")
        if precision == "bf16":
            lin = dev.upload_linear("bench", torch.randn(dev.spec.N, dev.spec.K), None)
            x = torch.randn(dev.spec.M, dev.spec.K)
            dev.matmul(x, lin)
            launches0, t = dev.launches, timed(lambda: dev.matmul(x, lin), 200)
            s = dev.spec
            REPORT["launch_us"] = t * 1000.0
            REPORT["launch_gflops"] = 2 * s.M * s.K * s.N / (t / 1000.0) / 1e9
            print(f"one {s.M}x{s.K}x{s.N} launch incl. host copies: {t * 1000:.0f} us "
                  f"({REPORT['launch_gflops']:.0f} GFLOP/s)", flush=True)
        dev.close()


def check_model(name: str, args) -> None:
    model = load_model(name)
    settings = settings_from(encoder_backend="npu", npu_kernel_dir=args.kernel_dir,
                             npu_device_index=args.device_index, npu_instr_units=args.instr_units)
    cpu = TorchEncoderBackend(model.encoder, "cpu")
    audio = np.zeros(16000 * 30, dtype=np.float32)
    if args.speech:
        import soundfile as sf

        from wyoming_amanuensis.audio import to_16k
        samples, rate = sf.read(args.speech, dtype="float32")
        s = to_16k(samples, rate)[0][: audio.size]
        audio[: s.size] = s
    for precision in args.precisions:
        npu = NpuEncoderBackend.open(model.encoder, settings, precision=precision)
        for seconds in (0.3, 1, 5, 10, 30):
            mel = log_mel(audio, model.dims.n_mels, n_frames=int(round(seconds * 100)))[None]
            got, want = npu.encode(mel), cpu.encode(mel)
            a, b = got.features.flatten().double(), want.features.flatten().double()
            cos = float(a @ b / (a.norm() * b.norm()))
            err = float((a - b).abs().max())
            t_npu = timed(lambda: npu.encode(mel), args.repeat)
            t_cpu = timed(lambda: cpu.encode(mel), args.repeat)
            key = f"{name}/{precision}/{seconds:g}s"
            REPORT[key] = {"cosine": cos, "max_abs_error": err, "npu_encode_ms": t_npu, "cpu_encode_ms": t_cpu,
                           "npu_busy_ms": got.npu_ms, "fallback": got.fallback}
            print(f"{key:22s} cosine {cos:.6f}  max abs {err:.3f}  encode {t_npu:7.1f} ms (NPU busy {got.npu_ms:6.1f})"
                  f"  vs CPU {t_cpu:7.1f} ms", flush=True)
            if got.fallback or cos < 0.999:
                fail(f"{key}: fallback={got.fallback} cosine={cos:.6f}")
        npu.close()


def check_transcripts(args) -> None:
    import soundfile as sf

    from wyoming_amanuensis.pipeline import Engine
    clips = sorted(Path(args.corpus).glob("*.wav"))[: args.clips or None]
    cpu = Engine.load(settings_from(encoder_backend="cpu"))
    npu = Engine.load(settings_from(encoder_backend="npu", npu_kernel_dir=args.kernel_dir,
                                    npu_device_index=args.device_index, npu_instr_units=args.instr_units))
    same, diffs, enc_cpu, enc_npu = 0, [], [], []
    for wav in clips:
        samples, rate = sf.read(str(wav), dtype="float32")
        a, b = cpu.transcribe(samples, rate), npu.transcribe(samples, rate)
        enc_cpu.append(a.timings.encoder_ms)
        enc_npu.append(b.timings.encoder_ms)
        if b.encoder_fallback:
            fail(f"{wav.stem}: the NPU fell back to the CPU")
        if a.text == b.text:
            same += 1
        else:
            diffs.append({"clip": wav.stem, "cpu": a.text, "npu": b.text})
    REPORT["transcripts"] = {"clips": len(clips), "identical": same, "differ": diffs,
                             "encoder_ms_median_cpu": statistics.median(enc_cpu),
                             "encoder_ms_median_npu": statistics.median(enc_npu)}
    print(f"transcripts: {same}/{len(clips)} identical to the CPU backend; encoder median "
          f"{statistics.median(enc_npu):.1f} ms on the NPU vs {statistics.median(enc_cpu):.1f} ms on the CPU", flush=True)
    if diffs:
        fail(f"{len(diffs)} transcripts differ: {diffs[:5]}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kernel-dir", default=str(Path(__file__).resolve().parent / "build"))
    p.add_argument("--instr-units", choices=("words", "bytes"), default="words")
    p.add_argument("--device-index", type=int, default=0)
    p.add_argument("--models", default="base,tiny.en")
    p.add_argument("--precisions", default=",".join(PRECISIONS))
    p.add_argument("--speech", default=None, help="a WAV file for the encoder comparisons (default: silence)")
    p.add_argument("--corpus", default=None, help="folder of NAME.wav clips for the transcript comparison")
    p.add_argument("--clips", type=int, default=0, help="at most this many clips (0 = all)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--self-test-only", action="store_true")
    p.add_argument("--out", default="npu_check_report.json")
    args = p.parse_args()
    args.precisions = [x for x in args.precisions.split(",") if x]
    REPORT["instr_units"] = args.instr_units
    try:
        check_device(args)
        if not args.self_test_only:
            for name in [m for m in args.models.split(",") if m]:
                check_model(name, args)
            if args.corpus:
                check_transcripts(args)
    except Exception as err:  # noqa: BLE001 - report, then fail
        fail(f"{type(err).__name__}: {err}")
    Path(args.out).write_text(json.dumps(REPORT, indent=2, default=str))
    print(("PASS" if REPORT["ok"] else "FAIL") + f" (report: {args.out})")
    return 0 if REPORT["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
