"""A real redis-server for the examples' tests, their benchmark and `python -m examples.outbox`:
127.0.0.1, a free port, its own folder, and persistence on (an append-only file, fsynced on every
write)."""

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

MISSING = (
    "redis-server is not on PATH: apt-get install redis-server (Debian, Ubuntu), "
    "brew install redis (macOS), or your package manager's equivalent"
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """Starts, kills and restarts one redis-server; a context manager that stops it at the end.

    The server runs in a session of its own, so that Ctrl-C in a terminal reaches only the
    process that started it, which stops it last, after the services that use it.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError(MISSING)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._process = subprocess.Popen(
            [
                executable,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--dir", str(self.folder),
                "--appendonly", "yes",
                "--appendfsync", "always",
                "--save", "",
                "--daemonize", "no",
                "--logfile", "redis.log",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        try:
            while not self._answers():
                if self._process.poll() is not None or time.monotonic() > deadline:
                    log = (self.folder / "redis.log").read_text(errors="replace")
                    raise RuntimeError(f"redis-server did not start on port {self.port}:\n{log}")
                time.sleep(0.01)
        except BaseException:
            self.kill()  # whatever cut the wait short, Ctrl-C included: no server left behind
            raise

    def kill(self) -> None:
        """SIGKILL: what it wrote to its append-only file is all that survives."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM: it writes what it holds and exits; SIGKILL if it has not within 10 s."""
        self._end(signal.SIGTERM)

    def _end(self, how: signal.Signals) -> None:
        if self._process is not None:
            self._process.send_signal(how)  # nothing, if it has exited already
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as connection:
                connection.sendall(b"PING\r\n")
                return connection.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def __enter__(self) -> "RedisServer":
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
