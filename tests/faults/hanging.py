"""Local servers for the tests of reads over the network: files served over HTTP, and
servers that take a connection and then do not answer, for the bounds on those reads
(a socket that never replies, an HTTP server that answers ``/health`` and holds every
other request, and a proxy in front of a real server that can be made to hold its API
mid-run)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOLD_S = 600  # longer than any test waits


@contextmanager
def files_over_http(files: dict[str, bytes], statuses: dict[str, int] | None = None
                    ) -> Iterator[str]:
    """``http://127.0.0.1:<port>`` of a server of ``files`` by path, which honours byte
    ranges as web servers and object stores do; a path of ``statuses`` answers that
    status, any other path 404."""
    statuses = statuses or {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = files.get(self.path)
            if body is None:
                self.send_response(statuses.get(self.path, 404))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            asked = self.headers.get("Range")
            if asked:
                first, last = asked.removeprefix("bytes=").split("-")
                body = body[int(first):int(last) + 1]
            self.send_response(206 if asked else 200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def silent_host() -> Iterator[str]:
    """``http://127.0.0.1:<port>`` of a socket that listens and never replies: the
    system accepts connections into its backlog, so a client connects and then waits."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        yield f"http://127.0.0.1:{silent.getsockname()[1]}"


@contextmanager
def health_only() -> Iterator[str]:
    """The URI of an HTTP server that answers ``GET /health`` and holds every other
    request without a word, as an MLflow server whose database hangs does."""
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/health":
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")
            else:
                release.wait(HOLD_S)

        do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        release.set()
        server.shutdown()
        server.server_close()


class HoldingProxy:
    """A TCP proxy to a local server that, once :meth:`hold` is called, holds every new
    request but ``GET /health`` without answering, until :meth:`relay` is called.

    Connections open when it starts holding are cut, so that MLflow's pooled ones do not
    slip past it; held ones are cut when it relays again. Each connection is judged by
    its first request, which is all the clients here send on one that is not pooled.
    """

    def __init__(self, upstream_port: int):
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.uri = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.holding = False
        self.held_requests = 0
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def hold(self) -> None:
        self.holding = True
        self._cut()

    def relay(self) -> None:
        self.holding = False
        self._cut()

    def close(self) -> None:
        self.listener.close()
        self._cut()

    def _cut(self) -> None:
        with self._lock:
            connections, self._open = self._open, set()
        for connection in connections:
            with suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            with self._lock:
                self._open.add(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with suppress(OSError):
            first = client.recv(65536)
            if self.holding and not first.startswith(b"GET /health "):
                self.held_requests += 1
                client.recv(1)  # until cut, or the client gives up and closes
                return
            with socket.create_connection(self.upstream) as upstream:
                with self._lock:
                    self._open.add(upstream)
                upstream.sendall(first)
                back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
                back.start()
                _pipe(client, upstream)
                back.join()
        with suppress(OSError):
            client.close()


def _pipe(source: socket.socket, target: socket.socket) -> None:
    with suppress(OSError):
        while data := source.recv(65536):
            target.sendall(data)
    with suppress(OSError):
        target.shutdown(socket.SHUT_WR)
