"""Shared fixtures.

``amanuensis_server``: ONE real server subprocess for the whole session
(``python -m wyoming_amanuensis``, default model tiny.en plus base for tests
that need the multilingual model), started on a free port and ready once it
answers ``describe``. ``server_factory`` starts further servers with their
own flags (each stopped at the end of the session).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest

REPO = Path(__file__).resolve().parents[1]

# ``home_assistant_core``: a real Home Assistant core (cached venv, Python 3.13), see that module.
pytest_plugins = ("tests.home_assistant_core",)

# Model flags of the shared server: tiny.en answers fast; base is there for
# multilingual and accuracy-sensitive tests (select it with Transcribe(name="base")).
# One torch thread: the test process and the server share two cores, and torch
# spinning on every core while another process runs is many times slower.
SHARED_SERVER_ARGS = ("--model", "tiny.en", "--extra-models", "base", "--encoder-backend", "cpu", "--threads", "1")


# What the server logs once its models are loaded (lifetime.EngineHost).
READY_LINE = "models ready to transcribe"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _describe_ok(host: str, port: int, timeout: float = 2.0) -> bool:
    from wyoming.event import read_event, write_event
    from wyoming.info import Describe

    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            f = sock.makefile("rwb")
            write_event(Describe().event(), f)
            f.flush()
            event = read_event(f)
            return event is not None and event.type == "info"
    except OSError:
        return False


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    uri: str
    log_path: Path
    host: str = ""
    port: int = 0

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float = 30.0) -> Optional[int]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def start_server(extra_args: tuple = (), *, log_path: Path, uri: Optional[str] = None,
                 model_args: tuple = SHARED_SERVER_ARGS, env: Optional[dict] = None,
                 startup_timeout: float = 240.0, wait_loaded: bool = True) -> ServerProcess:
    """Start ``python -m wyoming_amanuensis`` and wait until it answers describe (tcp) or
    logs that it listens (unix), and (``wait_loaded``) until its models are loaded."""
    port = 0
    if uri is None:
        port = free_port()
        uri = f"tcp://127.0.0.1:{port}"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "wyoming_amanuensis", "--uri", uri, *model_args, *extra_args],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
    )
    server = ServerProcess(proc=proc, uri=uri, log_path=log_path, host="127.0.0.1" if port else "", port=port)
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()}")
        answering = _describe_ok("127.0.0.1", port) if port else "listening on" in server.log()
        # The port answers while the models still load (--preload); the tests time requests, so
        # they start once the engine is there.
        if answering and (not wait_loaded or READY_LINE in server.log()):
            return server
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"server did not start within {startup_timeout} s:\n{server.log()}")


@pytest.fixture(scope="session")
def server_factory(tmp_path_factory) -> Callable[..., ServerProcess]:
    started: list[ServerProcess] = []

    def factory(extra_args: tuple = (), **kw) -> ServerProcess:
        log_path = tmp_path_factory.mktemp("server") / "server.log"
        server = start_server(extra_args, log_path=log_path, **kw)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def amanuensis_server(server_factory) -> ServerProcess:
    """The shared real server (tcp on 127.0.0.1, a free port)."""
    return server_factory()


@pytest.fixture
def wyoming_uri(amanuensis_server) -> str:
    return amanuensis_server.uri

