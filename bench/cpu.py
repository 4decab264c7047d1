"""Where the CPU goes during a `make bench` scenario: per-process CPU time from /proc,
attributed to a component (the gateways and each service, as children of the stack's
supervisord; supervisord itself, which carries the processes' output; RabbitMQ;
PostgreSQL; wrk; the bench itself; "other"), the machine's busy
time, and which long-lived processes (services, RabbitMQ's VM, PostgreSQL's postmaster)
stopped between two snapshots.
"""

import os

from bench.settings import ROOT
from common.registry import PROCESS_KINDS

COMPONENTS = (*PROCESS_KINDS, "supervisord", "rabbitmq", "postgres", "wrk", "bench")
RABBITMQ_COMMS = {"beam.smp", "erl_child_setup", "inet_gethost", "epmd"}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def supervisord_pid():
    try:
        with open(os.path.join(ROOT, ".run", "supervisord.pid")) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def classify(pid, comm, ppid, stack_parent):
    if comm in RABBITMQ_COMMS:
        return "rabbitmq"
    if comm.startswith("postgres"):
        return "postgres"
    if comm == "wrk":
        return "wrk"
    if pid == os.getpid():
        return "bench"
    if pid == stack_parent:
        return "supervisord"
    if stack_parent is not None and ppid == stack_parent:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
        except OSError:
            return "other"
        for service in PROCESS_KINDS:
            if f"{service}.service" in cmdline:
                return service
    return "other"  # anything else, the stack's own tests included


def cpu_snapshot():
    """CPU seconds used so far by each process, classified; and the machine's busy time."""
    stack_parent = supervisord_pid()
    per_pid = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        pid, ppid = int(entry), int(fields[1])
        seconds = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        per_pid[pid] = (classify(pid, comm, ppid, stack_parent), seconds, comm, ppid)
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]
    return {
        "pids": per_pid,
        "busy": (sum(ticks) - idle) / CLOCK_TICKS,
        "total": sum(ticks) / CLOCK_TICKS,
    }


def cpu_usage(before, after):
    """CPU seconds per component between two snapshots (processes that exited meanwhile
    are missing: short-lived ones are undercounted)."""
    used = {}
    for pid, (component, seconds, _, _) in after["pids"].items():
        previous = before["pids"].get(pid)
        start = previous[1] if previous and previous[0] == component else 0.0
        used[component] = used.get(component, 0.0) + max(seconds - start, 0.0)
    return {
        "components": used,
        "busy": after["busy"] - before["busy"],
        "total": after["total"] - before["total"],
    }


def long_lived(snapshot):
    """The processes whose restart disturbs a measurement: the stack's services and
    gateways, RabbitMQ's VM, PostgreSQL's postmaster."""
    pids = snapshot["pids"]
    found = {}
    for pid, (component, _, comm, ppid) in pids.items():
        if component in PROCESS_KINDS:
            found[pid] = component
        elif comm == "beam.smp" and is_rabbitmq_server(pid):
            found[pid] = "RabbitMQ"
        elif component == "postgres" and not pids.get(ppid, ("", 0, ""))[2].startswith("postgres"):
            found[pid] = "PostgreSQL"
    return found


def is_rabbitmq_server(pid):
    """The broker's VM, not a short-lived CLI VM (rabbitmqctl, rabbitmq-plugins: `make
    seed` checks the backing services) whose exit is no restart."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"rabbit\x00boot" in f.read()
    except OSError:
        return False


def restarts(before, after):
    """What stopped during a run (a pid gone), e.g. ['RabbitMQ', 'gateway']."""
    gone = long_lived(before).keys() - long_lived(after).keys()
    names = long_lived(before)
    return sorted({names[pid] for pid in gone})


def children_cpu():
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_note(usage, answers):
    used = usage["components"]
    parts = []
    for component in COMPONENTS:
        seconds = used.get(component, 0.0)
        if seconds >= 0.01 and answers:
            parts.append(f"{component} {seconds * 1000 / answers:.2f}")
    machine = usage["total"] or 1.0
    other = used.get("other", 0.0)
    return (
        "CPU ms per answer: "
        + (", ".join(parts) or "-")
        + f"; machine busy {100 * usage['busy'] / machine:.0f}%, of which processes outside "
        + f"the stack and the bench {100 * other / machine:.0f}%"
    )
