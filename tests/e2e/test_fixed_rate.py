"""`make bench`'s fixed-rate scenario (bench/openloop.py) on the real stack: the generator
keeps its schedule, and a stall of the gateway shows in its latencies in full, where a
closed-loop client of the same run, sharing the stall, hides it (coordinated omission).

The generator runs as `make bench` runs it, in a process of its own (asyncio, no
eventlet), started with a first due time in the future; the test freezes the gateway
process (SIGSTOP) at a known moment of that schedule and thaws it (SIGCONT) one second
later. Every time is time.monotonic(), one clock for every process of the machine.
"""

import json
import os
import signal
import subprocess
import sys
import time

import requests

from common.config import ROOT

RATE = 40.0  # requests per second: modest, so the schedule is the generator's to keep
DURATION = 6.0  # seconds of schedule: 240 requests
FREEZE_AT = 2.0  # seconds after the first due time
FREEZE = 1.0
STARTUP = 2.5  # the generator's interpreter and imports, on a busy machine


def run_generator(port, path, start, max_connections):
    return subprocess.Popen(
        [
            sys.executable,
            os.path.join(ROOT, "bench", "openloop.py"),
            *("--port", str(port), "--path", path),
            *("--rate", str(RATE), "--duration", str(DURATION), "--start-at", repr(start)),
            *("--max-connections", str(max_connections), "--timeout", "15"),
            *("--closed-loop", "--records"),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def freeze(pid, at, seconds):
    """SIGSTOP ``pid`` at monotonic time ``at`` for ``seconds``, SIGCONT always; returns
    (when it was stopped, when SIGCONT was sent)."""
    time.sleep(max(at - time.monotonic(), 0))
    stopped_at = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        continued_at = time.monotonic()
        os.kill(pid, signal.SIGCONT)
    return stopped_at, continued_at


def frozen_run(stack, api, max_connections):
    """A product read at RATE for DURATION, the gateway frozen FREEZE s in the middle:
    the generator's JSON, when the gateway was stopped and when SIGCONT was sent."""
    product = requests.post(
        f"{api}/api/products", json={"name": "fixed rate", "price": "1.00", "stock": 1}, timeout=10
    ).json()["id"]
    port = int(api.rsplit(":", 1)[1])
    gateway = stack.pid("gateway-0")  # the one gateway process, serving every port
    start = time.monotonic() + STARTUP
    generator = run_generator(port, f"/api/products/{product}", start, max_connections)
    try:
        stopped_at, continued_at = freeze(gateway, start + FREEZE_AT, FREEZE)
        out, err = generator.communicate(timeout=60)
    finally:
        if generator.poll() is None:
            generator.kill()
            generator.wait()
    assert generator.returncode == 0, err[-2000:]
    result = json.loads(out)
    assert result["started_late_s"] == 0, "the generator was not ready for its first due time"
    return result, stopped_at, continued_at


def test_fixed_rate_counts_a_stall_that_closed_loop_hides(stack, api):
    result, stopped_at, continued_at = frozen_run(stack, api, max_connections=512)
    opened, closed = result["open"], result["closed"]

    # The schedule: every request sent, at the rate asked for, though the server froze.
    count = round(RATE * DURATION)
    assert opened["scheduled"] == opened["sent"] == opened["answered"] == count, opened
    assert opened["errors"] == closed["errors"] == 0, (opened["statuses"], closed["statuses"])
    assert abs(opened["achieved_send_rate"] - RATE) <= 0.05 * RATE, opened["send_lag_ms"]

    # Each request due while the gateway was stopped was answered after SIGCONT, and its
    # latency counts from its due time: the whole wait is in the histogram.
    frozen = [r for r in opened["records"] if stopped_at + 0.02 <= r[0] < continued_at]
    assert len(frozen) >= 0.8 * RATE * FREEZE, len(frozen)
    for due, sent, done, status in frozen:
        assert status == 200 and sent - due < 0.5 and done >= continued_at, (due, sent, done)
    stall_ms = 1000 * FREEZE
    # ~1/6 of the requests waited 0-1 s: p99 is about 0.95 s, p99.9 and max about 1 s.
    assert opened["latency_ms"]["p99"] >= 0.8 * stall_ms, opened["latency_ms"]
    assert opened["latency_ms"]["max"] >= 0.95 * stall_ms, opened["latency_ms"]

    # The closed-loop client of the same run met the same stall (its one request in flight
    # waited it out, and its schedule slipped by as much), but measured from its sends
    # only that one request shows it: its p99 knows nothing of the stall.
    assert closed["answered"] == count, closed
    assert closed["latency_ms"]["max"] >= 0.9 * stall_ms, closed["latency_ms"]
    assert closed["send_lag_ms"]["max"] >= 0.9 * stall_ms, closed["send_lag_ms"]
    assert closed["latency_ms"]["p99"] < 0.5 * stall_ms, closed["latency_ms"]
    assert opened["latency_ms"]["p99"] > 2 * closed["latency_ms"]["p99"]


def test_latency_counts_from_the_schedule_when_sends_wait(stack, api):
    """With 2 connections, the requests due during the freeze wait for one and are sent
    after SIGCONT: answered fast from their send, yet their latency is their wait since
    the due time (a generator timing from the send would show no stall here)."""
    result, stopped_at, continued_at = frozen_run(stack, api, max_connections=2)
    opened = result["open"]
    assert opened["answered"] == round(RATE * DURATION) and opened["errors"] == 0, opened
    frozen = [r for r in opened["records"] if stopped_at + 0.02 <= r[0] < continued_at - 0.2]
    held = [r for r in frozen if r[1] >= continued_at]  # sent only once a connection freed
    assert len(held) >= 0.6 * len(frozen) >= 0.4 * RATE * FREEZE, (len(held), len(frozen))
    assert max(done - sent for _, sent, done, _ in held) < 0.6 * FREEZE
    assert opened["latency_ms"]["p99"] >= 0.8 * 1000 * FREEZE, opened["latency_ms"]
    assert opened["send_lag_ms"]["max"] >= 0.8 * 1000 * FREEZE, opened["send_lag_ms"]
