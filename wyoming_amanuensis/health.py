"""``python -m wyoming_amanuensis health``: send ``describe``, exit 0 on a usable ``info``.

For Docker's HEALTHCHECK and the add-on's discovery step. Healthy means what
Home Assistant needs: an answer within the timeout holding at least one
installed ASR program with at least one installed model. Exit 1 otherwise,
with the reason on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Optional, Sequence
from urllib.parse import urlparse

from wyoming.client import AsyncClient
from wyoming.error import Error
from wyoming.info import Describe, Info

from .config import ENV_PREFIX

DEFAULT_URI = "tcp://127.0.0.1:10300"


def _client_uri(uri: str) -> str:
    """A server listening on 0.0.0.0 is reached on 127.0.0.1."""
    parsed = urlparse(uri)
    if parsed.scheme == "tcp" and parsed.hostname in ("0.0.0.0", "", "::", None):
        return f"tcp://127.0.0.1:{parsed.port}"
    return uri


async def check(uri: str, timeout: float) -> Optional[str]:
    """None if healthy, else why not."""
    if uri.startswith("stdio://"):
        return "a stdio:// server cannot be checked from outside"

    async def ask() -> Optional[str]:
        async with AsyncClient.from_uri(_client_uri(uri)) as client:
            await client.write_event(Describe().event())
            while True:
                event = await client.read_event()
                if event is None:
                    return "connection closed before info"
                if Error.is_type(event.type):
                    return f"server error: {event.data.get('text')}"
                if Info.is_type(event.type):
                    info = Info.from_event(event)
                    for program in info.asr:
                        if program.installed and any(m.installed for m in program.models):
                            return None
                    return "info lists no installed speech-to-text program and model"

    try:
        return await asyncio.wait_for(ask(), timeout)
    except asyncio.TimeoutError:
        return f"no info within {timeout:g} s"
    except (OSError, ValueError) as err:
        return f"cannot connect to {uri}: {err}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="wyoming_amanuensis health",
                                     description="Send describe to a running server; exit 0 if it answers with info.")
    parser.add_argument("--uri", default=os.environ.get(ENV_PREFIX + "URI") or DEFAULT_URI,
                        help=f"server to check (default: ${ENV_PREFIX}URI or {DEFAULT_URI}; 0.0.0.0 means 127.0.0.1)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for info (default: 5)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing when healthy")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    problem = asyncio.run(check(args.uri, args.timeout))
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"healthy: {_client_uri(args.uri)}")
    return 0
