"""What `make bench` prints and keeps: the result ``Row`` of a scenario, the machine and
settings lines at the start, the table (req/s, latency percentiles, errors, the ratio to
the ceiling's req/s, the invariant), the fixed-rate rows' table (scenario 8), each row's
notes (CPU per answer by component among them), and the JSON saved under ``.run/bench/``.
"""

import datetime
import json
import os
import platform
import subprocess

from bench.settings import HOST, RESULTS_DIR
from bench.wrk import wrk_version


class Row:
    def __init__(self, key, label):
        self.key = key
        self.label = label
        self.rps = None
        self.p50 = self.p95 = self.p99 = None
        self.errors = 0
        self.invariant = "-"
        self.notes = []
        self.raw = None
        self.failed = False
        self.disturbed = False

    def as_dict(self):
        return {k: v for k, v in vars(self).items()}


def machine_info():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        mem = subprocess.run(["free", "-h"], capture_output=True, text=True, timeout=5).stdout
        mem_total = mem.splitlines()[1].split()[1]
    except Exception:
        mem_total = "?"
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": mem_total,
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "kernel": platform.release(),
        "wrk": wrk_version(),
    }


def print_header(info, settings):
    print(
        f"bench: {info['date']}, {info['nproc']} CPUs ({info['cpu']}), {info['memory']} RAM, "
        f"load average {info['loadavg']}, {info['wrk']}"
    )
    print(
        f"bench: {settings.duration:g}s per scenario, {settings.connections} connections "
        f"({settings.threads} wrk threads) over ports {','.join(map(str, settings.ports))} "
        f"on {HOST}; run tag {settings.tag}"
        + ("" if settings.profile == "full" else f"; profile {settings.profile}")
    )


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def print_table(rows, ceiling_rps):
    headers = [
        "scenario",
        "req/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "errors",
        "x ceiling",
        "invariant",
    ]
    lines = []
    for row in rows:
        ratio = None
        if ceiling_rps and row.rps is not None and row.key != "burst":
            ratio = row.rps / ceiling_rps
        lines.append(
            [
                row.label + (" (!)" if row.disturbed else ""),
                fmt(row.rps, ".1f"),
                fmt(row.p50, ".1f"),
                fmt(row.p95, ".1f"),
                fmt(row.p99, ".1f"),
                str(row.errors),
                fmt(ratio, ".2f"),
                row.invariant,
            ]
        )
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)]

    def render(cells):
        out = []
        for i, cell in enumerate(cells):
            out.append(cell.ljust(widths[i]) if i in (0, 7) else cell.rjust(widths[i]))
        return "| " + " | ".join(out) + " |"

    print(render(headers))
    print("|" + "|".join(("-" * (w + 2)) for w in widths) + "|")
    for line in lines:
        print(render(line))
    if any(row.disturbed for row in rows):
        print(
            "(!) a stack process, RabbitMQ or PostgreSQL stopped during that scenario: "
            "its figures are not a measurement of the steady state (notes below)"
        )


def is_fixed_rate(row):
    """A row of the fixed-rate scenario (bench/latency.py), shown in a table of its own."""
    return isinstance(row.raw, dict) and "fixed_rate" in row.raw


def print_fixed_rate_table(rows):
    """One line per (target, load): capacity (closed loop, just before), the rate asked
    for, the send rate achieved, answers/s, p50/p99/p99.9/max from the scheduled send
    time, errors, the client's CPU share of one core, and the machine's busy share with
    the part of it taken by processes outside the stack and the bench."""
    headers = ["fixed rate", "capacity/s", "rate/s", "sent/s", "answers/s"]
    headers += ["p50 ms", "p99 ms", "p99.9 ms", "max ms", "errors", "client CPU", "busy (others)"]
    lines = []
    for row in rows:
        figures, latency = row.raw["fixed_rate"], row.raw["fixed_rate"]["latency_ms"]
        lines.append(
            [
                f"{row.raw['target']} @ {row.raw['fraction']:.0%}",
                fmt(row.raw["capacity"], ".1f"),
                fmt(figures["rate"], ".1f"),
                fmt(figures["achieved_send_rate"], ".1f"),
                fmt(figures["answer_rate"], ".1f"),
                *(fmt(latency[k], ".1f") for k in ("p50", "p99", "p99.9", "max")),
                str(row.errors),
                f"{figures['client_cpu_share']:.0%}",
                f"{row.raw.get('machine_busy', 0):.0%} ({row.raw.get('others_cpu', 0):.0%})",
            ]
        )
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)]
    for cells in [headers, None, *lines]:
        if cells is None:
            print("|" + "|".join(("-" * (w + 2)) for w in widths) + "|")
            continue
        out = [c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(cells)]
        print("| " + " | ".join(out) + " |")
    print(
        "(open loop: request i sent at start + i / rate whatever the answers; latency from "
        "that scheduled time, HdrHistogram; sent/s below rate/s: the client fell behind)"
    )


def print_results(rows):
    """The table, the fixed-rate table if any, then every row's notes."""
    ceiling = next((r.rps for r in rows if r.key == "ceiling"), None)
    print()
    print_table([row for row in rows if not is_fixed_rate(row)], ceiling)
    fixed_rate = [row for row in rows if is_fixed_rate(row)]
    if fixed_rate:
        print()
        print_fixed_rate_table(fixed_rate)
    print()
    for row in rows:
        print(f"{row.label}:")
        for note in row.notes:
            print(f"    {note}")


def save(info, settings, rows, status):
    """``.run/bench/bench-<time>.json`` (read back by bench/scaling.py); returns its path."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = os.path.join(RESULTS_DIR, f"bench-{stamp}.json")
    with open(path, "w") as f:
        json.dump(
            {
                "machine": info,
                "settings": {k: v for k, v in vars(settings).items()},
                "rows": [r.as_dict() for r in rows],
                "exit_status": status,
            },
            f,
            indent=2,
            default=str,
        )
    return path
