"""CPU per answer by component, before and after: a PNG from two `make bench` result files.

    python bench/plot.py BEFORE.json AFTER.json docs/cpu-per-answer.png

Each file is what `make bench` saves under ``.run/bench/`` (``bench-<time>.json``); the
CPU split is read from each row's notes (``CPU ms per answer: gateway 1.16, ...``). One
group of two stacked bars (before, after) per scenario found in both files, one colour per
component (the client, wrk and the bench itself left out).

matplotlib is not in requirements.lock (no service or test needs it): run this with an
interpreter that has it, e.g. ``python3 -m venv /tmp/plot && /tmp/plot/bin/pip install
matplotlib && /tmp/plot/bin/python bench/plot.py ...``.
"""

import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common.registry import PROCESS_KINDS  # noqa: E402 (the repository root first)

COMPONENTS = (*PROCESS_KINDS, "supervisord", "rabbitmq", "postgres")
SCENARIOS = ("ceiling", "by_id", "customers", "orders", "hot")
CPU_LINE = re.compile(r"CPU ms per answer: ([^;]+);")


def cpu_split(row):
    """``{component: ms}`` of one result row (components of the stack only)."""
    notes = row.get("notes") or ""
    match = CPU_LINE.search("\n".join(notes) if isinstance(notes, list) else notes)
    if not match:
        return None
    split = {}
    for part in match.group(1).split(","):
        name, _, value = part.strip().rpartition(" ")
        if name in COMPONENTS:
            split[name] = float(value)
    return split


def rows_by_scenario(path):
    with open(path) as stream:
        rows = json.load(stream)["rows"]
    return {row["key"]: (row["label"], cpu_split(row)) for row in rows if cpu_split(row)}


def main(before_path, after_path, output):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    before, after = rows_by_scenario(before_path), rows_by_scenario(after_path)
    scenarios = [key for key in SCENARIOS if key in before and key in after]
    figure, axes = plt.subplots(figsize=(10, 5.5))
    colours = plt.get_cmap("tab10")
    width = 0.38
    for index, key in enumerate(scenarios):
        for offset, (name, rows) in (
            (-width / 2, ("before", before)),
            (width / 2, ("after", after)),
        ):
            bottom = 0.0
            split = rows[key][1]
            for n, component in enumerate(COMPONENTS):
                value = split.get(component, 0.0)
                axes.bar(
                    index + offset,
                    value,
                    width * 0.95,
                    bottom=bottom,
                    color=colours(n),
                    label=component if index == 0 and name == "before" else None,
                )
                bottom += value
            axes.text(
                index + offset,
                bottom + 0.1,
                f"{name}\n{bottom:.1f}",
                ha="center",
                va="bottom",
                fontsize=8,
            )
    axes.set_xticks(range(len(scenarios)))
    axes.set_xticklabels([before[key][0].split(" ", 1)[1][:34] for key in scenarios], fontsize=8)
    axes.set_ylabel("CPU ms per answer (whole stack)")
    axes.set_title("CPU per answer by component, before and after (make bench)")
    axes.legend(loc="upper left", fontsize=8)
    tallest = max(sum(rows[key][1].values()) for rows in (before, after) for key in scenarios)
    axes.set_ylim(0, tallest * 1.2)
    figure.tight_layout()
    figure.savefig(output, dpi=110)
    print(f"plot: {output}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
