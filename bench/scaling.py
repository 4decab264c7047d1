"""`make bench-scaling`: the benchmark with 1, 2 and 4 processes of products and orders.

For each count N of ``BENCH_SCALING`` (default ``1,2,4``) the stack is restarted (`make
restart`) with ``PRODUCTS_PROCESSES=N ORDERS_PROCESSES=N`` (customers and the three
gateways as configured), then ``bench/run.py`` runs the scenarios of ``BENCH_ONLY``
(default ``ceiling,by_id,orders,hot``; the hot row checks the stock invariant with N
products processes taking row locks at once). One table compares the runs. At the end
the stack is restarted with the configured defaults.

Exit status: 0, 1 if an invariant failed in any run, 2 on a harness error.
"""

import glob
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, ".run", "bench")


def restart(env):
    subprocess.run(
        ["make", "--no-print-directory", "restart"],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def bench(env):
    before = set(glob.glob(os.path.join(RESULTS, "bench-*.json")))
    status = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "run.py")], cwd=ROOT, env=env
    ).returncode
    new = sorted(set(glob.glob(os.path.join(RESULTS, "bench-*.json"))) - before)
    if not new:
        raise SystemExit(f"bench-scaling: bench/run.py saved no results (exit {status})")
    with open(new[-1]) as f:
        return json.load(f), status


def main():
    counts = [int(n) for n in os.environ.get("BENCH_SCALING", "1,2,4").split(",")]
    only = os.environ.get("BENCH_ONLY", "ceiling,by_id,orders,hot")
    runs, worst = {}, 0
    try:
        for n in counts:
            env = {
                **os.environ,
                "PRODUCTS_PROCESSES": str(n),
                "ORDERS_PROCESSES": str(n),
                "BENCH_ONLY": only,
            }
            print(f"bench-scaling: products x{n}, orders x{n}: restarting the stack", flush=True)
            restart(env)
            runs[n], status = bench(env)
            worst = max(worst, status)
    finally:
        print("bench-scaling: restarting the stack with the configured defaults", flush=True)
        restart(
            {
                k: v
                for k, v in os.environ.items()
                if k not in ("PRODUCTS_PROCESSES", "ORDERS_PROCESSES")
            }
        )

    keys = [row["key"] for row in runs[counts[0]]["rows"]]
    labels = {row["key"]: row["label"] for row in runs[counts[0]]["rows"]}
    header = ["scenario"] + [f"x{n}: req/s (x ceiling)" for n in counts] + ["invariant"]
    lines = []
    for key in keys:
        cells, invariants = [labels[key]], []
        for n in counts:
            rows = {row["key"]: row for row in runs[n]["rows"]}
            ceiling = rows.get("ceiling", {}).get("rps")
            row = rows.get(key)
            if row is None or not row["rps"]:
                cells.append("-")
                continue
            ratio = f" ({row['rps'] / ceiling:.2f})" if ceiling else ""
            cells.append(f"{row['rps']:.1f}{ratio}, {row['errors']} err")
            if row.get("invariant") and row["invariant"] != "-":
                invariants.append(f"x{n} {row['invariant']}")
        cells.append("; ".join(invariants) or "-")
        lines.append(cells)
    widths = [max(len(str(c)) for c in column) for column in zip(header, *lines, strict=True)]
    for cells in [header, ["-" * w for w in widths]] + lines:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |")
    return worst


if __name__ == "__main__":
    sys.exit(main())
