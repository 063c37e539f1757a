"""IRON design: the fixed-shape bf16 GEMM the NPU encoder backend launches.

    C[M, N] (f32) = A[M, K] (bf16) @ B[K, N] (bf16)        A, B, C row-major in host memory

One launch computes one such product on the whole AIE array; the host
(wyoming_amanuensis/encoders/npu_device.py) tiles every encoder matrix product
of Whisper tiny and base (QKV, attention output, MLP up, MLP down) to this
shape, zero-pads the ragged edge and sums the K-partials in float32. The
default shape, 256 x 512 x 512, covers base's width (512) in one K-tile, tiny's
(384) with padding, and 256 encoder positions (5 s of audio) per M-tile.

Array use (npu2 = XDNA2: 4 rows x 8 columns of compute tiles; npu1 = XDNA1:
4 x 4): core (row i, column j) accumulates the output blocks C[i*m:(i+1)*m,
(j + c*cols)*n : ...] for c = 0 .. N/(n*cols)-1, looping over K in steps of k.
A row block of A is split across the four rows (each row of cores gets its own
m x k blocks, the same for every column); B column blocks are split across
the columns (the same for every row). Each core zeroes its f32 accumulator,
runs mlir-aie's vectorised ``matmul_bf16_f32`` microkernel (aie_kernels/<aie2|
aie2p>/mm.cc, compiled with -Dbf16_f32_ONLY -DDIM_M=m -DDIM_K=k -DDIM_N=n) K/k
times, and releases it; the memory tile of each column joins the four rows'
blocks into one (4m x n) block that the shim DMA writes back to C.

The microkernel reads its operands in r x s (A), s x t (B) and r x t (C)
sub-blocks; the memory-tile DMAs do that re-layout on the fly
(``dims_to_stream``), so the host keeps plain row-major buffers. r, s, t are
4, 8, 8 for bf16 on both generations unless bf16 matmuls are emulated with
bfp16 on aie2p (r = 8), which we do not do: bfp16 shares one exponent across
eight values and would lose the accuracy the backend is tested for.

Usage (see npu/Makefile): python3 gemm_bf16.py --dev npu2 -M 256 -K 512 -N 512 -m 64 -k 64 -n 32 > gemm.mlir

Written against mlir-aie's IRON API (aie.iron; the structure of its
programming_examples/basic/matrix_multiplication/whole_array design). It has
not been compiled on this project's machines (no mlir-aie there): see
npu/README.md for how to build it and npu/check_on_hardware.sh to verify it.
"""

from __future__ import annotations

import argparse

import numpy as np
from ml_dtypes import bfloat16

from aie.helpers.taplib import TensorTiler2D
from aie.iron import Kernel, ObjectFifo, Program, Runtime, Worker
from aie.iron.controlflow import range_
from aie.iron.device import NPU1Col4, NPU2, Tile
from aie.iron.placers import SequentialPlacer

ROWS = 4  # compute rows on both generations


