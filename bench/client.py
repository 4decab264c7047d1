"""The benchmarks' asyncio HTTP/1.1 client: one keep-alive connection to a gateway port on
127.0.0.1, one request at a time (bench/overload.py, bench/openloop.py).

``Connection.request()`` returns ``(status, seconds)``: the status is None when no answer
came (refused, reset, closed, or slower than ``answer_timeout``), and the seconds run from
the call, a connect included. ``sent_at`` is the ``time.monotonic()`` at which the last
request was handed to the socket, None if it never was (the open-loop generator's
schedule check).
"""

import asyncio
import time

from bench.settings import HOST

ANSWER_TIMEOUT = 30.0


class Connection:
    """One keep-alive HTTP/1.1 connection: ``request()`` returns (status, seconds)."""

    def __init__(self, port, answer_timeout=ANSWER_TIMEOUT):
        self.port = port
        self.answer_timeout = answer_timeout
        self.reader = self.writer = None
        self.sent_at = None

    async def request(self, method, path, body=b""):
        started = time.monotonic()
        self.sent_at = None
        for attempt in (1, 2):  # once more on a fresh connection if a kept one was closed
            try:
                if self.writer is None:
                    self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
                head = (
                    f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                )
                self.writer.write(head.encode() + body)
                self.sent_at = time.monotonic()
                status = await asyncio.wait_for(self._answer(), self.answer_timeout)
                return status, time.monotonic() - started
            except (OSError, asyncio.IncompleteReadError, ConnectionError):
                self.close()
                if attempt == 2:
                    return None, time.monotonic() - started
            except TimeoutError:
                self.close()
                return None, time.monotonic() - started
        return None, time.monotonic() - started

    async def _answer(self):
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("closed")
        status = int(status_line.split()[1])
        length, close = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and value.strip().lower() == "close":
                close = True
        await self.reader.readexactly(length)
        if close:
            self.close()
        return status

    def close(self):
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None
