"""Encoder on an AMD XDNA NPU: the four matrix products per layer on the NPU, the rest in torch.

Per layer: LayerNorm -> QKV (NPU) -> attention core (CPU) -> output
projection (NPU) -> residual -> LayerNorm -> MLP up (NPU) -> GELU -> MLP down
(NPU) -> residual. The layers are the CPU encoder's own code
(``AudioEncoder.run_layers`` with ``products``: the four products of each
layer are handed in as NPU calls), so the only difference from the torch
backend is where the products run and that their operands are rounded to
bfloat16 (float32 accumulation).

``open`` raises ``BackendUnavailable`` with the reason when this machine
cannot run it (no pyxrt, no device node, no kernel files, a failed
self-test). At run time a failed launch never fails the request: that
request is encoded on the CPU, ``fallback`` is set on its output and
``fallback_count`` goes up; after ``MAX_CONSECUTIVE_FAILURES`` failures in a
row the NPU is given up for the life of the process (every request then
runs on the CPU and is still counted as a fallback).
"""

from __future__ import annotations

import logging
import threading
import time
from functools import partial
from typing import Optional

import numpy as np
import torch

from ..config import Settings
from ..model.modules import AudioEncoder, Products
from ..model.silence import SilenceContext
from . import BackendUnavailable
from .base import EncoderOutput
from .npu_device import NpuDevice, NpuLinear, NpuUnavailable, find_device_node, find_kernel_files, import_pyxrt

_LOG = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILURES = 3


class NpuEncoderBackend:
    name = "npu"

    def __init__(self, encoder: AudioEncoder, npu: NpuDevice, layers: list[dict[str, NpuLinear]]):
        self.encoder = encoder
        self.npu = npu
        self.layers = layers
        self.products: list[Products] = [{name: partial(self._linear, lin=lin) for name, lin in layer.items()}
                                         for layer in layers]
        self.fallback_count = 0
        self.requests = 0
        self.consecutive_failures = 0
        self.last_error: Optional[str] = None
        self.disabled_reason: Optional[str] = None
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- set-up
    @classmethod
    def open(cls, encoder: AudioEncoder, settings: Settings, precision: Optional[str] = None) -> "NpuEncoderBackend":
        """``precision``: one of ``config.NPU_PRECISIONS``; default ``settings.npu_precision``."""
        t0 = time.perf_counter()
        precision = precision or settings.npu_precision
        try:
            pyxrt = import_pyxrt()
            node = find_device_node(settings.npu_device_index)
            files = find_kernel_files(settings.npu_kernel_dir)
            npu = NpuDevice(pyxrt, files, settings.npu_device_index, settings.npu_instr_units,
                            max_n=4 * encoder.dims.width, precision=precision)
            try:
                checked = npu.self_test()
                before = npu.bo_count
                layers = [cls._upload_block(npu, i, block) for i, block in enumerate(encoder.blocks)]
            except BaseException:
                npu.close()
                raise
        except NpuUnavailable as err:
            _LOG.warning("npu encoder backend unavailable: %s", err)
            raise BackendUnavailable(str(err)) from None
        except Exception as err:  # noqa: BLE001 - e.g. XRT running out of buffers during the upload
            _LOG.warning("npu encoder backend unavailable: set-up failed: %s: %s", type(err).__name__, err)
            raise BackendUnavailable(f"npu set-up failed: {type(err).__name__}: {err}") from None
        s = npu.spec
        _LOG.info("npu encoder backend ready on %s (%s): kernels %s, tile %dx%dx%d bf16->f32, precision %s, "
                  "instruction count in %s; self-test: %s; %d weight buffers uploaded, %.1f s",
                  npu.name, node, files.directory, s.M, s.K, s.N, precision, settings.npu_instr_units, checked,
                  npu.bo_count - before, time.perf_counter() - t0)
        return cls(encoder, npu, layers)

    @staticmethod
    def _upload_block(npu: NpuDevice, i: int, block) -> dict[str, NpuLinear]:
        return {name: npu.upload_linear(f"layer {i} {name}", lin.weight, lin.bias)
                for name, lin in block.linears().items()}

    @property
    def decoder_device(self) -> torch.device:
        return torch.device("cpu")

    # ---------------------------------------------------------------- requests
    def _linear(self, x: torch.Tensor, lin: NpuLinear) -> torch.Tensor:
        y, _ = self.npu.matmul(x[0], lin)
        return torch.from_numpy(y)[None]

    @torch.inference_mode()
    def silence(self, silent_mel: np.ndarray, chunk: int) -> tuple[torch.Tensor, SilenceContext]:
        """The all-silence window's encoding and layer keys/values, computed the way requests are (NPU)."""
        with self._lock:
            x = self.encoder.stem(torch.as_tensor(silent_mel).to("cpu", dtype=torch.float32))
            kv: list = []
            try:
                feats = self.encoder.run_layers(x, products=self.products, record=kv)
            except Exception as err:  # noqa: BLE001
                self._note_failure(err)
                self.fallback_count += 1
                kv = []
                feats = self.encoder.run_layers(x, record=kv)
            return feats, SilenceContext(kv, chunk)

    @torch.inference_mode()
    def encode(self, mel: np.ndarray, context: Optional[SilenceContext] = None) -> EncoderOutput:
        with self._lock:
            self.requests += 1
            # The stem is CPU work in both paths; bad input raises here, as it would on the CPU backend.
            x = self.encoder.stem(torch.as_tensor(mel).to("cpu", dtype=torch.float32))
            busy0 = self.npu.busy_ms
            if self.disabled_reason is None:
                try:
                    feats = self.encoder.run_layers(x, context, self.products)
                    self.consecutive_failures = 0
                    return EncoderOutput(features=feats, tail_cached=False, backend="npu",
                                         npu_ms=self.npu.busy_ms - busy0)
                except Exception as err:  # noqa: BLE001 - never fail a transcript for the NPU
                    self._note_failure(err)
            self.fallback_count += 1
            feats = self.encoder.run_layers(x, context)
            return EncoderOutput(features=feats, tail_cached=False, backend="cpu",
                                 npu_ms=self.npu.busy_ms - busy0, fallback=True)

    def _note_failure(self, err: Exception) -> None:
        self.consecutive_failures += 1
        self.last_error = f"{type(err).__name__}: {err}"
        _LOG.warning("npu encoder failed (%s); this request is encoded on the CPU (fallback %d)",
                     self.last_error, self.fallback_count + 1)
        if self.consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
            self.disabled_reason = f"{self.consecutive_failures} failed requests in a row, last: {self.last_error}"
            _LOG.error("npu encoder disabled until restart: %s; encoding on the CPU from now on", self.disabled_reason)

    def stats(self) -> dict:
        """Counters for telemetry (``EncoderBackend.stats``)."""
        return {
            "precision": self.npu.precision,
            "requests": self.requests,
            "fallbacks": self.fallback_count,
            "launches": self.npu.launches,
            "npu_busy_ms": round(self.npu.busy_ms, 3),
            "disabled": self.disabled_reason is not None,
            "disabled_reason": self.disabled_reason,
            "last_error": self.last_error,
        }

    def close(self) -> None:
        with self._lock:
            self.layers, self.products = [], []
            self.npu.close()
