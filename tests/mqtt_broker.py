"""A real Mosquitto broker for tests: its own config, port and log in a tmp dir.

``script/test`` installs the ``mosquitto`` Debian package. A missing broker
fails the tests that need it with that message: a skip would let a broken
install pass unseen.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import aiomqtt


def mosquitto_binary() -> Optional[str]:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).is_file()), None)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@dataclass
class MosquittoBroker:
    """One broker process on 127.0.0.1. The port stays the same across
    :meth:`kill` / :meth:`start`, as a real broker's would after a restart."""

    workdir: Path
    port: int = field(default_factory=free_port)
    users: dict[str, str] = field(default_factory=dict)   # non-empty: password_file, no anonymous access
    tls: Optional[TlsFiles] = None                        # set: TLS listener requiring a client certificate
    proc: Optional[subprocess.Popen] = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        # user: as root, mosquitto would switch to its own user, which cannot read pytest tmp dirs.
        lines = [f"listener {self.port} 127.0.0.1", f"user {getpass.getuser()}", "persistence false",
                 "log_dest stderr", "log_type all"]
        if self.users:
            pwfile = self.workdir / "passwords"
            pwfile.touch()
            for user, password in self.users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(pwfile), user, password], check=True,
                               capture_output=True)
            pwfile.chmod(0o600)  # mosquitto 2.x warns about (and will refuse) world-readable files
            lines += [f"password_file {pwfile}", "allow_anonymous false"]
        else:
            lines.append("allow_anonymous true")
        if self.tls:
            lines += [f"cafile {self.tls.ca}", f"certfile {self.tls.server_cert}",
                      f"keyfile {self.tls.server_key}", "require_certificate true"]
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 10.0) -> "MosquittoBroker":
        binary = mosquitto_binary()
        assert binary, "mosquitto is not installed (script/test installs it)"
        # stderr, not log_dest file: mosquitto buffers its log file, stderr is written at once.
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([binary, "-c", str(self.conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited {self.proc.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """kill -9: no clean disconnects, retained messages gone (persistence is off)."""
        self._end(signal.SIGKILL)

    def restart(self) -> "MosquittoBroker":
        self.kill()
        return self.start()

    def _end(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def make_tls_files(workdir: Path) -> TlsFiles:
    """A throwaway CA plus a server certificate for 127.0.0.1/localhost and a client certificate."""
    workdir.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=workdir)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")  # EC: key generation takes ms, not seconds
    openssl("req", "-x509", *ec, "-nodes", "-days", "2", "-subj", "/CN=amanuensis-test-ca",
            "-keyout", "ca.key", "-out", "ca.crt")
    (workdir / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, cn in (("server", "localhost"), ("client", "amanuensis-client")):
        openssl("req", *ec, "-nodes", "-subj", f"/CN={cn}", "-keyout", f"{name}.key",
                "-out", f"{name}.csr")
        ext = ["-extfile", "san.ext"] if name == "server" else []
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-out", f"{name}.crt", *ext)
    return TlsFiles(ca=workdir / "ca.crt", server_cert=workdir / "server.crt", server_key=workdir / "server.key",
                    client_cert=workdir / "client.crt", client_key=workdir / "client.key")


class Subscriber:
    """A plain aiomqtt client that collects what arrives on some topics, for assertions."""

    def __init__(self, broker: MosquittoBroker, *topics: str, **client_kw: Any) -> None:
        self.broker = broker
        self.topics = topics or ("#",)
        self.client_kw = client_kw
        self.messages: list[aiomqtt.Message] = []
        self._task: Optional[asyncio.Task] = None
        self._subscribed = asyncio.Event()

    async def __aenter__(self) -> "Subscriber":
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._subscribed.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        async with aiomqtt.Client("127.0.0.1", self.broker.port, **self.client_kw) as client:
            for topic in self.topics:
                await client.subscribe(topic, qos=1)
            self._subscribed.set()
            async for message in client.messages:
                self.messages.append(message)

    def on(self, topic: str) -> list[aiomqtt.Message]:
        return [m for m in self.messages if m.topic.matches(topic)]

    def json_on(self, topic: str) -> list[dict]:
        return [json.loads(m.payload) for m in self.on(topic)]

    async def wait_for(self, predicate: Callable[["Subscriber"], Any], timeout: float = 10.0,
                       what: str = "messages") -> Any:
        """Poll until predicate(self) is truthy; return its value."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            value = predicate(self)
            if value:
                return value
            if self._task is not None and self._task.done():
                self._task.result()  # surface the subscriber's own failure
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; got "
                                     f"{[(m.topic.value, m.payload[:80]) for m in self.messages]}")
            await asyncio.sleep(0.02)


async def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)
