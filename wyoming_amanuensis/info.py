"""What the server says about itself: the ``info`` answer to ``describe``, built once at start-up."""

from __future__ import annotations

from wyoming.info import AsrModel, AsrProgram, Attribution, Info

from . import __version__
from .config import Settings
from .pipeline import Engine
from .request import PROGRAM_NAME

PROJECT_URL = "https://github.com/amanuensis-stt/wyoming-amanuensis"


def build_info(engine: Engine, settings: Settings) -> Info:
    whisper = Attribution(name="OpenAI Whisper", url="https://github.com/openai/whisper")
    models = [
        AsrModel(name=name, description=f"Whisper {name}", attribution=whisper, installed=True,
                 languages=list(languages), version=None)
        for name, languages in engine.model_languages().items()
    ]
    return Info(asr=[AsrProgram(
        name=PROGRAM_NAME,
        description=f"Amanuensis: local Whisper speech-to-text (encoder on {engine.encoder_backend}; "
                    f"{engine.energy_status().describe()})",
        attribution=Attribution(name="Amanuensis", url=PROJECT_URL),
        installed=True,
        version=__version__,
        models=models,
        supports_transcript_streaming=bool(settings.streaming),
        # With server endpointing the client may stream until we answer (Wyoming 1.10, HA 2026.5+).
        requires_external_vad=settings.vad_endpointing is None,
    )])
