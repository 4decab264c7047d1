"""The latency percentile spectrum of a `make bench` run's fixed-rate rows, as a PNG: one
line per (target, load), latency from the scheduled send time against the percentile on
HdrHistogram's log axis (x = 1 / (1 - percentile): 90 %, 99 %, 99.9 % ... evenly spaced).

    python bench/latency_plot.py [RESULT.json] OUTPUT.png

RESULT.json is what `make bench` / `make bench-latency` saves under ``.run/bench/``
(default: the newest one with fixed-rate rows); the spectrum of each row is
``raw.fixed_rate.spectrum`` (bench/openloop.py). The 100 % step (the max) has no place
on that axis: it is in the legend.

matplotlib is not in requirements.lock (no service or test needs it; see bench/plot.py):
`make bench-latency-plot` runs this with an interpreter of its own that has it.
"""

import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, ".run", "bench")
TICKS = (0.0, 90.0, 99.0, 99.9, 99.99, 99.999)


def fixed_rate_rows(path):
    """``[(label, fraction, figures), ...]`` of the fixed-rate rows of a saved run."""
    with open(path) as stream:
        rows = json.load(stream)["rows"]
    found = []
    for row in rows:
        raw = row.get("raw")
        if isinstance(raw, dict) and "fixed_rate" in raw:
            found.append((raw["target"], raw["fraction"], raw["fixed_rate"]))
    return found


def newest_result():
    for path in sorted(glob.glob(os.path.join(RESULTS, "bench-*.json")), reverse=True):
        if fixed_rate_rows(path):
            return path
    raise SystemExit(f"no saved run with fixed-rate rows in {RESULTS}: `make bench-latency`")


def x_of(percentile):
    return 1.0 / (1.0 - percentile / 100.0)


def main(argv):
    if len(argv) not in (1, 2):
        raise SystemExit(__doc__)
    source, output = (newest_result(), argv[0]) if len(argv) == 1 else argv
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = fixed_rate_rows(source)
    figure, axes = plt.subplots(figsize=(10, 5.5))
    colours = plt.get_cmap("tab10")
    targets = list(dict.fromkeys(label for label, _, _ in rows))  # a colour per target
    loads = sorted({fraction for _, fraction, _ in rows})  # a line style per load
    styles = ("--", "-", ":", "-.")
    for label, fraction, figures in rows:
        points = [(x_of(p), ms) for p, ms in figures["spectrum"] if p < 100.0]
        latency = figures["latency_ms"]
        axes.plot(
            [x for x, _ in points],
            [ms for _, ms in points],
            color=colours(targets.index(label)),
            linestyle=styles[loads.index(fraction) % len(styles)],
            label=f"{label} @ {fraction:.0%} of capacity: {figures['rate']:.0f}/s "
            f"(p99 {latency['p99']:.0f}, max {latency['max']:.0f} ms)",
        )
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xticks([x_of(p) for p in TICKS])
    axes.set_xticklabels([f"{p:g}%" for p in TICKS])
    axes.set_xlim(1, x_of(99.99))
    axes.set_xlabel("percentile")
    axes.set_ylabel("latency from the scheduled send, ms (log)")
    axes.set_title("Latency at a fixed arrival rate (open loop, no coordinated omission)")
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    figure.text(0.01, 0.01, os.path.basename(source), fontsize=7, color="grey")
    figure.tight_layout()
    figure.savefig(output, dpi=110)
    print(f"plot: {output} (from {os.path.relpath(source, ROOT)})")


if __name__ == "__main__":
    main(sys.argv[1:])
