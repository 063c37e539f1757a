"""A model on torch: the modules (from the prepared-model cache or model.bin), the encoder
backend chosen among NPU, CUDA and CPU (``encoders.select_backend``), the silence encoding
(from its disk cache or computed by that backend) and the decoder network beside it.

The CUDA and NPU backends always load here; the CPU does with ``--cpu-runtime torch``
(``runtime_choice``). Importing this module imports torch.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from ..config import Settings
from ..encoders import EncoderBackend, select_backend
from ..mel import N_FRAMES_30S, log_mel
from .loader import WhisperModel, load_model
from .silence import SilenceContext
from .silence_cache import SilenceEncoding, cached_silence
from .torch_net import TorchDecoderNet

_LOG = logging.getLogger(__name__)


def _decoder_on_cpu(settings: Settings) -> bool:
    """Whether the decoder will run on the CPU, known before the backend is chosen (CUDA
    keeps it on the GPU): then it is quantised while the model loads."""
    if settings.encoder_backend == "cuda":
        return False
    return settings.encoder_backend != "auto" or not torch.cuda.is_available()


def _backend_key(backend: EncoderBackend, settings: Settings) -> str:
    """What the silence encoding depends on besides the weights: the backend and its precision."""
    if backend.name == "npu":
        precision = settings.npu_precision
    elif backend.name == "cpu":
        precision = "int8" if settings.int8_encoder else "f32"
    else:
        precision = "f16"
    return f"{backend.name}-{precision}-torch{torch.__version__}"


def load_torch(name: str, settings: Settings) -> tuple[WhisperModel, EncoderBackend, TorchDecoderNet, Any]:
    """(model, encoder backend, decoder network, the encoder's silence context)."""
    torch.set_num_threads(settings.cpu_threads())
    t0 = time.perf_counter()
    int8_bits = settings.int8_decoder_bits if settings.int8_decoder and _decoder_on_cpu(settings) else 0
    model = load_model(name, int8_bits=int8_bits, cache_dir=settings.silence_cache_dir())
    t1 = time.perf_counter()
    backend = select_backend(model.encoder, settings)
    t2 = time.perf_counter()
    chunk = settings.silence_chunk or 1

    def compute() -> SilenceEncoding:
        silent_mel = log_mel(np.zeros(0, dtype=np.float32), model.dims.n_mels, n_frames=N_FRAMES_30S)
        features, context = backend.silence(silent_mel[None], chunk)
        return SilenceEncoding(features, [(layer.k, layer.v) for layer in context.layers])

    silence = cached_silence(settings.silence_cache_dir(), model.name, model.files,
                             _backend_key(backend, settings), compute)
    t3 = time.perf_counter()
    device = backend.decoder_device
    context = SilenceContext([(k.to(device), v.to(device)) for k, v in silence.kv], chunk)
    net = TorchDecoderNet(model.decoder, silence.features.to(device), model.alignment_heads, device=device,
                          int8_bits=settings.int8_decoder_bits if settings.int8_decoder and device.type == "cpu" else 0,
                          tail_chunk=settings.decoder_tail_chunk)
    _LOG.info("model %s load phases (torch): weights %.0f ms, encoder backend %.0f ms, silence encoding %.0f ms, "
              "decoder set-up %.0f ms", model.name, (t1 - t0) * 1000, (t2 - t1) * 1000, (t3 - t2) * 1000,
              (time.perf_counter() - t3) * 1000)
    return model, backend, net, context
