"""Real servers started by the tests (`mlflow server`, `mlflow models serve`, `mlflow ui`,
`kedro viz run`) on free local ports, stopped with their workers at the end."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

START_TIMEOUT_S = 120  # a 2-core machine busy with other tests can take a while


def free_port() -> int:
    """A port nothing listens on (the system's pick, released at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def free_port_below_49152() -> int:
    """A free local port where kedro-viz takes one: it refuses those above 49151,
    where the system's own picks usually are."""
    for port in random.sample(range(20_000, 49_152), 100):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 20000 and 49151")


def answers(uri: str, route: str = "/health") -> bool:
    try:
        with urllib.request.urlopen(f"{uri}{route}", timeout=2):
            return True
    except OSError:
        return False


@contextmanager
def serving(command: list[str], cwd: Path, log: Path, health: str, port: int,
            env: dict[str, str] | None = None) -> Iterator[str]:
    """:func:`start`, then :func:`stop` at the end; its URL meanwhile."""
    server = start(command, cwd, log, health, port, env)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(server)


def start(command: list[str], cwd: Path, log: Path, health: str, port: int,
          env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``command`` (``{port}`` in it becomes ``port``) in its own process group,
    with this environment's scripts first on PATH (servers start uvicorn from there),
    its output added to ``log``; once ``health`` answers."""
    url = f"http://127.0.0.1:{port}"
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    server = subprocess.Popen(
        [part.format(port=port) for part in command], cwd=cwd, stdout=log.open("a"),
        stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "PATH": path, **(env or {})},
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while not answers(url, health):
        if server.poll() is not None or time.monotonic() > deadline:
            stop(server)
            raise AssertionError(f"{command[0]} did not start:\n{log.read_text()}")
        time.sleep(0.2)
    return server


def stop(server: subprocess.Popen) -> None:
    """Stop a server started by :func:`start` and its workers; SIGKILL if they do not
    go within 30 s."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
