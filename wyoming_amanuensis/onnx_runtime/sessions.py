"""The one way this runtime opens an ONNX Runtime session on the CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Union

import onnxruntime as ort


def cpu_session(model: Union[str, Path, bytes], threads: int) -> ort.InferenceSession:
    """The set-up session 7's prototype measured (RESULTS.md; "ext-nopat+flash+pread"):

    - ``threads`` intra-op threads, sequential execution (one request's graph at a time; the
      server runs requests on its own threads);
    - memory pattern off: it plans one block per input shape, and every request has its own
      window length, so it only grew the memory;
    - CPU arena on (reused buffers between steps);
    - weights prepacked (ORT's default: the matmul kernels' layout, built once at load; the
      external .weights file is mapped, not copied);
    - intra-op threads that sleep between runs instead of spinning: each session has its own
      pool, and a spinning encoder pool competes with the decoder's for the same cores. At 2
      threads on 2 cores a command took 181 ms with spinning, 105 ms without, against 142 ms
      at 1 thread (benchmarks/RESULTS.md, session 8).
    """
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.enable_mem_pattern = False
    so.enable_cpu_mem_arena = True
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3  # ORT's own warnings (unused initializers etc.) are not the user's business
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), so,
                                providers=["CPUExecutionProvider"])
