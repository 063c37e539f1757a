"""Command line: ``serve`` (default), ``transcribe FILE...``, ``health``.

    python -m wyoming_amanuensis --uri tcp://0.0.0.0:10300     # serve
    python -m wyoming_amanuensis transcribe clip.wav --json
    python -m wyoming_amanuensis health --uri tcp://127.0.0.1:10300
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from . import __version__
from .config import ConfigError, build_parser, load_settings

COMMANDS = ("serve", "transcribe", "health")


def _settings_parser(prog: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=description, parents=[build_parser()],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("--version", "-V"):
        print(__version__)
        return 0
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "serve"

    if command == "health":
        from .health import main as health_main

        return health_main(argv)

    if command == "transcribe":
        parser = _settings_parser("wyoming_amanuensis transcribe", "Transcribe audio files and print the text and per-stage timings.")
        parser.add_argument("files", nargs="+", metavar="FILE", help="audio files (anything soundfile reads)")
        parser.add_argument("--json", action="store_true", help="one JSON object per file")
        parser.add_argument("--repeat", type=int, default=1, help="transcribe each file N times (timings of the last)")
    else:
        parser = _settings_parser("wyoming_amanuensis", "Wyoming speech-to-text server (Whisper; NPU, CUDA or CPU encoder).")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args)
    except ConfigError as err:
        parser.error(str(err))
    logging.basicConfig(level=logging.DEBUG if settings.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    if command == "transcribe":
        from .transcribe_cli import run as transcribe_run

        return transcribe_run(settings, args.files, as_json=args.json, repeat=args.repeat)

    from .app import run as serve_run

    return serve_run(settings)


if __name__ == "__main__":
    sys.exit(main())
