"""The HTTP side of the exchange: a threading server and a keep-alive handler that pass each request on."""

from __future__ import annotations

import socket
import struct
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from recorder.simulator.responses import _Response


class _Exchange(Protocol):
    """What the handler needs from the exchange behind it (ExchangeSimulator)."""

    def _handle(self, method: str, target: str, api_key: str, ip: str) -> _Response | None: ...

    def _track(self, conn: socket.socket) -> None: ...

    def _untrack(self, conn: socket.socket) -> None: ...

    def _pause(self, seconds: float) -> bool: ...


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    sim: _Exchange

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # the client went away mid-response; nothing to report
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Without this every keep-alive response waits ~40 ms for the client's delayed ACK.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.sim._track(self.connection)

    def finish(self) -> None:
        self.server.sim._untrack(self.connection)
        super().finish()

    def version_string(self) -> str:
        return "nginx"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # request lines carry signatures; requests_log is the record

    def do_GET(self) -> None:
        self._respond()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_GET

    def _respond(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        if length > 0:
            self.rfile.read(length)  # drain the body so the next keep-alive request parses cleanly
        if "Transfer-Encoding" in self.headers:
            self.close_connection = True
        response = self.server.sim._handle(self.command, self.path, self.headers.get("X-MBX-APIKEY", ""),
                                           self.client_address[0])
        if response is None:
            # Linger 0 turns close() into a TCP RST, so the client sees "connection reset by peer".
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        if response.stream_bytes:
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        body = b"" if self.command == "HEAD" else response.body
        if response.trickle_head:
            self._headers_buffer.append(b"\r\n")
            head, self._headers_buffer = b"".join(self._headers_buffer), []
            self._trickle(head + body, response.trickle_seconds)
            return
        self.end_headers()
        if response.stream_bytes:
            self._stream(response.stream_bytes)
        elif response.trickle_seconds:
            self._trickle(body, response.trickle_seconds)
        else:
            self.wfile.write(body)

    def _trickle(self, data: bytes, seconds: float) -> None:
        """Send one byte every `seconds`; the client's patience is what is under test."""
        for index in range(len(data)):
            self.wfile.write(data[index:index + 1])
            if index + 1 < len(data) and self.server.sim._pause(seconds):
                self.close_connection = True
                return

    def _stream(self, size: int) -> None:
        """Send `size` bytes of JSON whitespace; stops when the client hangs up (an OSError here)."""
        chunk = b" " * 65536
        sent = 0
        while sent < size:
            self.wfile.write(chunk)
            sent += len(chunk)
