"""Encoder on torch: CPU, or CUDA where a GPU is present."""

from __future__ import annotations

import copy

import numpy as np
import torch

from typing import Optional

from ..model.modules import AudioEncoder
from ..model.quantize import row_int8_linears
from ..model.silence import SilenceContext
from .base import EncoderOutput


class TorchEncoderBackend:
    def __init__(self, encoder: AudioEncoder, device: str = "cpu", int8: bool = False):
        self.name = "cuda" if device.startswith("cuda") else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda":
            # float16 on the GPU: the encoder is the bulk of the FLOPs and Whisper tolerates it well.
            self.encoder = copy.deepcopy(encoder).to(self.device, dtype=torch.float16)
            self.dtype = torch.float16
        elif int8:
            # In place (the CPU backend is the float encoder's only user): per-row activation
            # scales, as the decoder's. torch's per-tensor scale took corpus WER to 9 %.
            self.encoder = row_int8_linears(encoder)
            self.dtype = torch.float32
        else:
            self.encoder = encoder
            self.dtype = torch.float32

    @property
    def decoder_device(self) -> torch.device:
        return self.device

    @torch.inference_mode()
    def silence(self, silent_mel: np.ndarray, chunk: int) -> tuple[torch.Tensor, SilenceContext]:
        kv: list = []
        feats = self.encoder(torch.as_tensor(silent_mel).to(self.device, dtype=self.dtype), record=kv)
        return feats.float(), SilenceContext(kv, chunk)

    @torch.inference_mode()
    def encode(self, mel: np.ndarray, context: Optional[SilenceContext] = None) -> EncoderOutput:
        x = torch.as_tensor(mel).to(self.device, dtype=self.dtype, non_blocking=True)
        feats = self.encoder(x, context).float()
        return EncoderOutput(features=feats, tail_cached=False, backend=self.name)

    def stats(self) -> None:
        """Nothing beyond the pipeline's own timings."""
        return None

    def close(self) -> None:
        pass
