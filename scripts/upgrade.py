"""A rolling upgrade of a running stack to the code checked out (`make upgrade`).

The sequence (docs/DEPLOY.md, "Rolling upgrade"), proven under load by
tests/faults/test_rolling_upgrade.py:

1. the expand migrations (``manage.py migrate --phase expand``): additions only, which
   the running processes of the previous release keep working on;
2. every process replaced, one at a time, in :data:`ROLL_ORDER`: orders first (callers
   before what they call: orders' in-flight locks must be everywhere before products'
   short ``HOLD_CONFIRM_AGE`` applies), then products, customers and the gateways. Each
   stop is graceful (SIGTERM: a service finishes its workers and leaves unstarted
   messages to the other processes, a gateway drains its connections), and the next
   process is replaced only once its replacement answers its probe;
3. the contract migrations (``manage.py migrate --phase contract``), once no process of
   the previous release runs, nor will again (no rollback to it).

This module gives the order and the readiness wait; how a process is replaced is the
caller's (:func:`roll`'s ``replace``): `make upgrade` restarts each supervisord program in
place (:func:`supervisor_steps`), the test starts the new release's process beside the
old one and then stops the old one.
"""

import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from common.registry import GATEWAY
from scripts.readiness import wait_answering
from scripts.supervisor import gateway_processes, metrics_targets, scrape_host

ROLL_ORDER = ("orders", "products", "customers", GATEWAY)


@dataclass(frozen=True)
class Step:
    """One process to replace: its ``kind`` (a service or ``gateway``), its index among
    that kind's processes, its supervisord name and the URL that answers 200 once the
    process is ready (a service's ops listener ``/ready``, a gateway's ``/health``)."""

    kind: str
    index: int
    program: str
    probe: str


def probe_url(kind: str, address: str) -> str:
    return f"http://{address}/{'health' if kind == GATEWAY else 'ready'}"


def ordered(steps: Iterable[Step]) -> list[Step]:
    """``steps`` in :data:`ROLL_ORDER` (by kind, then index)."""
    return sorted(steps, key=lambda step: (ROLL_ORDER.index(step.kind), step.index))


def supervisor_steps(config) -> list[Step]:
    """Every process of the stack `make up` runs from ``config`` (scripts/supervisor.py),
    in :data:`ROLL_ORDER`."""
    steps = []
    for kind, addresses in metrics_targets(config).items():
        if kind == GATEWAY:
            continue
        for index, address in enumerate(addresses):
            steps.append(Step(kind, index, f"{kind}:{kind}-{index}", probe_url(kind, address)))
    for index, addresses in enumerate(gateway_processes(config)):
        host, port = addresses[0].rsplit(":", 1)
        address = f"{scrape_host(host)}:{port}"
        program = f"gateways:gateway-{port}-0"
        steps.append(Step(GATEWAY, index, program, probe_url(GATEWAY, address)))
    return ordered(steps)


def supervisor_restart(supervisorctl: list[str], step: Step) -> None:
    """Restart ``step``'s program in place: supervisorctl stops it (SIGTERM, then waits
    for it to exit: at most ``stopwaitsecs``) and starts it again."""
    done = subprocess.run(
        [*supervisorctl, "restart", step.program], capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0 or "ERROR" in done.stdout:
        raise RuntimeError(f"supervisorctl restart {step.program}: {done.stdout}{done.stderr}")


def roll(
    steps: Iterable[Step],
    replace: Callable[[Step], None],
    ready: Callable[[str], bool] = wait_answering,  # each process 60 s at most
    say: Callable[[str], None] = print,
) -> None:
    """Replace each of ``steps`` in turn (``replace(step)``), each only once the one
    before answers its probe (``ready(step.probe)``); RuntimeError if one never does."""
    for step in steps:
        started = time.monotonic()
        replace(step)
        if not ready(step.probe):
            raise RuntimeError(f"{step.program} not ready ({step.probe}): upgrade stopped")
        say(f"{step.program}: replaced, ready in {time.monotonic() - started:.1f}s")
