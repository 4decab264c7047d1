"""Medians over several saved `make bench` runs: on a machine whose speed drifts by 20 %
from one minute to the next, one run's ratios and CPU figures say little.

    .venv/bin/python bench/summary.py .run/bench/bench-*.json     # or the last N:
    .venv/bin/python bench/summary.py --last 5

For each scenario: the median of req/s, of the ratio to the same run's ceiling, and of the
CPU milliseconds per answer of each component of the stack (its processes, supervisord,
RabbitMQ, PostgreSQL) and of their sum, with the smallest and largest sum. Prints a
Markdown table.
"""

import glob
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common.registry import PROCESS_KINDS  # noqa: E402 (the repository root first)

STACK = (*PROCESS_KINDS, "supervisord", "rabbitmq", "postgres")


def runs(paths):
    for path in paths:
        with open(path) as stream:
            rows = json.load(stream)["rows"]
        ceiling = next((row["rps"] for row in rows if row["key"] == "ceiling"), None)
        for row in rows:
            raw = row.get("raw") or {}
            answers = raw.get("requests") or 0
            used = (raw.get("cpu") or {}).get("components") or {}
            if not answers or row.get("failed"):
                continue
            split = {c: 1000 * used.get(c, 0.0) / answers for c in STACK}
            yield row["key"], row["label"], row["rps"], ceiling, split


def summary(paths):
    by_key = {}
    for key, label, rps, ceiling, split in runs(paths):
        entry = by_key.setdefault(key, {"label": label, "rps": [], "ratio": [], "split": []})
        entry["rps"].append(rps)
        if ceiling:
            entry["ratio"].append(rps / ceiling)
        entry["split"].append(split)
    lines = [
        "| scenario | runs | req/s | x ceiling | CPU ms per answer: "
        + " / ".join(STACK)
        + " | total (min-max) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for entry in by_key.values():
        splits = entry["split"]
        medians = [statistics.median(s[c] for s in splits) for c in STACK]
        totals = [sum(s.values()) for s in splits]
        lines.append(
            f"| {entry['label']} | {len(splits)} | {statistics.median(entry['rps']):.1f} | "
            f"{statistics.median(entry['ratio']):.2f} | "
            + " / ".join(f"{m:.2f}" for m in medians)
            + f" | **{statistics.median(totals):.2f}** ({min(totals):.2f}-{max(totals):.2f}) |"
        )
    return "\n".join(lines)


def main(argv):
    if argv[:1] == ["--last"]:
        found = sorted(glob.glob(os.path.join(".run", "bench", "bench-*.json")))
        paths = found[-int(argv[1]) :]
    else:
        paths = argv
    if not paths:
        raise SystemExit(__doc__)
    print(summary(paths))


if __name__ == "__main__":
    main(sys.argv[1:])
