"""Running a server as a subprocess on this machine: a free loopback port, and waiting until
the process answers `GET /health` (used by the HTTP tests and `benchmarks/serve_load.py`)."""

from __future__ import annotations

import socket
import subprocess
import time

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_healthy(
    proc: subprocess.Popen[str], url: str, timeout: float, poll: float = 0.25
) -> None:
    """Return once `url`/health answers 200. Raises RuntimeError (with the end of its stderr)
    if the process exits first, TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            err = proc.communicate()[1] or ""
            raise RuntimeError(f"server exited with code {proc.returncode}: {err[-4000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not become healthy within {timeout:.0f} s")
        time.sleep(poll)
