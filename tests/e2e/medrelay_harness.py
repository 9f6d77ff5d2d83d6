"""Starts a real medrelay server on loopback for the Python e2e tests and mints tokens.

The Python twin of lib/server.mjs: free ports on 127.0.0.1, a fresh data dir, /healthz
polled until ready, `medrelay token` for tokens, SIGTERM then SIGKILL at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("MEDRELAY_BIN", ROOT / "target" / "debug" / "medrelay"))
ARTIFACTS = Path(os.environ.get("E2E_ARTIFACTS", ROOT / "target" / "e2e-artifacts"))
E2E_DIR = Path(__file__).resolve().parent


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    name: str
    proc: subprocess.Popen | None = None
    port: int = 0
    media_port: int = 0
    data_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="medrelay-py-")))
    log_path: Path | None = None
    mllp: bool = False  # also accept HL7 v2 over MLLP (on mllp_port)
    mllp_port: int = 0
    # HTTPS (and, with mllp, MLLP over TLS) with this certificate and key (see make_cert)
    tls: tuple[Path, Path] | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context trusting the server's certificate (None without TLS)."""
        return ssl.create_default_context(cafile=str(self.tls[0])) if self.tls else None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self, ready_timeout: float = 30.0) -> "Server":
        if not BIN.exists():
            raise RuntimeError(f"medrelay binary not found at {BIN} (run cargo build --bin medrelay)")
        (ARTIFACTS / "logs").mkdir(parents=True, exist_ok=True)
        self.log_path = ARTIFACTS / "logs" / f"{self.name}.server.log"
        last_err = ""
        for attempt in range(3):
            self.port = free_port(socket.SOCK_STREAM)
            self.media_port = free_port(socket.SOCK_DGRAM)
            args = [str(BIN), "serve", "--listen", f"127.0.0.1:{self.port}", "--media-port",
                    str(self.media_port), "--data-dir", str(self.data_dir)]
            if self.tls:
                args += ["--tls-cert", str(self.tls[0]), "--tls-key", str(self.tls[1])]
            if self.mllp:
                self.mllp_port = free_port(socket.SOCK_STREAM)
                args += ["--mllp-listen", f"127.0.0.1:{self.mllp_port}"]
                if self.tls:
                    args.append("--mllp-tls")
            log = open(self.log_path, "w" if attempt == 0 else "a")
            log.write("# " + " ".join(args) + "\n")
            log.flush()
            env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info"), "RUST_BACKTRACE": "1", "NO_COLOR": "1"}
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
            log.close()
            deadline = time.monotonic() + ready_timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    last_err = f"server exited early with {self.proc.returncode}"
                    break
                try:
                    with urllib.request.urlopen(f"{self.url}/healthz", timeout=1,
                                                context=self.ssl_context()) as r:
                        if r.status == 200:
                            return self
                except OSError as e:
                    last_err = str(e)
                time.sleep(0.1)
            else:
                last_err = f"/healthz not 200 within {ready_timeout} s ({last_err})"
                self.stop(keep_data=True)
                break
            # exited early (a port taken in between?): try other ports
        raise RuntimeError(f"medrelay did not become ready: {last_err}\n--- server log ---\n{self.log_tail()}")

    def token(self, room: str | None, identity: str, role: str, ttl: str = "2h") -> str:
        """A token; `room=None` for one that names no room (e.g. an ER console)."""
        args = [str(BIN), "token", "--data-dir", str(self.data_dir)]
        if room is not None:
            args += ["--room", room]
        args += ["--identity", identity, "--role", role, "--ttl", ttl]
        out = subprocess.run(args, check=True, capture_output=True, text=True, timeout=10)
        tok = out.stdout.strip().splitlines()[-1].strip() if out.stdout.strip() else ""
        if not tok:
            raise RuntimeError(f"medrelay token printed nothing: {out.stderr}")
        return tok

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except (OSError, AttributeError):
            return ""

    def stop(self, keep_data: bool = False) -> None:
        if self.proc and self.proc.poll() is None and self.log_path:
            try:
                with urllib.request.urlopen(f"{self.url}/metrics", timeout=2,
                                            context=self.ssl_context()) as r:
                    self.log_path.with_name(self.name + ".metrics.txt").write_bytes(r.read())
            except OSError:
                pass
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if not keep_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def make_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, made with openssl: (cert, key)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-subj", "/CN=localhost", "-days", "2", "-keyout", str(key), "-out", str(cert),
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=30)
    return cert, key


class ConsultProbe:
    """A headless Chromium consult page driven by tools/consult_probe.mjs.

    It prints one JSON object per line: {"event": "ready", "state": ...} once joined,
    {"event": "stats", "t": ms, "stats": [...], "state": ...} every half second, and
    {"event": "result", "ok": bool, ...} when its expectation is met or it gives up.
    """

    def __init__(self, server: Server, room: str, identity: str, role: str, *,
                 seconds: float = 30, expect_video_from: str | None = None,
                 min_frames: int = 30, fake_capture: list[str] | None = None):
        self.server = server
        self.args = [
            "node", str(E2E_DIR / "tools" / "consult_probe.mjs"),
            "--url", server.url, "--room", room, "--identity", identity,
            "--token", server.token(room, identity, role), "--seconds", str(seconds),
            "--min-frames", str(min_frames), "--tag", server.name,
        ]
        if expect_video_from:
            self.args += ["--expect-video-from", expect_video_from]
        for a in fake_capture or []:
            self.args += ["--chromium-arg", a]
        self.proc: asyncio.subprocess.Process | None = None
        self.events: list[dict] = []
        self.stderr_lines: list[str] = []
        self._ready = asyncio.Event()
        self._reader: asyncio.Task | None = None

    async def start(self, ready_timeout: float = 30.0) -> dict:
        self.proc = await asyncio.create_subprocess_exec(
            *self.args, cwd=str(E2E_DIR), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        self._reader = asyncio.ensure_future(self._read())
        self._err_reader = asyncio.ensure_future(self._read_err())
        try:
            await asyncio.wait_for(self._ready.wait(), ready_timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"consult probe did not join within {ready_timeout} s: {self.describe()}")
        ready = next(e for e in self.events if e.get("event") == "ready")
        if ready.get("state", {}).get("error"):
            raise AssertionError(f"consult probe failed to join: {ready}")
        return ready

    async def _read(self) -> None:
        assert self.proc and self.proc.stdout
        async for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                self.stderr_lines.append("stdout: " + line.decode(errors="replace").rstrip())
                continue
            self.events.append(ev)
            if ev.get("event") in ("ready", "fatal"):
                self._ready.set()

    async def _read_err(self) -> None:
        assert self.proc and self.proc.stderr
        async for line in self.proc.stderr:
            self.stderr_lines.append(line.decode(errors="replace").rstrip())

    async def wait(self, timeout: float) -> int:
        assert self.proc
        rc = await asyncio.wait_for(self.proc.wait(), timeout)
        await asyncio.wait_for(self._reader, 5)
        return rc

    def result(self) -> dict | None:
        return next((e for e in reversed(self.events) if e.get("event") == "result"), None)

    def last_stats(self) -> list[dict]:
        ev = next((e for e in reversed(self.events) if e.get("event") == "stats"), None)
        return ev["stats"] if ev else []

    async def stop(self) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    def describe(self) -> str:
        tail = [e for e in self.events if e.get("event") != "stats"] + self.events[-2:]
        return json.dumps(tail)[-3000:] + "\n--- probe stderr ---\n" + "\n".join(self.stderr_lines[-30:])
