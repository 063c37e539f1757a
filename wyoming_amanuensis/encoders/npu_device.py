"""XRT host code for the NPU GEMM kernel: device, kernel, buffers, launches, self-test.

Everything here speaks ``pyxrt`` (XRT's Python binding, shipped with XRT in
``/opt/xilinx/xrt/python``, not on PyPI). It is imported lazily through
``importlib`` so that a machine without XRT simply has no NPU backend, and
so that the tests can put a fake module into ``sys.modules['pyxrt']``
without any other code path changing.

The kernel (``npu/``: an mlir-aie IRON design, see npu/README.md) computes one
fixed-shape product per launch::

    C[M_T, N_T] (float32) = A[M_T, K_T] (bfloat16) @ B[K_T, N_T] (bfloat16)

all three row-major in host memory, accumulating in float32. Larger products
are tiled to that shape on the host: the ragged edge is zero-padded, the
K-partials are summed in float32 on the host, and the bias is added there too.
Weights are transposed, padded, rounded to bfloat16 and uploaded once at
start-up, one device buffer per (K-tile, N-tile); activations go through a
fixed pool of buffers (one A, one C per N-tile of the widest product) that is
allocated at start-up and reused by every request, written and read in place
through ``bo.map()``.

Precision: a bf16 x bf16 product with float32 accumulation is what the
AIE-ML MAC units do natively; rounding activations and weights to bfloat16
(8-bit mantissa) leaves encoder errors of up to ~2 (cosine 0.99995) on base's
30 s output. ``PRECISIONS`` (``config.NPU_PRECISIONS``) therefore offers split operands, x = hi + lo with
both halves in bfloat16: ``bf16x2`` splits the activations (2 launches per
tile), ``bf16x3`` splits activations and weights (hi*hi + lo*hi + hi*lo,
3 launches, ~16-bit mantissas: float32-class results, max error ~0.002).
The kernel is the same in every mode; only the host's passes differ.
Measured with the fake NPU on the 73-clip corpus (float decoder): bf16x3 gives
the CPU's transcripts on every clip for base and tiny.en, bf16 on all but one
(tiny.en). npu/README.md has the details.

Launch convention (mlir-aie): ``kernel(3, insts_bo, n_insts, bo_a, bo_b, bo_c)``
with the instruction buffer at ``group_id(1)`` (cacheable) and the data
buffers at ``group_id(3..5)`` (host_only); ``run.wait()`` returns an
``ert_cmd_state`` and anything but COMPLETED is an error. Whether ``n_insts``
counts 32-bit words or bytes is ``Settings.npu_instr_units``.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..config import NPU_PRECISIONS, Settings
from ..runtime_choice import DEVICE_NODE_DIR

_LOG = logging.getLogger(__name__)

KERNEL_NAME = "MLIR_AIE"
OPCODE = 3  # mlir-aie's "run the instruction stream" opcode
GROUP_INSTR, GROUP_A, GROUP_B, GROUP_C = 1, 3, 4, 5  # kernel argument indices
XCLBIN_FILE = "final.xclbin"
INSTS_FILES = ("insts.bin", "insts.txt")  # binary little-endian u32, or one hex word per line
META_FILE = "kernel.json"  # written by npu/Makefile: the tile shape the xclbin was built for
XRT_PYTHON_DIRS = (Path("/opt/xilinx/xrt/python"),)
# Where the kernel build is looked for when Settings.npu_kernel_dir is empty.
DEFAULT_KERNEL_DIRS = (Path(__file__).resolve().parents[2] / "npu" / "build", Path("/usr/share/amanuensis/npu"))
# A run that has not completed by then is treated as failed (pyxrt's wait(0) would block forever).
LAUNCH_TIMEOUT_MS = 10_000
# Host-side operand splitting: name -> (split activations, split weights). See the module docstring.
PRECISIONS = NPU_PRECISIONS
DEFAULT_PRECISION = Settings.npu_precision


class NpuUnavailable(RuntimeError):
    """The NPU cannot be used here; the message says why (for the auto-selection log)."""


class NpuLaunchError(RuntimeError):
    """A kernel launch failed at run time (the request falls back to the CPU)."""


# --------------------------------------------------------------------------- discovery

def import_pyxrt():
    """The ``pyxrt`` module, or NpuUnavailable. Tries XRT's default install folder too."""
    try:
        return importlib.import_module("pyxrt")
    except ImportError as first:
        if "pyxrt" in sys.modules:  # explicitly blocked (sys.modules['pyxrt'] = None)
            raise NpuUnavailable(f"pyxrt cannot be imported ({first}); install XRT") from None
        for folder in XRT_PYTHON_DIRS:
            if folder.is_dir() and str(folder) not in sys.path:
                sys.path.append(str(folder))
                try:
                    return importlib.import_module("pyxrt")
                except ImportError:
                    continue
        raise NpuUnavailable(f"pyxrt cannot be imported ({first}); install XRT and source /opt/xilinx/xrt/setup.sh") from None


