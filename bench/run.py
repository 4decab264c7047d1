"""`make bench`: a reproducible load benchmark of the running stack (`make up` first).

Run from the repository root with the project's virtualenv:

    .venv/bin/python bench/run.py

It prepares data (through the HTTP API, and `scripts/manage.py seed` for the catalog), runs
each scenario with wrk for a fixed time, with the Lua scripts of bench/lua, then a burst
of new TCP connections from Python, then latency at a fixed arrival rate (bench/latency.py:
wrk's closed-loop capacity, then an open-loop Python client at fractions of it), and
prints one table (and one of the fixed-rate rows). Traffic goes to 127.0.0.1 only;
every run is bounded in time and stops by itself. See docs/BENCHMARKS.md.

This file is the entry point only; the work is in the bench package beside it
(bench/__init__.py lists its modules): settings, cpu, wrk, data, scenarios, report.

Environment knobs (defaults in brackets):
  BENCH_PROFILE      full: every scenario, 10 s each (fixed rate: 15 s a load); quick:
                     ceiling,by_id,orders,hot,latency, 5 s each (about 1.5 minutes on 2
                     CPUs). It only sets the defaults of BENCH_ONLY, BENCH_DURATION and
                     BENCH_LATENCY_DURATION [full]
  BENCH_DURATION     seconds of load per scenario [10; quick: 5]
  BENCH_CONNECTIONS  wrk connections, spread evenly over the ports [50, rounded down to a
                     multiple of the threads: 48]
  BENCH_THREADS      wrk threads; each one drives one port, round-robin [one per port: 3]
  BENCH_PORTS        gateway ports on 127.0.0.1 [8000,8001,8002]
  BENCH_WARMUP       seconds of GET /api/ping before the first scenario, not measured [3]
  BENCH_DRAIN        at most this many seconds to wait, after the load, for the answers
                     to requests in flight [25: the gateway's bound on an order is 20 s]
  BENCH_TIMEOUT      wrk --timeout: slower answers count as timeouts [25]
  BENCH_SMALL_CATALOG / BENCH_BIG_CATALOG   products present for scenarios 2-3 [1000 / 100000]
  BENCH_ORDER_PRODUCTS  products created for the spread-orders scenario [200]
  BENCH_BURST        simultaneous new connections of the burst check [500]
  BENCH_ONLY         comma-separated subset of: ceiling,by_id,list_small,list_big,customers,
                     orders,hot,burst,latency [all; quick: ceiling,by_id,orders,hot,latency]
  BENCH_SKIP         scenarios taken out of BENCH_ONLY or the profile's (e.g. latency) [none]
  BENCH_LATENCY_TARGETS   the fixed-rate scenario's requests: by_id,orders [both]
  BENCH_LATENCY_LOADS     fractions of the capacity measured just before [0.5,0.8]
  BENCH_LATENCY_DURATION  seconds of schedule per load [15; quick: 5]
  BENCH_LATENCY_CONNECTIONS  the open-loop client's connection cap, over the ports [512]
  BENCH_PAUSE        seconds of rest between scenarios [1]
  BENCH_DEBUG        set: print the traceback of a harness error

Exit status: 0 when the run completed (service errors are results, shown in the table),
1 when the stock invariant failed, 2 on a harness error, 3 when the stack is not up or
wrk is missing.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time

import requests

# `python bench/run.py` puts bench/ on sys.path, not the repository: the bench package
# and the project's common/ (config.yml loading) are imported from the root.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.data import Api, Catalog  # noqa: E402
from bench.report import machine_info, print_header, print_results, save  # noqa: E402
from bench.scenarios import NEEDS_CATALOG, PLAN  # noqa: E402
from bench.settings import HOST, HarnessError, Settings  # noqa: E402


def preflight(settings):
    try:
        response = requests.get(settings.url("/health"), timeout=3)
        ok = response.status_code == 200
    except requests.RequestException as exc:
        ok, response = False, exc
    if not ok:
        print(
            f"bench: the gateway on {HOST}:{settings.ports[0]} does not answer GET /health "
            f"({response}).\nbench: start the stack first: `make up`, then `make bench`.",
            file=sys.stderr,
        )
        sys.exit(3)
    up = []
    for port in settings.ports:
        try:
            if requests.get(settings.url("/health", port), timeout=3).status_code == 200:
                up.append(port)
                continue
        except requests.RequestException:
            pass
        print(f"bench: warning: gateway port {port} does not answer /health; not using it")
    settings.ports = up
    if shutil.which("wrk") is None:
        print(
            "bench: wrk is not installed: `apt-get install -y wrk` (as root), or `make bench` "
            "which installs it when run as root.",
            file=sys.stderr,
        )
        sys.exit(3)


def warm_up(settings):
    """``BENCH_WARMUP`` seconds of GET /api/ping on every port, not measured: the first
    seconds of a stack just started cost more CPU per answer (connections, caches), which
    made the ceiling, measured first, look dearer than it is."""
    if settings.warmup <= 0:
        return
    print(f"bench: warm-up, {settings.warmup:g} s of GET /api/ping (not measured)", flush=True)
    per_port = max(settings.connections // len(settings.ports), 1)
    loads = [
        subprocess.Popen(
            [
                "wrk",
                "-t",
                "1",
                "-c",
                str(per_port),
                "-d",
                f"{settings.warmup:g}s",
                settings.url("/api/ping", port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in settings.ports
    ]
    for load in loads:
        load.wait(timeout=settings.warmup + 30)


def main():
    try:
        settings = Settings()
    except HarnessError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    preflight(settings)
    if settings.threads % len(settings.ports):
        print(
            f"bench: note: {settings.threads} threads over {len(settings.ports)} ports: "
            "the ports get unequal shares"
        )
    info = machine_info()
    print_header(info, settings)
    workdir = tempfile.mkdtemp(prefix="shop-bench-")
    ctx = {"settings": settings, "workdir": workdir, "api": Api(settings)}
    rows, status = [], 0
    try:
        if NEEDS_CATALOG & set(settings.only):
            ctx["catalog"] = Catalog()
        warm_up(settings)
        for key, run in PLAN:
            if key not in settings.only:
                continue
            print(f"bench: {key} ...", flush=True)
            result = run(ctx)
            for row in result if isinstance(result, list) else [result]:
                rows.append(row)
                print(f"  {row.label}: {row.rps or 0:.1f} req/s, {row.errors} errors", flush=True)
            if settings.pause:
                time.sleep(settings.pause)
    except HarnessError as exc:
        print(f"bench: harness error: {exc}", file=sys.stderr)
        status = 2
    except Exception as exc:  # noqa: BLE001 (reported, the table of what ran still prints)
        if os.environ.get("BENCH_DEBUG"):
            import traceback

            traceback.print_exc()
        print(f"bench: harness error: {type(exc).__name__}: {exc}", file=sys.stderr)
        status = 2
    finally:
        if "catalog" in ctx:
            ctx["catalog"].close()
        shutil.rmtree(workdir, ignore_errors=True)

    if not rows:
        return status or 2
    print_results(rows)
    if any(r.failed for r in rows):
        status = status or 1
    path = save(info, settings, rows, status)
    print(
        f"\nbench: results saved to {os.path.relpath(path, ROOT)}"
        + ("" if status == 0 else f"; exit status {status}")
    )
    return status


if __name__ == "__main__":
    if len(sys.argv) > 1:  # no options: the environment configures a run
        print(__doc__.strip())
        sys.exit(0 if sys.argv[1] in ("-h", "--help") else 2)
    sys.exit(main())
