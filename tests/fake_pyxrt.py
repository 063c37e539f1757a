"""A faithful fake of the ``pyxrt`` surface the NPU backend uses, plus the NPU behind it.

The surface follows XRT's pybind11 module (src/python/pybind11/src/pyxrt.cpp):
``device(index)`` with ``register_xclbin``/``load_xclbin``/``get_info``;
``xclbin(path)`` with ``get_uuid``/``get_kernels``; ``hw_context(device, uuid)``;
``kernel(hw_context, name)`` with ``group_id`` and ``__call__`` returning a
``run`` whose ``wait([timeout_ms])`` returns an ``ert_cmd_state``;
``bo(device, size, flags, group_id)`` with ``write(buffer, offset)``,
``read(size, offset)`` (an int8 array), ``map()`` (a writable memoryview),
``sync(direction[, size, offset])`` and ``size()``; the enums
``bo.flags`` (exported as ``bo.cacheable`` ...), ``xclBOSyncDirection``,
``ert_cmd_state`` and ``xrt_info_device``.

``FakeNpu`` is the hardware. A buffer has a host side and a device side that
only ``sync`` copies between, so a forgotten sync shows up as stale data, as
it would on the device. A launch runs the GEMM the real ``MLIR_AIE`` kernel
runs (C[M,N] float32 = A[M,K] bf16 @ B[K,N] bf16, row-major, float32
accumulation, the shape taken from the xclbin) only when it is the launch the
firmware requires: opcode 3, the instruction buffer (cacheable, at
``group_id(1)``, holding the kernel's instruction stream on the device side)
with the instruction count in the units the firmware expects, and the data
buffers host_only at ``group_id(3)``, ``(4)``, ``(5)``, big enough and
distinct. Anything else is recorded in ``violations`` and raised as
``FakeXrtViolation``: tests assert that list stays empty.

The fake xclbin is ``b"xclbin2\\0"`` plus a JSON header naming its kernels,
its design (tile shape and types) and the SHA-256 of its instruction stream;
``make_kernel_dir`` writes one with its ``insts.bin`` and ``kernel.json``.
"""

from __future__ import annotations

import enum
import hashlib
import json
import types
import uuid as _uuid
from pathlib import Path
from typing import Optional

import numpy as np
import torch

XCLBIN_MAGIC = b"xclbin2\0"
OPCODE = 3


class FakeXrtViolation(RuntimeError):
    """The host code used the XRT surface in a way the hardware would not accept."""


class ert_cmd_state(enum.Enum):  # noqa: N801 - pyxrt's spelling
    ERT_CMD_STATE_NEW = 1
    ERT_CMD_STATE_QUEUED = 2
    ERT_CMD_STATE_COMPLETED = 4
    ERT_CMD_STATE_ERROR = 5
    ERT_CMD_STATE_ABORT = 6
    ERT_CMD_STATE_SUBMITTED = 7
    ERT_CMD_STATE_TIMEOUT = 8
    ERT_CMD_STATE_NORESPONSE = 9


class xclBOSyncDirection(enum.Enum):  # noqa: N801
    XCL_BO_SYNC_BO_TO_DEVICE = 0
    XCL_BO_SYNC_BO_FROM_DEVICE = 1


class xrt_info_device(enum.Enum):  # noqa: N801
    bdf = 0
    name = 5


