"""Load at a fixed arrival rate, free of coordinated omission (issue 23), and its
closed-loop contrast.

``open_loop()``: request i is due at ``start + i / rate``, whatever became of the requests
before it. The scheduler dispatches every request as soon as it is due (a late event loop
catches up in a burst; it never skips one), each on an idle keep-alive connection of its
port (ports taken round-robin) or on a new one, up to ``max_connections`` in all; beyond
that a request waits for a connection, and that wait is part of its latency.
**Latency = answer - due time**: a request due while the server stalls counts its whole
wait. Every answer, whatever its status, goes into an HdrHistogram (microseconds, 3
significant digits); a request without an answer (refused, reset, slower than
``answer_timeout``) is an error, not a latency.

``closed_loop()``: the same schedule on one connection that waits for each answer before
it sends the next (what wrk and most load tools do), latency measured from the actual
send: a stall holds the schedule back instead of being measured, and only the one request
in flight sees it. It exists to show the difference (tests/e2e/test_fixed_rate.py).

``summarize()`` turns a run into figures: the achieved send rate and the send lag (did the
generator keep its schedule?), the answers, errors and statuses, p50/p90/p99/p99.9/max, the
percentile spectrum (for bench/latency_plot.py) and the encoded histogram, and the client
process's own CPU (a Python client on a 2-core machine can be the limit itself).

Standalone, for a probe or a test; prints one JSON document ({"open": ..., "closed": ...}):

    .venv/bin/python bench/openloop.py --port 8000 --path /api/products/1 --rate 100 --duration 10

Every time is ``time.monotonic()`` (CLOCK_MONOTONIC: the same clock in every process of
the machine, so a caller can compare them with its own).
"""

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass

from hdrh.histogram import HdrHistogram

# `python bench/openloop.py` puts bench/ on sys.path, not the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.client import ANSWER_TIMEOUT, Connection  # noqa: E402

HIGHEST_US = 600_000_000  # 10 minutes: longer latencies are recorded as 10 minutes
DIGITS = 3
SPECTRUM_TICKS = 5  # HdrHistogram's percentile ticks per half distance to 100 %
START_DELAY = 0.1  # seconds from the call to the first due time, by default


@dataclass
class Outcome:
    """One request: when it was due, handed to the socket (None: never) and answered
    (None: no answer), and the HTTP status (None: no answer)."""

    due: float
    sent: float | None
    done: float | None
    status: int | None


@dataclass
class Run:
    """A finished run: ``mode`` "open" (latency from ``due``) or "closed" (from ``sent``)."""

    mode: str
    rate: float
    start: float
    outcomes: list[Outcome]
    cpu_seconds: float
    wall_seconds: float
    connections: int


class PortPool:
    """Keep-alive connections to one port: an idle one, else a new one while fewer than
    ``limit`` are open, else wait (first come, first served) for one to come back."""

    def __init__(self, port, limit, answer_timeout):
        self.port = port
        self.answer_timeout = answer_timeout
        self.idle = []
        self.slots = asyncio.Semaphore(limit)
        self.opened = 0

    async def send(self, method, path, body):
        """``(status or None, sent_at or None)`` of one request."""
        async with self.slots:
            if self.idle:
                connection = self.idle.pop()
            else:
                connection = Connection(self.port, self.answer_timeout)
                self.opened += 1
            try:
                status, _ = await connection.request(method, path, body)
            except asyncio.CancelledError:
                connection.close()
                raise
            if connection.writer is not None:
                self.idle.append(connection)
            return status, connection.sent_at

    def close(self):
        for connection in self.idle:
            connection.close()
        self.idle = []


def request_count(rate, duration):
    if rate <= 0 or duration <= 0:
        raise ValueError(f"rate ({rate}) and duration ({duration}) must be positive")
    return max(round(rate * duration), 1)


