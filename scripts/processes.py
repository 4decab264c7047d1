"""Processes and ports of the private servers the tooling and the tests start (RabbitMQ
nodes, PostgreSQL pairs, stacks): stdlib only, so `make cluster-up` and `make replica-up`
run on the system Python."""

import contextlib
import os
import socket
import time


def free_port():
    """A TCP port of 127.0.0.1 nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_free(port):
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port_block(size=10, attempts=200):
    """The first of ``size`` consecutive free ports of 127.0.0.1, a multiple of 10."""
    for _ in range(attempts):
        base = free_port() // 10 * 10
        if base + size <= 65535 and all(port_free(base + offset) for offset in range(size)):
            return base
    raise RuntimeError(f"no {size} consecutive free ports found")


def process_alive(pid):
    """True while ``pid`` runs (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/stat") as stream:
            return stream.read().split(") ", 1)[1][0] != "Z"
    return True


def children(pid):
    """Pids whose parent is ``pid`` (a postmaster's backends, supervisord's programs)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                with open(f"/proc/{entry}/stat") as stream:
                    if int(stream.read().split(") ", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
    return found


def wait_for(condition, message, timeout=30, interval=0.2):
    """Poll ``condition()`` until true; TimeoutError(``message``) after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(message)
        time.sleep(interval)
