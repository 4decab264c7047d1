"""The gateway's HTTP/1.1 connection handling: bounded in time, JSON errors only.

eventlet's protocol (which Nameko's web server runs) answers malformed request heads with
empty or HTML bodies, waits forever for a client that stops sending, and executes a request
whose header block was cut short by the client closing the connection (the end of the
stream counts as the blank line that ends the headers). :class:`JsonHttpProtocol` changes
that and nothing else:

* every error it answers itself is the JSON envelope of :mod:`common.errors`, with
  ``Connection: close``: 414 ``uri_too_long`` (request line over 8 KiB), 431
  ``headers_too_large`` (a header line over 8 KiB, more than 100 headers, or 64 KiB in
  all), 408 ``request_timeout`` (the head not received in time), 400 ``bad_request``
  (malformed request line, version or Content-Length);
* the server's ``socket_timeout`` bounds every read and write on a connection and its
  ``keepalive`` timeout the wait for the next request on an idle one (``HTTP_IDLE_TIMEOUT``):
  a silent or half-sent connection is closed, quietly when idle;
* a request whose client closed the connection before finishing its head is dropped,
  never executed (it would only write its answer into a closed socket);
* the WSGI environ carries the client socket and a way to close the connection after
  this response (:data:`CLIENT_SOCKET_KEY`, :data:`CLOSE_AFTER_RESPONSE_KEY`), which the
  gateway uses to skip requests whose client is gone and to drain on stop.
"""

import errno
import json
import socket
import uuid
from http import HTTPStatus
from typing import Any

from eventlet.wsgi import HeaderLineTooLong
from eventlet.wsgi import HeadersTooLarge as EventletHeadersTooLarge
from nameko.web.server import HttpOnlyProtocol

from common.errors import BadRequest
from gateway.exceptions import from_http_status

CLIENT_SOCKET_KEY = "shop.client_socket"
CLOSE_AFTER_RESPONSE_KEY = "shop.close_after_response"


class _LastLineReader:
    """A header reader that remembers the last line it returned: ``b""`` means the head
    ended because the client closed the connection, not with a blank line."""

    def __init__(self, reader):
        self.reader = reader
        self.last_line = None

    def readline(self, size=-1):
        self.last_line = self.reader.readline(size)
        return self.last_line


def peek(sock):
    """The next byte waiting on ``sock`` without consuming it: ``b""`` if the peer closed
    it, None if nothing is waiting; never blocks (asks the OS socket under eventlet's
    green one, whose ``recv`` would wait for data)."""
    raw = getattr(sock, "fd", sock)
    try:
        return raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def client_is_gone(sock):
    """True if the peer closed ``sock``. A pipelined next request counts as a client
    still there."""
    return sock is not None and peek(sock) == b""


class JsonHttpProtocol(HttpOnlyProtocol):
    """See the module docstring."""

    rfile: Any  # eventlet's request stream (its class is untyped), wrapped per request

    def send_error(self, code, message=None, explain=None):
        """Answer ``code`` as the JSON envelope and close the connection (called by the
        standard library's request parsing, and below)."""
        status = int(code)
        error = from_http_status(status, message or explain)
        if error.status >= 500:  # a malformed request, whatever the parser called it
            error = BadRequest(message or "the request could not be parsed")
        body = json.dumps(error.to_dict(), separators=(",", ":")).encode()
        head = (
            f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"X-Request-ID: {uuid.uuid4().hex}\r\nConnection: close\r\n\r\n"
        ).encode()
        self.close_connection = True
        try:
            self.wfile.write(head + body)
            self.wfile.flush()
        except OSError:
            pass  # the client is gone: nobody to tell

    def _read_request_line(self):
        try:
            line = super()._read_request_line()
        except TimeoutError:  # idle keep-alive connection: close it quietly
            return ""
        if len(line) >= self.server.url_length_limit:
            self.send_error(
                HTTPStatus.REQUEST_URI_TOO_LONG,
                "the request line is too long",
                f"at most {self.server.url_length_limit - 1} bytes",
            )
            return ""
        return line

    def parse_request(self):
        reader = _LastLineReader(self.rfile)
        self.rfile = reader
        try:
            parsed = super().parse_request()
        except (HeaderLineTooLong, EventletHeadersTooLarge):
            self.send_error(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                "a header line exceeds 8 KiB or the headers 64 KiB",
            )
            return False
        except TimeoutError:
            self.send_error(HTTPStatus.REQUEST_TIMEOUT, "the request head was not received in time")
            return False
        finally:
            self.rfile = reader.reader
        if not parsed:
            return False
        if reader.last_line == b"" and self.request_version != "HTTP/0.9":
            self.close_connection = True  # the client left mid-head: do not execute
            return False
        return self._content_length_is_valid()

    def _content_length_is_valid(self):
        length = self.headers.get("content-length")
        if length is None:
            return True
        if not length.strip().isdigit():
            self.send_error(HTTPStatus.BAD_REQUEST, "Content-Length must be a non-negative integer")
            return False
        if self.headers.get("transfer-encoding") is not None:
            self.send_error(
                HTTPStatus.BAD_REQUEST,
                "Content-Length and Transfer-Encoding may not be used together",
            )
            return False
        return True

    def get_environ(self):
        environ = super().get_environ()
        environ[CLIENT_SOCKET_KEY] = self.connection
        environ[CLOSE_AFTER_RESPONSE_KEY] = self._close_after_response
        return environ

    def _close_after_response(self):
        self.close_connection = True

    def handle(self):
        try:
            super().handle()
        except TimeoutError:
            pass  # a read or write outlived socket_timeout: the connection is closed
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.EBADF, errno.ENOTCONN):
                raise