def design(dev: str, M: int, K: int, N: int, m: int, k: int, n: int, cols: int, bfp16: bool):
    r, s, t = (8 if bfp16 else 4), 8, 8
    if dev == "npu1" and cols > 4:
        raise ValueError("npu1 (XDNA1) has 4 columns")
    if dev == "npu2" and cols > 8:
        raise ValueError("npu2 (XDNA2) has 8 columns")
    checks = {
        f"M ({M}) must be a multiple of m*{ROWS} ({m * ROWS})": M % (m * ROWS) == 0,
        f"K ({K}) must be a multiple of k ({k})": K % k == 0,
        f"N ({N}) must be a multiple of n*cols ({n * cols})": N % (n * cols) == 0,
        f"m ({m}) must be a multiple of 2r ({2 * r})": m % (2 * r) == 0,
        f"k ({k}) must be a multiple of s ({s})": k % s == 0,
        f"n ({n}) must be a multiple of 2t ({2 * t})": n % (2 * t) == 0,
    }
    bad = [msg for msg, ok in checks.items() if not ok]
    if bad:
        raise ValueError("; ".join(bad))

    row_blocks = M // (m * ROWS)  # how many 4m-row blocks of A / C
    col_steps = N // (n * cols)  # output blocks per core per row block
    per_core = row_blocks * col_steps
    # A fifos: one per compute row; on npu2 use every other column's shim/memory tile for them.
    a_shims = [2 * i if cols == 8 else i % cols for i in range(ROWS)]

    a_ty = np.ndarray[(M * K,), np.dtype[bfloat16]]
    b_ty = np.ndarray[(K * N,), np.dtype[bfloat16]]
    c_ty = np.ndarray[(M * N,), np.dtype[np.float32]]
    a_blk = np.ndarray[(m, k), np.dtype[bfloat16]]
    b_blk = np.ndarray[(k, n), np.dtype[bfloat16]]
    c_blk = np.ndarray[(m, n), np.dtype[np.float32]]
    c_col = np.ndarray[(ROWS * m * n,), np.dtype[np.float32]]

    obj = f"mm_{m}x{k}x{n}.o"
    zero = Kernel("zero_f32", obj, [c_blk])
    matmul = Kernel("matmul_bf16_f32", obj, [a_blk, b_blk, c_blk])

    # Row-major (m x k) block -> the microkernel's (r x s) sub-blocks, row of sub-blocks after row.
    a_relayout = [(m // r, r * k), (k // s, s), (r, k), (s, 1)]
    # Row-major (k x n) block -> (s x t) sub-blocks.
    b_relayout = [(k // s, s * n), (n // t, t), (s, n), (t, 1)]
    # (r x t) sub-blocks of the accumulator -> row-major rows of the (4m x n) column block.
    c_relayout = [(m // r, r * n), (r, t), (n // t, r * t), (t, 1)]

    a_l3 = []
    a_l1 = []
    for i in range(ROWS):
        fifo = ObjectFifo(a_blk, name=f"a_l3_{i}")
        a_l3.append(fifo)
        a_l1.append(fifo.cons().forward(obj_type=a_blk, name=f"a_l1_{i}", dims_to_stream=a_relayout,
                                        placement=Tile(a_shims[i], 1)))
    b_l3 = []
    b_l1 = []
    c_l3 = []
    c_l1 = [[None] * cols for _ in range(ROWS)]
    for j in range(cols):
        fifo = ObjectFifo(b_blk, name=f"b_l3_{j}")
        b_l3.append(fifo)
        b_l1.append(fifo.cons().forward(obj_type=b_blk, name=f"b_l1_{j}", dims_to_stream=b_relayout,
                                        placement=Tile(j, 1)))
        out = ObjectFifo(c_col, name=f"c_l3_{j}", dims_to_stream=c_relayout)
        c_l3.append(out)
        parts = out.prod().join([m * n * i for i in range(ROWS)], obj_types=[c_blk] * ROWS,
                                names=[f"c_l1_{i}_{j}" for i in range(ROWS)], placement=Tile(j, 1))
        for i in range(ROWS):
            c_l1[i][j] = parts[i]

    def core(a_in, b_in, c_out, zero_fn, matmul_fn):
        for _ in range_(per_core) if per_core > 1 else range(1):
            acc = c_out.acquire(1)
            zero_fn(acc)
            for _ in range_(K // k):
                a = a_in.acquire(1)
                b = b_in.acquire(1)
                matmul_fn(a, b, acc)
                a_in.release(1)
                b_in.release(1)
            c_out.release(1)

    workers = [
        Worker(core, [a_l1[i].cons(), b_l1[j].cons(), c_l1[i][j].prod(), zero, matmul], placement=Tile(j, 2 + i))
        for i in range(ROWS) for j in range(cols)
    ]

    # Host-side access patterns. A: row i of the cores reads the m-row strip (rb*ROWS + i) of A, all of K
    # in k-wide blocks, once per output block it computes. B: column j reads the n-wide column strips
    # j, j+cols, ... of B, all of K each. C: column j writes (4m x n) blocks at the same column strips.
    a_taps = TensorTiler2D.group_tiler((M, K), (m, k), (1, K // k), pattern_repeat=col_steps)
    b_taps = TensorTiler2D.step_tiler((K, N), (k, n), tile_group_repeats=(K // k, col_steps),
                                      tile_group_steps=(1, cols), tile_group_col_major=True)
    c_taps = TensorTiler2D.step_tiler((M, N), (m * ROWS, n), tile_group_repeats=(1, col_steps),
                                      tile_group_steps=(1, cols))

    rt = Runtime()
    with rt.sequence(a_ty, b_ty, c_ty) as (A, B, C):
        rt.start(*workers)
        for rb in range(row_blocks):  # one task group per row block: bounded buffer descriptors
            tg = rt.task_group()
            for j in range(cols):
                rt.drain(c_l3[j].cons(), C, tap=c_taps[rb * cols + j], wait=True, task_group=tg,
                         placement=Tile(j, 0))
                rt.fill(b_l3[j].prod(), B, tap=b_taps[j], task_group=tg, placement=Tile(j, 0))
            for i in range(ROWS):
                rt.fill(a_l3[i].prod(), A, tap=a_taps[rb * ROWS + i], task_group=tg, placement=Tile(a_shims[i], 0))
            rt.finish_task_group(tg)

    device = NPU2() if dev == "npu2" else NPU1Col4()
    return Program(device, rt).resolve_program(SequentialPlacer())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dev", choices=("npu2", "npu1"), default="npu2")
    p.add_argument("-M", type=int, default=256)
    p.add_argument("-K", type=int, default=512)
    p.add_argument("-N", type=int, default=512)
    p.add_argument("-m", type=int, default=64)
    p.add_argument("-k", type=int, default=64)
    p.add_argument("-n", type=int, default=32)
    p.add_argument("--cols", type=int, default=None, help="AIE columns (default: 8 on npu2, 4 on npu1)")
    p.add_argument("--bfp16", type=int, choices=(0, 1), default=0,
                   help="1 if mm.cc was built with AIE_API_EMULATE_BFLOAT16_MMUL_WITH_BFP16 (not recommended)")
    a = p.parse_args()
    cols = a.cols or (8 if a.dev == "npu2" else 4)
    print(design(a.dev, a.M, a.K, a.N, a.m, a.k, a.n, cols, bool(a.bfp16)))


if __name__ == "__main__":
    main()