async def schedule(start, rate, count):
    """``(i, due)`` for i in 0..count-1, due = ``start + i / rate``, each yielded no sooner
    than its due time (asyncio may wake a timer a little early: it sleeps again) and as
    soon after it as the event loop allows; one that is already past is yielded at once."""
    for index in range(count):
        due = start + index / rate
        while (delay := due - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        yield index, due


async def open_loop(
    make_request,
    ports,
    rate,
    duration,
    start_at=None,
    max_connections=512,
    answer_timeout=ANSWER_TIMEOUT,
):
    """``rate * duration`` requests, request i due at ``start_at + i / rate`` (default:
    now + 0.1 s) and sent as soon as it is due, whatever the answers to the others;
    ``make_request(i)`` gives its ``(method, path, body bytes)``, ``ports[i % len(ports)]``
    its port on 127.0.0.1. Returns once every request has an answer or has given up
    (``answer_timeout`` after it was sent, a connection wait included at most as long
    again). A ``Run``."""
    count = request_count(rate, duration)
    per_port = max(max_connections // len(ports), 1)
    pools = [PortPool(port, per_port, answer_timeout) for port in ports]
    outcomes: list[Outcome | None] = [None] * count

    async def one(index, due):
        method, path, body = make_request(index)
        status, sent = await pools[index % len(pools)].send(method, path, body)
        outcomes[index] = Outcome(
            due, sent, time.monotonic() if status is not None else None, status
        )

    start = time.monotonic() + START_DELAY if start_at is None else start_at
    cpu_before, tasks = time.process_time(), []
    try:
        async for index, due in schedule(start, rate, count):
            tasks.append(asyncio.ensure_future(one(index, due)))
        await asyncio.wait(tasks, timeout=2 * answer_timeout + 5)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for pool in pools:
            pool.close()
    wall = time.monotonic() - start
    return Run(
        "open",
        rate,
        start,
        [
            outcome or Outcome(start + index / rate, None, None, None)
            for index, outcome in enumerate(outcomes)
        ],
        time.process_time() - cpu_before,
        wall,
        sum(pool.opened for pool in pools),
    )


async def closed_loop(
    make_request, port, rate, duration, start_at=None, answer_timeout=ANSWER_TIMEOUT
):
    """The same schedule as ``open_loop`` on one connection to ``port`` that sends request
    i at its due time or, when the answer to i - 1 came later, at once after it (so a
    stall delays the rest of the schedule). A ``Run`` whose latencies count from the
    send."""
    count = request_count(rate, duration)
    connection = Connection(port, answer_timeout)
    start = time.monotonic() + START_DELAY if start_at is None else start_at
    cpu_before, outcomes = time.process_time(), []
    try:
        async for index, due in schedule(start, rate, count):
            method, path, body = make_request(index)
            status, _ = await connection.request(method, path, body)
            done = time.monotonic() if status is not None else None
            outcomes.append(Outcome(due, connection.sent_at, done, status))
    finally:
        connection.close()
    wall = time.monotonic() - start
    return Run("closed", rate, start, outcomes, time.process_time() - cpu_before, wall, 1)


def histogram():
    return HdrHistogram(1, HIGHEST_US, DIGITS)


def record(hist, seconds):
    hist.record_value(min(max(round(seconds * 1e6), 1), HIGHEST_US))


def ms(hist, percentile):
    return round(hist.get_value_at_percentile(percentile) / 1000, 3) if hist.total_count else None


def spectrum(hist):
    """``[[percentile, ms], ...]`` as HdrHistogram's percentile distribution prints it:
    steps that halve the distance to 100 %, the last one at 100 % (the max)."""
    if not hist.total_count:
        return []
    return [
        [item.percentile_level_iterated_to, round(item.value_iterated_to / 1000, 3)]
        for item in hist.get_percentile_iterator(SPECTRUM_TICKS)
    ]


def summarize(run):
    """The figures of a ``Run`` (a JSON-ready dict; times in ms, rates per second).

    ``achieved_send_rate`` = requests sent / (last send - start + 1 / rate): the rate
    asked for when every request left on time, less when the generator (or, once
    ``max_connections`` are busy, the server) held them back; ``send_lag_ms`` is how late
    they left. ``answer_rate`` = answers / (last answer - start + 1 / rate). ``errors`` = requests
    without an answer plus non-2xx answers. ``client_cpu_share`` = the client process's
    CPU seconds over the run's wall time (1.0 = one core busy)."""
    latencies, lags = histogram(), histogram()
    sent, answered = [], []
    for outcome in run.outcomes:
        if outcome.sent is not None:
            sent.append(outcome.sent)
            record(lags, outcome.sent - outcome.due)
        if outcome.status is not None:
            answered.append(outcome.done)
            origin = outcome.due if run.mode == "open" else outcome.sent
            record(latencies, outcome.done - origin)
    statuses = Counter(str(outcome.status or "none") for outcome in run.outcomes)
    errors = sum(1 for o in run.outcomes if o.status is None or not 200 <= o.status < 300)
    return {
        "mode": run.mode,
        "rate": round(run.rate, 3),
        "scheduled": len(run.outcomes),
        "sent": len(sent),
        "answered": len(answered),
        "errors": errors,
        "statuses": dict(sorted(statuses.items())),
        "achieved_send_rate": round(len(sent) / (max(sent) - run.start + 1 / run.rate), 3)
        if sent
        else 0.0,
        "answer_rate": round(len(answered) / (max(answered) - run.start + 1 / run.rate), 3)
        if answered
        else 0.0,
        "send_lag_ms": {"p50": ms(lags, 50), "p99": ms(lags, 99), "max": ms(lags, 100)},
        "latency_ms": {
            "p50": ms(latencies, 50),
            "p90": ms(latencies, 90),
            "p95": ms(latencies, 95),
            "p99": ms(latencies, 99),
            "p99.9": ms(latencies, 99.9),
            "max": ms(latencies, 100),
            "mean": round(latencies.get_mean_value() / 1000, 3) if answered else None,
        },
        "spectrum": spectrum(latencies),
        "histogram": latencies.encode().decode() if answered else None,
        "connections": run.connections,
        "wall_s": round(run.wall_seconds, 3),
        "client_cpu_s": round(run.cpu_seconds, 3),
        "client_cpu_share": round(run.cpu_seconds / max(run.wall_seconds, 1e-9), 3),
    }


def records(run):
    """``[[due, sent, done, status], ...]`` (monotonic seconds; None where there is none)."""
    return [[o.due, o.sent, o.done, o.status] for o in run.outcomes]


def fixed(method, path, body):
    def make(_index):
        return method, path, body

    return make


async def probe(args):
    make = fixed(args.method, args.path, args.body.encode())
    start = args.start_at if args.start_at is not None else time.monotonic() + START_DELAY
    jobs = [
        open_loop(
            make, args.port, args.rate, args.duration, start, args.max_connections, args.timeout
        )
    ]
    if args.closed_loop:
        jobs.append(closed_loop(make, args.port[0], args.rate, args.duration, start, args.timeout))
    return start, await asyncio.gather(*jobs)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Fixed-rate (open-loop) load on 127.0.0.1: latency from the scheduled "
        "send time, in an HdrHistogram. Prints one JSON document."
    )
    parser.add_argument("--port", type=int, action="append", required=True, help="repeatable")
    parser.add_argument("--path", required=True)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--body", default="")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=float, required=True, help="seconds of schedule")
    parser.add_argument(
        "--start-at", type=float, help="time.monotonic() of the first due time [now + 0.1 s]"
    )
    parser.add_argument("--max-connections", type=int, default=512)
    parser.add_argument("--timeout", type=float, default=ANSWER_TIMEOUT, help="answer bound")
    parser.add_argument(
        "--closed-loop",
        action="store_true",
        help="also run the closed-loop contrast (one connection, first port) alongside",
    )
    parser.add_argument("--records", action="store_true", help="every request's times too")
    args = parser.parse_args(argv)
    late = time.monotonic() - args.start_at if args.start_at is not None else 0.0
    start, runs = asyncio.run(probe(args))
    out = {"start": start, "started_late_s": round(max(late, 0.0), 3)}
    for run in runs:
        out[run.mode] = summarize(run)
        if args.records:
            out[run.mode]["records"] = records(run)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
