"""A real server process for tests: ``python -m tunelab.cli.serve`` on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

STARTUP_SECONDS = 180  # a cold interpreter imports torch and transformers first


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base: str  # http://127.0.0.1:<port>
    log: Path  # the server's stdout and stderr


@contextmanager
def running_server(model: Path, log: Path, *options: str) -> Iterator[Server]:
    """Start the server on ``model`` with ``options``, wait until ``/health`` answers, and
    stop it on exit (terminate, then kill after 20 s; a process already gone is left)."""
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "tunelab.cli.serve", str(model), "--port", str(port), *options]
    env = {**os.environ, "TUNELAB_API_KEYS": ""}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + STARTUP_SECONDS
            while True:
                assert proc.poll() is None, log.read_text()
                try:
                    if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.time() < deadline, f"the server did not start: {log.read_text()}"
                time.sleep(0.25)
            yield Server(proc, base, log)
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
