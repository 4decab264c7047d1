"""`make bench-check`: an offline check of the bench package; no stack, no wrk, no load.

    .venv/bin/python bench/selfcheck.py

Imports every module of bench/ (the standalone tools each in a child process, since
``reconciler.py`` imports nameko and turns bytecode writing off), then checks what can be
checked without the stack: the scenario table against ``SCENARIOS``, the profiles
(``BENCH_PROFILE=full`` is today's run, ``quick`` its four scenarios at 5 s), the products
database URI read through ``common/config.py``, wrk's JSON turned into a row and the
table printed from it, one /proc CPU snapshot, and ``bench/run.py --help``.

Prints one line per check; exit status 0 when all pass, 1 otherwise.
"""

import contextlib
import io
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PACKAGE = (
    "settings",
    "cpu",
    "wrk",
    "data",
    "client",
    "openloop",
    "latency",
    "scenarios",
    "report",
    "run",
    "summary",
)
STANDALONE = ("scaling", "profile", "side_by_side", "reconciler", "otlp_sink", "latency_plot")
failures = []


def check(name, condition, detail=""):
    print(f"{'ok  ' if condition else 'FAIL'} {name}" + (f": {detail}" if detail else ""))
    if not condition:
        failures.append(name)


@contextlib.contextmanager
def environment(**values):
    """``os.environ`` without any BENCH_* variable, plus ``values`` (None: unset)."""
    saved = dict(os.environ)
    for key in [k for k in os.environ if k.startswith("BENCH_")]:
        del os.environ[key]
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def wrk_json(**overrides):
    data = {
        "received": 1000,
        "span_s": 10.5,
        "threads": 3,
        "finished": 3,
        "lost": 0,
        "non2xx": 0,
        "latency_us": {
            "min": 1000,
            "mean": 50000,
            "p50": 48000,
            "p90": 70000,
            "p95": 80000,
            "p99": 95000,
            "p999": 120000,
            "max": 130000,
        },
        "errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0},
        "statuses": {"200": 1000},
        "per_port": {"8000": 334, "8001": 333, "8002": 333},
    }
    data.update(overrides)
    return data