def find_device_node(index: int) -> Path:
    nodes = sorted(DEVICE_NODE_DIR.glob("accel*")) if DEVICE_NODE_DIR.is_dir() else []
    if not nodes:
        raise NpuUnavailable(f"no NPU device node ({DEVICE_NODE_DIR}/accel*); is the amdxdna driver loaded?")
    wanted = DEVICE_NODE_DIR / f"accel{index}"
    return wanted if wanted in nodes else nodes[0]


@dataclass(frozen=True)
class KernelSpec:
    """The fixed per-launch product the xclbin was built for."""

    M: int = 256
    K: int = 512
    N: int = 512
    dtype_in: str = "bf16"
    dtype_out: str = "f32"

    @classmethod
    def from_dict(cls, d: dict) -> "KernelSpec":
        spec = cls(**{k: d[k] for k in ("M", "K", "N", "dtype_in", "dtype_out") if k in d})
        if (spec.dtype_in, spec.dtype_out) != ("bf16", "f32"):
            raise NpuUnavailable(f"kernel built for {spec.dtype_in}->{spec.dtype_out}; this host code drives bf16->f32")
        if min(spec.M, spec.K, spec.N) <= 0:
            raise NpuUnavailable(f"kernel tile shape {spec.M}x{spec.K}x{spec.N} is invalid")
        return spec


@dataclass(frozen=True)
class KernelFiles:
    directory: Path
    xclbin: Path
    insts: Path
    spec: KernelSpec


def default_kernel_dirs(configured: Optional[str]) -> list[Path]:
    return [Path(configured).expanduser()] if configured else list(DEFAULT_KERNEL_DIRS)


def find_kernel_files(configured: Optional[str]) -> KernelFiles:
    tried = []
    for folder in default_kernel_dirs(configured):
        tried.append(str(folder))
        xclbin = folder / XCLBIN_FILE
        insts = next((folder / n for n in INSTS_FILES if (folder / n).is_file()), None)
        if not (xclbin.is_file() and insts is not None):
            continue
        meta = folder / META_FILE
        if meta.is_file():
            try:
                spec = KernelSpec.from_dict(json.loads(meta.read_text(encoding="utf-8")))
            except (ValueError, TypeError) as err:
                raise NpuUnavailable(f"{meta} is not valid kernel metadata: {err}") from None
        else:
            spec = KernelSpec()
            _LOG.warning("npu: %s missing; assuming the default tile %dx%dx%d (the self-test will tell)",
                         meta, spec.M, spec.K, spec.N)
        return KernelFiles(folder, xclbin, insts, spec)
    raise NpuUnavailable(f"no NPU kernel files ({XCLBIN_FILE} + {' or '.join(INSTS_FILES)}) in {', '.join(tried)}; "
                         "build them with npu/Makefile (see npu/README.md)")


