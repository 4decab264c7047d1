"""Driving wrk for `make bench`: one wrk process per scenario with a Lua script of
``bench/lua`` (each thread on one gateway port), BENCH_DURATION seconds of load, then a
drain until every thread has its answers (SIGINT once all are done), the CPU accounted
around it (``bench.cpu``), and wrk's ``BENCH_JSON`` line turned into a row's figures and
notes.
"""

import json
import math
import os
import signal
import subprocess
import tempfile
import time

from bench.cpu import children_cpu, cpu_note, cpu_snapshot, cpu_usage, restarts
from bench.settings import HOST, LUA_DIR, ROOT, HarnessError


def wrk_version():
    try:
        out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=5)
        return (out.stdout + out.stderr).split("Copyright")[0].strip()
    except Exception:
        return "not installed"


def run_wrk(settings, workdir, script, row, path="/", env_extra=None):
    """One wrk run: load for BENCH_DURATION, then drain; fills ``row``; returns wrk's JSON."""
    mark_dir = tempfile.mkdtemp(prefix="marks-", dir=workdir)
    env = dict(os.environ)
    env.update(
        {
            "WRKB_LUA_DIR": LUA_DIR,
            "WRKB_HOST": HOST,
            "WRKB_PORTS": ",".join(str(p) for p in settings.ports),
            "WRKB_DURATION": str(settings.duration),
            "WRKB_MARK_DIR": mark_dir,
            "WRKB_TAG": settings.tag,
            "WRKB_CONNECTIONS_PER_THREAD": str(settings.connections // settings.threads),
        }
    )
    env.update({k: str(v) for k, v in (env_extra or {}).items()})
    # wrk's own bound: load + drain + slack. It stops by itself then, whatever happens.
    bound = math.ceil(settings.duration + settings.drain + 2)
    cmd = [
        "wrk",
        "-t",
        str(settings.threads),
        "-c",
        str(settings.connections),
        "-d",
        f"{bound}s",
        "--timeout",
        f"{settings.timeout}s",
        "-s",
        os.path.join(LUA_DIR, script),
        settings.url(path),
    ]
    started = time.monotonic()
    cpu_before = cpu_snapshot()
    children_before = children_cpu()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    interrupted = False
    try:
        while proc.poll() is None:
            if len(os.listdir(mark_dir)) >= settings.threads and not interrupted:
                proc.send_signal(signal.SIGINT)  # every thread drained: wrk reports now
                interrupted = True
            if time.monotonic() - started > bound + 30:
                proc.kill()
                raise HarnessError(f"wrk did not stop after {bound + 30}s: killed")
            time.sleep(0.05)
        stdout, stderr = proc.communicate(timeout=30)
        cpu_after = cpu_snapshot()
        cpu = cpu_usage(cpu_before, cpu_after)
        stopped = restarts(cpu_before, cpu_after)
        # wrk has exited by now: its CPU is in our children's rusage, not in /proc.
        cpu["components"]["wrk"] = children_cpu() - children_before
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    line = next((out for out in stdout.splitlines() if out.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise HarnessError(
            f"wrk ({' '.join(cmd)}) exited {proc.returncode} without results:\n"
            f"{stdout[-2000:]}\n{stderr[-2000:]}"
        )
    if stderr.strip():
        row.notes.append(f"wrk stderr: {stderr.strip()[:300]}")
    data = json.loads(line[len("BENCH_JSON ") :])
    data["wall_s"] = time.monotonic() - started
    data["cpu"] = cpu
    fill_row(row, data, settings)
    row.notes.append(cpu_note(cpu, data["received"]))
    if stopped:
        row.disturbed = True
        row.notes.append(
            "DISTURBED: these processes stopped or restarted during the run: "
            + ", ".join(stopped)
            + " (see `make ps`, .run/logs, the broker's and database's logs)"
        )
    return data


def fill_row(row, data, settings):
    row.raw = data
    # Answers over the time they took: the load phase, stretched by the drain's last
    # answers (never shorter than the load phase, even if the answers stopped early).
    span = max(data["span_s"] or 0.0, settings.duration)
    row.rps = data["received"] / span
    lat = data["latency_us"]
    row.p50, row.p95, row.p99 = (lat[k] / 1000.0 for k in ("p50", "p95", "p99"))
    errs = data["errors"]
    socket_errors = errs["connect"] + errs["read"] + errs["write"]
    # A refused or reset connection is both a socket error and a lost request: count once.
    row.errors = data["non2xx"] + errs["timeout"] + max(socket_errors, data["lost"], 0)
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(data["statuses"].items()))
    ports = ", ".join(f"{k}: {v}" for k, v in sorted(data["per_port"].items()))
    row.notes.append(
        f"{data['received']} answers in {span:.2f}s (statuses {statuses}; per port {ports})"
    )
    if socket_errors or errs["timeout"] or data["lost"]:
        row.notes.append(
            f"socket errors connect {errs['connect']} read {errs['read']} write {errs['write']}, "
            f"slower than {settings.timeout}s {errs['timeout']}, unanswered {data['lost']} "
            "(write errors in a burst usually mean a refused connection: a gateway down)"
        )
    if data["finished"] < data["threads"]:
        row.notes.append(
            f"only {data['finished']}/{data['threads']} wrk threads drained within "
            f"{settings.drain:.0f}s (requests lost to socket errors, or answers slower than that)"
        )
    row.notes.append(
        f"latency min {lat['min'] / 1000:.1f} mean {lat['mean'] / 1000:.1f} "
        f"p90 {lat['p90'] / 1000:.1f} p99.9 {lat['p999'] / 1000:.1f} max {lat['max'] / 1000:.1f} ms"
    )
