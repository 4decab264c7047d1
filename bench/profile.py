"""`make profile`: where the CPU goes in each process of the running stack, under load.

Runs one benchmark scenario (``PROFILE_SCENARIO``, default ``orders``; any key of
``BENCH_ONLY``) while py-spy samples every process of the stack's supervisord (gateways
and services) for the scenario's duration. For each process it writes
``.run/bench/profiles/<time>/<process>.txt`` (collapsed stacks, for flamegraph tools or
speedscope) and ``.svg`` (a flamegraph), and prints, per program, the functions of the
project and of the libraries it spends its time in, with their inclusive share of the
samples (``PROFILE_TOP`` lines, default 25).

py-spy reads other processes' memory: it needs root or ptrace permission
(``kernel.yama.ptrace_scope``). Idle time (a process waiting in its event loop) is not
sampled, so the shares are shares of the CPU each process used.
"""

import collections
import datetime
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
SUPERVISORCTL = [
    os.path.join(BIN, "supervisorctl"),
    "-c",
    os.path.join(ROOT, ".run", "supervisord.conf"),
]
# Frames worth naming: the project, and the layers a request crosses.
INTERESTING = re.compile(
    r"\((common|customers|products|orders|gateway|nameko|nameko_sqlalchemy|kombu|amqp"
    r"|sqlalchemy|marshmallow|werkzeug|psycopg2|logging|json)/"
)
FRAME = re.compile(r"(?P<function>.*) \((?P<path>.*?):(?P<line>\d+)\)")


def stack_processes():
    """``{process name: pid}`` of every running program of the stack's supervisord."""
    out = subprocess.run(SUPERVISORCTL + ["status"], capture_output=True, text=True).stdout
    processes = {}
    for line in out.splitlines():
        match = re.match(r"\S+:(\S+)\s+RUNNING\s+pid (\d+)", line)
        if match:
            processes[match.group(1)] = int(match.group(2))
    return processes


def short(frame):
    match = FRAME.match(frame)
    if not match:
        return frame
    return f"{match['function']} ({match['path']})"  # py-spy already shortens the paths


def inclusive_shares(collapsed_path):
    """``(samples, Counter(frame -> samples that include it))`` of a collapsed-stack file."""
    total, counts = 0, collections.Counter()
    with open(collapsed_path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            total += int(count)
            for frame in {short(f) for f in stack.split(";") if INTERESTING.search(f)}:
                counts[frame] += int(count)
    return total, counts


def main():
    scenario = os.environ.get("PROFILE_SCENARIO", "orders")
    duration = float(os.environ.get("BENCH_DURATION", "10"))
    top = int(os.environ.get("PROFILE_TOP", "25"))
    processes = stack_processes()
    if not processes:
        print("profile: no stack running (`make up` first)", file=sys.stderr)
        return 3
    outdir = os.path.join(
        ROOT,
        ".run",
        "bench",
        "profiles",
        datetime.datetime.now().strftime("%Y%m%d-%H%M%S") + f"-{scenario}",
    )
    os.makedirs(outdir)
    env = {**os.environ, "BENCH_ONLY": scenario, "BENCH_DURATION": f"{duration:g}"}
    bench = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "bench", "run.py")],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    # Sample the load itself, not the scenario's setup (seeding, creating products).
    for line in bench.stdout:
        print(line, end="")
        if line.startswith(f"bench: {scenario} ..."):
            break
    time.sleep(min(3.0, duration / 4))
    spies = []
    for name, pid in sorted(processes.items()):
        base = os.path.join(outdir, name)
        for fmt, ext in (("raw", "txt"), ("flamegraph", "svg")):
            spies.append(
                subprocess.Popen(
                    [
                        os.path.join(BIN, "py-spy"),
                        "record",
                        "--nonblocking",
                        "--rate",
                        "200",
                        "--duration",
                        str(max(1, int(duration / 2))),
                        "--pid",
                        str(pid),
                        "--format",
                        fmt,
                        "--output",
                        f"{base}.{ext}",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
    for line in bench.stdout:
        print(line, end="")
    bench.wait()
    failed = [spy.args[spy.args.index("--pid") + 1] for spy in spies if spy.wait() != 0]
    if failed:
        print(
            f"profile: py-spy failed on pids {sorted(set(failed))} (root or ptrace needed)",
            file=sys.stderr,
        )
    print(f"\nprofile: {scenario}, inclusive share of each process's CPU samples")
    for name in sorted(processes):
        path = os.path.join(outdir, f"{name}.txt")
        if not os.path.exists(path):
            continue
        total, counts = inclusive_shares(path)
        if not total:
            continue
        print(f"\n{name} ({total} samples)")
        for frame, count in counts.most_common(top):
            print(f"  {100 * count / total:5.1f}%  {frame}")
    print(f"\nprofile: collapsed stacks and flamegraphs in {os.path.relpath(outdir, ROOT)}")
    return bench.returncode


if __name__ == "__main__":
    sys.exit(main())