class _BoFlags(enum.Enum):
    normal = 0
    cacheable = 1 << 24
    device_only = 1 << 28
    host_only = 1 << 29
    p2p = 1 << 30
    svm = 1 << 27


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def instruction_stream(n_words: int = 640, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    words = rng.integers(0, 2**32, size=n_words, dtype=np.uint64).astype("<u4")
    words[0] = 0x06030100  # a header word, as mlir-aie's streams start with one
    return words


def make_kernel_dir(folder: Path, M: int = 256, K: int = 512, N: int = 512, *, n_words: int = 640,
                    kernel_name: str = "MLIR_AIE", meta: Optional[dict] = None, insts_name: str = "insts.bin") -> Path:
    """final.xclbin + insts.bin (or insts.txt) + kernel.json, as npu/Makefile would install them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    words = instruction_stream(n_words)
    header = {
        "uuid": str(_uuid.uuid5(_uuid.NAMESPACE_URL, f"amanuensis-fake-{M}x{K}x{N}-{kernel_name}")),
        "kernels": [{"name": kernel_name, "num_args": 8}],  # opcode, instr, ninstr, bo0..bo4
        "design": {"M": M, "K": K, "N": N, "dtype_in": "bf16", "dtype_out": "f32"},
        "insts_sha256": hashlib.sha256(words.tobytes()).hexdigest(),
        "insts_words": int(words.size),
    }
    (folder / "final.xclbin").write_bytes(XCLBIN_MAGIC + json.dumps(header).encode())
    if insts_name.endswith(".txt"):
        (folder / insts_name).write_text("".join(f"{int(w):08x}\n" for w in words))
    else:
        (folder / insts_name).write_bytes(words.tobytes())
    kernel_meta = {"kernel": kernel_name, "M": M, "K": K, "N": N, "dtype_in": "bf16", "dtype_out": "f32"}
    kernel_meta.update(meta or {})
    (folder / "kernel.json").write_text(json.dumps(kernel_meta))
    return folder


class FakeNpu:
    """The NPU behind the fake module: executes launches, counts, and injects faults."""

    GROUP_BASE = 0x40  # group ids are opaque numbers: code must ask kernel.group_id(i)

    def __init__(self, instr_units: str = "words", n_devices: int = 1):
        self.instr_units = instr_units
        self.n_devices = n_devices
        self.violations: list[str] = []
        self.launches = 0
        self.bo_allocations = 0
        self.bo_bytes = 0
        # Faults for upcoming launches, consumed one per launch: None (run normally),
        # "error" / "timeout" (run.wait returns that state, C is not written),
        # "raise" (the launch itself throws, as XRT does when the driver refuses a command).
        self.faults: list[Optional[str]] = []
        self.corrupt_output = False  # every launch writes a wrong C (a broken kernel)
        self.module = _build_module(self)

    def violation(self, message: str):
        self.violations.append(message)
        raise FakeXrtViolation(message)

    def fail_next(self, mode: str, count: int = 1, after: int = 0) -> None:
        self.faults = [None] * after + [mode] * count


# --------------------------------------------------------------------------- the module

def _build_module(hw: FakeNpu) -> types.ModuleType:  # noqa: C901 - one closure per pyxrt class
    m = types.ModuleType("pyxrt")
    m.__doc__ = "fake pyxrt (tests/fake_pyxrt.py)"
    m.ert_cmd_state = ert_cmd_state
    m.xclBOSyncDirection = xclBOSyncDirection
    m.xrt_info_device = xrt_info_device

    class uuid:  # noqa: N801
        def __init__(self, text: str):
            self._text = str(text)

        def to_string(self) -> str:
            return self._text

        def __eq__(self, other):
            return isinstance(other, uuid) and other._text == self._text

        def __hash__(self):
            return hash(self._text)

    class xclbinkernel:  # noqa: N801
        def __init__(self, name: str, num_args: int):
            self._name, self._num_args = name, num_args

        def get_name(self) -> str:
            return self._name

        def get_num_args(self) -> int:
            return self._num_args

    class xclbin:  # noqa: N801
        def __init__(self, path: str):
            if not isinstance(path, str):
                raise TypeError("xclbin(): path must be a str")
            try:
                raw = Path(path).read_bytes()
            except OSError as err:
                raise RuntimeError(f"xclbin: cannot open {path}: {err}") from None
            if not raw.startswith(XCLBIN_MAGIC):
                raise RuntimeError(f"xclbin: {path} is not an xclbin (bad magic)")
            self.header = json.loads(raw[len(XCLBIN_MAGIC):])
            self.path = path

        def get_uuid(self):
            return uuid(self.header["uuid"])

        def get_kernels(self):
            return [xclbinkernel(k["name"], k["num_args"]) for k in self.header["kernels"]]

    class device:  # noqa: N801
        def __init__(self, index: int = 0):
            if not isinstance(index, int) or not 0 <= index < hw.n_devices:
                raise RuntimeError(f"No such device: index {index}")
            self.index = index
            self.registered: dict = {}

        def register_xclbin(self, xb):
            if not isinstance(xb, xclbin):
                raise TypeError("register_xclbin(): expected a pyxrt.xclbin")
            self.registered[xb.get_uuid()] = xb
            return xb.get_uuid()

        def load_xclbin(self, *_):
            raise RuntimeError("load_xclbin: operation not supported on this device (use register_xclbin + hw_context)")

        def get_info(self, key):
            if key == xrt_info_device.name:
                return "RyzenAI-npu4 (fake)"
            return "NA"

    class hw_context:  # noqa: N801
        def __init__(self, dev, u):
            if not isinstance(dev, device) or not isinstance(u, uuid):
                raise TypeError("hw_context(device, uuid)")
            if u not in dev.registered:
                raise RuntimeError("hw_context: xclbin not registered with this device")
            self.device = dev
            self.xclbin = dev.registered[u]

    class bo:  # noqa: N801
        flags = _BoFlags

        def __init__(self, dev, size, flags, group):
            if not isinstance(dev, device):
                raise TypeError("bo(): first argument must be a pyxrt.device")
            if not isinstance(size, (int, np.integer)) or size <= 0:
                raise TypeError(f"bo(): size must be a positive int, got {size!r}")
            if not isinstance(flags, _BoFlags):
                raise TypeError(f"bo(): flags must be pyxrt.bo.flags, got {flags!r}")
            if not isinstance(group, (int, np.integer)):
                raise TypeError(f"bo(): group id must be an int (kernel.group_id(i)), got {group!r}")
            self.device, self.nbytes, self.bo_flags, self.group = dev, int(size), flags, int(group)
            self.host = bytearray(self.nbytes)
            self.dev = bytearray(self.nbytes)
            self.pending: set = set()  # runs started with this buffer and not yet waited for
            hw.bo_allocations += 1
            hw.bo_bytes += self.nbytes

        def size(self) -> int:
            return self.nbytes

        def write(self, buffer, offset: int):
            data = memoryview(buffer).cast("B")
            if offset < 0 or offset + data.nbytes > self.nbytes:
                raise RuntimeError(f"bo.write: {data.nbytes} bytes at {offset} overrun a {self.nbytes}-byte buffer")
            self.host[offset:offset + data.nbytes] = data

        def read(self, size: int, offset: int):
            if offset < 0 or offset + size > self.nbytes:
                raise RuntimeError("bo.read: out of range")
            return np.frombuffer(bytes(self.host[offset:offset + size]), dtype=np.int8).copy()

        def map(self):
            return memoryview(self.host)

        def sync(self, direction, size: Optional[int] = None, offset: int = 0):
            if not isinstance(direction, xclBOSyncDirection):
                raise TypeError("bo.sync(): direction must be a pyxrt.xclBOSyncDirection")
            size = self.nbytes - offset if size is None else size
            if self.pending:
                what = "overwrote" if direction is xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE else "read"
                hw.violation(f"host {what} a buffer while a run using it was still in flight (wait() first)")
            if direction is xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE:
                self.dev[offset:offset + size] = self.host[offset:offset + size]
            else:
                self.host[offset:offset + size] = self.dev[offset:offset + size]

    for f in _BoFlags:  # pybind11 export_values(): pyxrt.bo.cacheable etc.
        setattr(bo, f.name, f)

    class run:  # noqa: N801
        def __init__(self, state, buffers):
            self._state = state
            self._buffers = buffers
            for b in buffers:
                b.pending.add(self)

        def wait(self, timeout_ms: int = 0):
            for b in self._buffers:
                b.pending.discard(self)
            return self._state

        def state(self):
            return self._state

    class kernel:  # noqa: N801
        def __init__(self, ctx, name: str):
            if not isinstance(ctx, hw_context):
                raise TypeError("kernel(hw_context, name)")
            found = [k for k in ctx.xclbin.header["kernels"] if k["name"] == name]
            if not found:
                raise RuntimeError(f"No kernel named {name} in the xclbin")
            self.ctx, self.name, self.num_args = ctx, name, found[0]["num_args"]
            self.design = ctx.xclbin.header["design"]

        def group_id(self, index: int) -> int:
            if not 0 <= index < self.num_args:
                raise RuntimeError(f"group_id: kernel {self.name} has no argument {index}")
            return FakeNpu.GROUP_BASE + 3 * index

        def __call__(self, *args):
            return _launch(self, args)

    def _check_bo(k, arg, index: int, flag: _BoFlags, need: int, what: str):
        if not isinstance(arg, bo):
            hw.violation(f"argument {index} ({what}) must be a pyxrt.bo, got {type(arg).__name__}")
        if arg.bo_flags is not flag:
            hw.violation(f"{what} buffer was allocated {arg.bo_flags.name}; the hardware needs {flag.name}")
        if arg.group != k.group_id(index):
            hw.violation(f"{what} buffer was allocated in group {arg.group}; argument {index} needs "
                         f"kernel.group_id({index}) = {k.group_id(index)}")
        if arg.device is not k.ctx.device:
            hw.violation(f"{what} buffer belongs to another device")
        if arg.nbytes < need:
            hw.violation(f"{what} buffer holds {arg.nbytes} bytes; the kernel moves {need}")

    def _launch(k: "kernel", args: tuple):
        if len(args) != 6:
            hw.violation(f"MLIR_AIE launch takes (opcode, instr bo, n_insts, A, B, C): got {len(args)} arguments "
                         "(a launch without its opcode and instruction buffer runs but outputs zeros)")
        opcode, ibo, n_insts, a, b, c = args
        if not isinstance(opcode, (int, np.integer)) or isinstance(opcode, bool) or int(opcode) != OPCODE:
            hw.violation(f"opcode must be {OPCODE}, got {opcode!r}")
        header = k.ctx.xclbin.header
        words = header["insts_words"]
        _check_bo(k, ibo, 1, _BoFlags.cacheable, words * 4, "instruction")
        required = words if hw.instr_units == "words" else words * 4
        if not isinstance(n_insts, (int, np.integer)) or int(n_insts) != required:
            hw.violation(f"instruction count {n_insts!r}: this firmware takes the length in {hw.instr_units} "
                         f"({required}); npu_instr_units is wrong")
        if hashlib.sha256(bytes(ibo.dev[:words * 4])).hexdigest() != header["insts_sha256"]:
            hw.violation("the instruction buffer's device copy is not this xclbin's instruction stream "
                         "(wrong file, or written without sync to device)")
        M, K, N = k.design["M"], k.design["K"], k.design["N"]
        _check_bo(k, a, 3, _BoFlags.host_only, M * K * 2, "A")
        _check_bo(k, b, 4, _BoFlags.host_only, K * N * 2, "B")
        _check_bo(k, c, 5, _BoFlags.host_only, M * N * 4, "C")
        if len({id(a), id(b), id(c), id(ibo)}) != 4:
            hw.violation("A, B, C and the instruction buffer must be four different buffers")
        if c.pending:
            hw.violation("C buffer reused while an earlier run writing it has not been waited for")
        hw.launches += 1
        fault = hw.faults.pop(0) if hw.faults else None
        if fault == "raise":
            raise RuntimeError("DRM_IOCTL_AMDXDNA_EXEC_CMD IOCTL failed (err=-5): Input/output error (fake)")
        if fault in ("error", "timeout"):
            state = ert_cmd_state.ERT_CMD_STATE_ERROR if fault == "error" else ert_cmd_state.ERT_CMD_STATE_TIMEOUT
            return run(state, (a, b, c))
        A = bf16_to_f32(np.frombuffer(a.dev, dtype=np.uint16, count=M * K)).reshape(M, K)
        B = bf16_to_f32(np.frombuffer(b.dev, dtype=np.uint16, count=K * N)).reshape(K, N)
        # float32 operands holding bf16 values: the products are exact in float32; float32 accumulation.
        # (torch's GEMM rather than numpy's: two BLAS thread pools in one process thrash each other.)
        C = (torch.from_numpy(A) @ torch.from_numpy(B)).numpy()
        if hw.corrupt_output:
            C = C * 0.5 + 1.0
        c.dev[:M * N * 4] = C.astype("<f4").tobytes()
        return run(ert_cmd_state.ERT_CMD_STATE_COMPLETED, (a, b, c))

    for name, obj in dict(uuid=uuid, xclbin=xclbin, device=device, hw_context=hw_context, bo=bo, run=run,
                          kernel=kernel).items():
        setattr(m, name, obj)
    m.XCL_BO_FLAGS_NONE = 0
    return m
