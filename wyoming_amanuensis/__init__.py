"""Amanuensis: a fast local Whisper speech-to-text server for Home Assistant (Wyoming protocol)."""

__version__ = "0.1.0"