def read_instructions(path: Path) -> np.ndarray:
    """The instruction stream as little-endian uint32 words."""
    if path.suffix == ".txt":
        words = [int(line.split()[0], 16) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return np.asarray(words, dtype="<u4")
    raw = path.read_bytes()
    if len(raw) == 0 or len(raw) % 4:
        raise NpuUnavailable(f"{path}: {len(raw)} bytes is not a whole number of 32-bit instruction words")
    return np.frombuffer(raw, dtype="<u4").copy()


def instruction_count(words: np.ndarray, units: str) -> int:
    """What the kernel's ``n_insts`` argument receives: 32-bit words or bytes (Settings.npu_instr_units)."""
    if units == "words":
        return int(words.size)
    if units == "bytes":
        return int(words.nbytes)
    raise ValueError(f"npu_instr_units must be 'words' or 'bytes', got {units!r}")


# --------------------------------------------------------------------------- numerics

def to_bf16_bits(x: torch.Tensor) -> np.ndarray:
    """float32 tensor -> bfloat16 bit patterns (uint16), round to nearest even (torch's conversion)."""
    return x.detach().to(torch.float32).contiguous().to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def from_bf16_bits(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32)


def split_bf16(x: torch.Tensor, with_lo: bool = True) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """x = hi + lo (+ ~2^-17 relative), both bfloat16 bit patterns (lo only if asked for)."""
    x = x.detach().to(torch.float32).contiguous()
    hi = x.to(torch.bfloat16)
    if not with_lo:
        return hi.view(torch.int16).numpy().view(np.uint16), None
    lo = (x - hi.to(torch.float32)).to(torch.bfloat16)
    return hi.view(torch.int16).numpy().view(np.uint16), lo.view(torch.int16).numpy().view(np.uint16)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# --------------------------------------------------------------------------- device

class NpuLinear:
    """A weight matrix resident on the NPU, pre-tiled, plus its float32 bias (added on the host)."""

    def __init__(self, name: str, k: int, n: int, tiles: list[list], bias: np.ndarray,
                 tiles_lo: Optional[list[list]] = None):
        self.name = name
        self.k, self.n = k, n
        self.tiles = tiles  # [k_tile][n_tile] -> bo holding B = W^T[K_T, N_T] as bf16, zero-padded
        self.tiles_lo = tiles_lo  # the same for W - bf16(W) (bf16x3 only)
        self.bias = bias


class NpuDevice:
    """One opened NPU: hardware context, MLIR_AIE kernel, instruction buffer, buffer pool."""

    def __init__(self, pyxrt, files: KernelFiles, device_index: int = 0, instr_units: str = "words",
                 max_n: int = 0, precision: str = DEFAULT_PRECISION):
        try:  # the one check for direct callers; Settings validated the configured value already
            self.split_act, self.split_w = PRECISIONS[precision]
        except KeyError:
            raise ValueError(f"npu precision must be one of {', '.join(PRECISIONS)}, got {precision!r}") from None
        self.xrt = pyxrt
        self.files = files
        self.spec = files.spec
        self.instr_units = instr_units
        self.precision = precision
        self.launches = 0
        self.busy_ms = 0.0
        self.bo_count = 0
        s = self.spec
        try:
            self.device = pyxrt.device(device_index)
            self.xclbin = pyxrt.xclbin(str(files.xclbin))
            names = [k.get_name() for k in self.xclbin.get_kernels()]
            if KERNEL_NAME not in names:
                raise NpuUnavailable(f"{files.xclbin} has no {KERNEL_NAME} kernel (has: {', '.join(names) or 'none'})")
            # load_xclbin does not work on XDNA: register the xclbin and open a hardware context on it.
            self.device.register_xclbin(self.xclbin)
            self.context = pyxrt.hw_context(self.device, self.xclbin.get_uuid())
            self.kernel = pyxrt.kernel(self.context, KERNEL_NAME)
            self.name = self._device_name()

            words = read_instructions(files.insts)
            self.n_insts = instruction_count(words, instr_units)
            self.insts_bo = self._bo(words.nbytes, pyxrt.bo.cacheable, GROUP_INSTR)
            self.insts_bo.write(words, 0)
            self.insts_bo.sync(pyxrt.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE)

            # The activation pool: one A, one C per N-tile of the widest product; never grows.
            self.a_bo = self._bo(s.M * s.K * 2, pyxrt.bo.host_only, GROUP_A)
            self.a_view = np.frombuffer(self.a_bo.map(), dtype=np.uint16).reshape(s.M, s.K)
            self.c_bos = []
            self.c_views = []
            self.ensure_pool(max(1, _ceil_div(max_n, s.N)))
        except NpuUnavailable:
            raise
        except Exception as err:  # noqa: BLE001 - any XRT failure here means "no NPU"
            raise NpuUnavailable(f"opening the NPU failed: {type(err).__name__}: {err}") from None

    # ------------------------------------------------------------ set-up helpers
    def _device_name(self) -> str:
        try:
            return str(self.device.get_info(self.xrt.xrt_info_device.name))
        except Exception:  # noqa: BLE001 - informational only
            return "NPU"

    def _bo(self, nbytes: int, flags, group: int):
        self.bo_count += 1
        return self.xrt.bo(self.device, nbytes, flags, self.kernel.group_id(group))

    def ensure_pool(self, n_tiles: int) -> None:
        """Grow the C pool to ``n_tiles`` buffers (only ever called at start-up)."""
        s = self.spec
        while len(self.c_bos) < n_tiles:
            bo = self._bo(s.M * s.N * 4, self.xrt.bo.host_only, GROUP_C)
            self.c_bos.append(bo)
            self.c_views.append(np.frombuffer(bo.map(), dtype=np.float32).reshape(s.M, s.N))

    def upload_linear(self, name: str, weight: torch.Tensor, bias: Optional[torch.Tensor],
                      split: Optional[bool] = None) -> NpuLinear:
        """nn.Linear weight [N, K] -> resident bf16 tiles of W^T (and of its low part), padded to the tile."""
        s = self.spec
        n, k = weight.shape
        kt, nt = _ceil_div(k, s.K), _ceil_div(n, s.N)
        padded = torch.zeros(kt * s.K, nt * s.N, dtype=torch.float32)
        padded[:k, :n] = weight.detach().float().t()
        split_w = self.split_w if split is None else split
        hi, lo = split_bf16(padded, with_lo=split_w)
        tiles = self._upload_tiles(hi, kt, nt)
        tiles_lo = self._upload_tiles(lo, kt, nt) if split_w else None
        self.ensure_pool(nt)
        b = np.zeros(n, dtype=np.float32) if bias is None else bias.detach().float().numpy().copy()
        return NpuLinear(name, k, n, tiles, b, tiles_lo)

    def _upload_tiles(self, bits: np.ndarray, kt: int, nt: int) -> list[list]:
        s = self.spec
        sync = self.xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE
        tiles = []
        for ki in range(kt):
            row = []
            for ni in range(nt):
                tile = np.ascontiguousarray(bits[ki * s.K:(ki + 1) * s.K, ni * s.N:(ni + 1) * s.N])
                bo = self._bo(tile.nbytes, self.xrt.bo.host_only, GROUP_B)
                bo.write(tile, 0)
                bo.sync(sync)
                row.append(bo)
            tiles.append(row)
        return tiles

    # ------------------------------------------------------------ running
    def _launch(self, b_bo, c_index: int):
        return self.kernel(OPCODE, self.insts_bo, self.n_insts, self.a_bo, b_bo, self.c_bos[c_index])

    def _wait_all(self, runs: Sequence) -> Optional[str]:
        """Wait for every started run (even after a failure: none may still write a pooled buffer)."""
        completed = self.xrt.ert_cmd_state.ERT_CMD_STATE_COMPLETED
        problem = None
        for run in runs:
            try:
                state = run.wait(LAUNCH_TIMEOUT_MS)
            except Exception as err:  # noqa: BLE001
                state = f"{type(err).__name__}: {err}"
            if state != completed and problem is None:
                problem = str(state)
        return problem

    def matmul(self, x: torch.Tensor, lin: NpuLinear, split: Optional[bool] = None) -> tuple[np.ndarray, float]:
        """x [P, K] float32 @ W^T + bias -> float32 [P, N] on the NPU; returns (y, NPU busy ms).

        One pass per (activation part, weight part) product of the precision mode, all
        accumulated in float32 into the same output.
        """
        s = self.spec
        p, k = x.shape
        if k != lin.k:
            raise ValueError(f"{lin.name}: input width {k} != weight width {lin.k}")
        split_act = self.split_act if split is None else split
        x_hi, x_lo = split_bf16(x, with_lo=split_act)
        passes = [(x_hi, lin.tiles)]
        if split_act:
            passes.append((x_lo, lin.tiles))
        if lin.tiles_lo is not None:
            passes.append((x_hi, lin.tiles_lo))
        to_dev = self.xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE
        from_dev = self.xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_FROM_DEVICE
        kt, nt = len(lin.tiles), len(lin.tiles[0])
        y = np.empty((p, lin.n), dtype=np.float32)
        y[:] = lin.bias
        a = self.a_view
        busy = 0.0
        for m0 in range(0, p, s.M):
            rows = min(s.M, p - m0)
            for ki in range(kt):
                k0 = ki * s.K
                kc = min(s.K, k - k0)
                for x_bits, tiles in passes:
                    a[:rows, :kc] = x_bits[m0:m0 + rows, k0:k0 + kc]
                    if kc < s.K:
                        a[:rows, kc:] = 0
                    if rows < s.M:
                        a[rows:] = 0
                    self.a_bo.sync(to_dev)
                    runs = []
                    t0 = time.perf_counter()
                    try:
                        for ni in range(nt):
                            runs.append(self._launch(tiles[ki][ni], ni))
                    finally:
                        problem = self._wait_all(runs)
                        busy += (time.perf_counter() - t0) * 1000.0
                    self.launches += len(runs)
                    if problem is not None:
                        raise NpuLaunchError(f"{lin.name}: kernel run ended in state {problem}")
                    for ni in range(nt):
                        n0 = ni * s.N
                        nc = min(s.N, lin.n - n0)
                        self.c_bos[ni].sync(from_dev)
                        y[m0:m0 + rows, n0:n0 + nc] += self.c_views[ni][:rows, :nc]
        self.busy_ms += busy
        return y, busy

    def self_test(self) -> str:
        """One known full-tile product against numpy; raises NpuUnavailable on a mismatch.

        The operands are small multiples of 1/4 (exact in bfloat16) and every
        partial sum is a multiple of 1/16 below 2^11, so a float32 accumulator
        gives the exact answer: any difference is a wrong kernel, a wrong
        launch, a wrong layout or a wrong instruction count, not rounding.
        """
        s = self.spec
        i = np.arange(s.M)[:, None]
        j = np.arange(s.N)[None, :]
        kk = np.arange(s.K)
        a = (((i * 7 + kk[None, :] * 3) % 17) - 8).astype(np.float32) / 4.0
        b = (((kk[:, None] * 5 + j * 11) % 13) - 6).astype(np.float32) / 4.0
        want = a @ b
        wt = torch.from_numpy(b.T.copy())  # as an nn.Linear weight [N, K]
        lin = self.upload_linear("self-test", wt, None, split=False)
        try:
            got, busy = self.matmul(torch.from_numpy(a), lin, split=False)
        except Exception as err:  # noqa: BLE001
            raise NpuUnavailable(f"NPU self-test failed: the launch failed ({type(err).__name__}: {err}); "
                                 f"check npu_instr_units (now {self.instr_units!r}) and the kernel build") from None
        err = np.abs(got - want)
        if not np.all(np.isfinite(got)) or float(err.max()) > 1e-3:
            bad = np.unravel_index(int(np.argmax(np.where(np.isfinite(err), err, np.inf))), err.shape)
            zeros = " (the output is all zeros: the kernel did not run its instruction stream)" if not got.any() else ""
            raise NpuUnavailable(
                f"NPU self-test failed: {s.M}x{s.K}x{s.N} product differs from numpy by up to {float(np.nanmax(err)):.4g} "
                f"(at {tuple(int(v) for v in bad)}: got {float(got[bad]):.4g}, want {float(want[bad]):.4g}){zeros}; "
                f"check npu_instr_units (now {self.instr_units!r}) and that kernel.json matches the xclbin")
        return f"{s.M}x{s.K}x{s.N} bf16 product exact in {busy:.1f} ms"

    def close(self) -> None:
        for attr in ("c_views", "a_view", "c_bos", "a_bo", "insts_bo", "kernel", "context", "xclbin", "device"):
            if hasattr(self, attr):
                delattr(self, attr)