def main():
    import importlib

    for name in PACKAGE:
        try:
            importlib.import_module(f"bench.{name}")
            check(f"import bench.{name}", True)
        except Exception as exc:  # noqa: BLE001
            check(f"import bench.{name}", False, f"{type(exc).__name__}: {exc}")
    for name in STANDALONE:
        result = subprocess.run(
            [sys.executable, "-W", "ignore", "-c", f"import bench.{name}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        check(
            f"import bench.{name} (child process)",
            result.returncode == 0,
            result.stderr.strip()[-300:],
        )
    if failures:
        return 1

    from bench import cpu, report, scenarios, settings, wrk

    check(
        "PLAN runs every scenario of SCENARIOS, in order",
        tuple(key for key, _ in scenarios.PLAN) == settings.SCENARIOS,
    )
    check("NEEDS_CATALOG names scenarios", scenarios.NEEDS_CATALOG <= set(settings.SCENARIOS))

    with environment():
        full = settings.Settings()
    check(
        "no BENCH_PROFILE: full, every scenario, 10 s, 48 connections over 3 threads",
        (full.profile, full.only, full.duration, full.connections, full.threads)
        == ("full", list(settings.SCENARIOS), 10.0, 48, 3),
    )
    with environment(BENCH_PROFILE="quick"):
        quick = settings.Settings()
    check(
        "BENCH_PROFILE=quick: ceiling, by_id, orders, hot, latency at 5 s",
        (quick.only, quick.duration, quick.latency_duration)
        == (["ceiling", "by_id", "orders", "hot", "latency"], 5.0, 5.0),
        f"{quick.only} {quick.duration}",
    )
    with environment(BENCH_SKIP="latency,burst"):
        skipped = settings.Settings()
    check(
        "BENCH_SKIP takes scenarios out; fixed-rate defaults 0.5,0.8 of capacity, 15 s",
        skipped.only == [k for k in settings.SCENARIOS if k not in ("latency", "burst")]
        and (skipped.latency_loads, skipped.latency_duration) == ([0.5, 0.8], 15.0)
        and skipped.latency_targets == ["by_id", "orders"],
        f"{skipped.only}",
    )
    with environment(BENCH_PROFILE="quick", BENCH_ONLY="hot", BENCH_DURATION="3"):
        mixed = settings.Settings()
    check(
        "explicit BENCH_ONLY / BENCH_DURATION win over the profile",
        (mixed.only, mixed.duration) == (["hot"], 3.0),
    )
    for bad in (
        {"BENCH_PROFILE": "fast"},
        {"BENCH_ONLY": "ceiling,nope"},
        {"BENCH_DURATION": "0"},
        {"BENCH_SKIP": "nope"},
        {"BENCH_LATENCY_LOADS": "0.5,x"},
        {"BENCH_LATENCY_TARGETS": "ceiling"},
    ):
        with environment(**bad):
            try:
                settings.Settings()
                check(f"{bad} is refused", False, "accepted")
            except settings.HarnessError as exc:
                check(f"{bad} is refused", True, str(exc))

    # The products URI: common/config.py against the old ${VAR:default} regex reading.
    import yaml

    from common.config import load_config

    def by_regex():
        path = os.environ.get("SHOP_CONFIG", os.path.join(ROOT, "config.yml"))
        with open(path) as f:
            text = re.sub(
                r"\$\{(\w+):([^}]*)\}", lambda m: os.environ.get(m.group(1), m.group(2)), f.read()
            )
        return yaml.safe_load(text)["DB_URIS"]["products:Base"]

    with environment(PRODUCTS_DB_URI=None):
        uri = settings.products_db_uri()
        check(
            "products URI from common.config.load_config",
            uri == load_config()["DB_URIS"]["products:Base"] == by_regex(),
            uri,
        )
    with environment(PRODUCTS_DB_URI="postgresql+psycopg2://x@127.0.0.1:1/y"):
        check(
            "$PRODUCTS_DB_URI still wins",
            settings.products_db_uri() == "postgresql+psycopg2://x@127.0.0.1:1/y",
        )

    # wrk's JSON into a row, the CPU note, and the table.
    row = report.Row("ceiling", "1 ceiling: GET /api/ping (1 RPC)")
    wrk.fill_row(row, wrk_json(), full)
    check(
        "fill_row: req/s over the load phase stretched by the drain",
        abs(row.rps - 1000 / 10.5) < 1e-9
        and (row.p50, row.p95, row.p99) == (48.0, 80.0, 95.0)
        and row.errors == 0,
        f"{row.rps:.2f} req/s",
    )
    other = report.Row("hot", "6 POST /api/orders, 1 hot product x1")
    wrk.fill_row(
        other,
        wrk_json(
            received=500,
            lost=2,
            non2xx=3,
            errors={"connect": 0, "read": 1, "write": 0, "timeout": 1},
        ),
        full,
    )
    check(
        "fill_row: errors = non-2xx + timeouts + max(socket errors, lost)",
        other.errors == 6,
        str(other.errors),
    )
    note = cpu.cpu_note(
        {"components": {"gateway": 2.0, "products": 1.0, "other": 0.1}, "busy": 4.0, "total": 20.0},
        1000,
    )
    check(
        "cpu_note",
        note == "CPU ms per answer: gateway 2.00, products 1.00; machine busy 20%, "
        "of which processes outside the stack and the bench 0%",
        note,
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        report.print_table([row, other], row.rps)
    lines = out.getvalue().splitlines()
    check(
        "print_table: header, rule, one line a row, ratio to the ceiling",
        len(lines) == 4
        and lines[0].startswith("| scenario")
        and "|      1.00 |" in lines[2]
        and "|      0.50 |" in lines[3],
        "\n" + out.getvalue().rstrip(),
    )

    snapshot = cpu.cpu_snapshot()
    check(
        "cpu_snapshot reads /proc",
        snapshot["pids"] and snapshot["total"] > 0,
        f"{len(snapshot['pids'])} processes",
    )
    check("cpu: this process is the bench", snapshot["pids"][os.getpid()][0] == "bench")

    check_summary()
    check_fixed_rate()

    help_run = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "run.py"), "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    check("bench/run.py --help", help_run.returncode == 0 and "BENCH_PROFILE" in help_run.stdout)

    print(f"\nbench self-check: {len(failures)} failed" + (f": {failures}" if failures else ""))
    return 1 if failures else 0


def check_summary():
    """bench/summary.py on three made-up runs: medians, not means, and the sums."""
    import json
    import tempfile

    from bench import summary

    paths = []
    with tempfile.TemporaryDirectory() as folder:
        for n, (ping, order) in enumerate([(1.0, 4.0), (2.0, 5.0), (9.0, 30.0)]):
            rows = [
                {
                    "key": key,
                    "label": key,
                    "rps": rps,
                    "raw": {"requests": 1000, "cpu": {"components": {"gateway": cpu}}},
                }
                for key, rps, cpu in (("ceiling", 100.0 * (n + 1), ping), ("orders", 30.0, order))
            ]
            path = os.path.join(folder, f"run-{n}.json")
            with open(path, "w") as stream:
                json.dump({"rows": rows}, stream)
            paths.append(path)
        table = summary.summary(paths).splitlines()
    check(
        "summary: medians of req/s, ratio and CPU, the range of the sums",
        len(table) == 4
        and table[2].startswith("| ceiling | 3 | 200.0 | 1.00 | 2.00 /")
        and "**2.00** (1.00-9.00)" in table[2]
        and table[3].startswith("| orders | 3 | 30.0 | 0.15 | 5.00 /")
        and "**5.00** (4.00-30.00)" in table[3],
        "\n" + "\n".join(table),
    )


def check_fixed_rate():
    """bench/openloop.py on a local asyncio server (no stack): the schedule kept, every
    latency counted from it, the histogram's figures and the fixed-rate table."""
    import asyncio

    from bench import openloop, report

    async def serve_and_load():
        async def answer(reader, writer):
            try:
                while await reader.readuntil(b"\r\n\r\n"):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
                writer.close()  # the client closed its connections, or the loop ends

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await openloop.open_loop(
                openloop.fixed("GET", "/", b""), [port], 200.0, 1.0, answer_timeout=5
            )
        finally:
            server.close()

    run = asyncio.run(serve_and_load())
    figures = openloop.summarize(run)
    check(
        "open_loop: 200 requests due over 1 s, all sent on time and answered",
        figures["scheduled"] == figures["answered"] == 200
        and abs(figures["achieved_send_rate"] - 200) < 10
        and all(o.sent >= o.due for o in run.outcomes),
        f"sent at {figures['achieved_send_rate']}/s, lag {figures['send_lag_ms']}",
    )
    check(
        "summarize: percentiles, spectrum up to 100 %, encoded histogram",
        figures["latency_ms"]["p50"] <= figures["latency_ms"]["p99"] <= figures["latency_ms"]["max"]
        and figures["spectrum"][-1] == [100.0, figures["latency_ms"]["max"]]
        and figures["histogram"],
        str(figures["latency_ms"]),
    )
    row = report.Row("latency_by_id_80", "8 fixed rate 80% of capacity: GET /x")
    row.raw = {"fixed_rate": figures, "target": "GET /x", "capacity": 250.0, "fraction": 0.8}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        report.print_fixed_rate_table([row])
    lines = out.getvalue().splitlines()
    check(
        "print_fixed_rate_table: header, rule, a line, the legend",
        len(lines) == 4 and lines[0].startswith("| fixed rate") and "GET /x @ 80%" in lines[2],
        "\n" + out.getvalue().rstrip(),
    )


if __name__ == "__main__":
    sys.exit(main())
