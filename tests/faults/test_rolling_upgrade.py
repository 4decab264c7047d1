"""A rolling upgrade from the previous release to this code, under load, with no error.

The previous release is each release of deploy/RELEASES (scripts/releases.py): the one
deployed now (``upgrade-from``) and the ones before it, each checked
out in a git worktree of its own and run on this venv from there (its code first on
PYTHONPATH, its config.yml). The sequence is docs/DEPLOY.md's (scripts/upgrade.py):

1. databases built by the previous release's own `migrate`, two processes of every
   service and two gateways of the previous release serving;
2. this code's expand migrations applied while they serve (old code, new schema);
3. every process replaced one at a time, in ``ROLL_ORDER`` (orders, products, customers,
   gateways): this code's process started beside the old one (a gateway on the same
   port: eventlet listens with SO_REUSEPORT), then, once it answers its probe, the old
   one stopped with SIGTERM (a service finishes its workers, a gateway drains);
4. the contract migrations (none yet: asserted);
5. all the while, keyed orders from several clients and reads over both gateway ports.

Then: every order answered 201 and every read 200 (no 503, 504, no connection error),
every Idempotency-Key has exactly one confirmed order, the books balance, nothing is
pending, and no process logged an error. Bounds and ages are config.yml's (the previous
release's products keep its HOLD_CONFIRM_AGE of 120 s, this code's products, started once
every orders process is new, the new 5 s: the documented order).
"""

import glob
import itertools
import os
import subprocess
import sys
import time

import eventlet
import pytest
import requests
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from common import admin
from common.config import ROOT
from common.registry import GATEWAY, SERVICES
from scripts import readiness, releases, upgrade
from scripts.processes import free_port
from tests.faults.conftest import StoppableLoad, assert_books, create_shop
from tests.harness import ProgramStack, program, rabbit_vhost, stack_env

PROCESSES = 2  # of every service, and gateways
SETTINGS = {"MAX_WORKERS": 4}  # 8 service processes at most at once, in max_connections
PHASE_SECONDS = 4  # of load on each of the unmixed states (old, old on the new schema, new)
MIGRATE_TIMEOUT = 120


@pytest.fixture(params=sorted(releases.read_releases().tags))
def previous_release(request, tmp_path):
    """``(tag, commit, path)`` of each release of deploy/RELEASES (its upgrade-from, the
    release deployed now, and the ones before it: a shop that skipped a release upgrades
    straight to this code too), checked out at ``path`` (a detached git worktree, removed
    afterwards)."""
    known = releases.read_releases()
    commit = releases.resolve(request.param, known)
    with releases.worktree(commit, str(tmp_path / "previous-release")) as path:
        yield request.param, commit, path


@pytest.fixture
def upgrade_databases(test_db_uris, admin_uri):
    """``(uris, engines)`` of three empty databases of this test's own (the session's are
    at this code's head), owned by the services' roles; dropped afterwards."""
    uris = {}
    for service, uri in test_db_uris.items():
        url = make_url(uri)
        uris[service] = url.set(database=f"{url.database}_up").render_as_string(hide_password=False)
    for uri in uris.values():
        admin.drop_database(uri, admin_uri)
        admin.create_database(uri, admin_uri)
    engines = {service: create_engine(uri, pool_pre_ping=True) for service, uri in uris.items()}
    try:
        yield uris, engines
    finally:
        for engine in engines.values():
            engine.dispose()
        for uri in uris.values():
            admin.drop_database(uri, admin_uri)


def manage(root, env, *args):
    """``scripts/manage.py <args>`` of the code at ``root``, as an operator runs it."""
    done = subprocess.run(
        [sys.executable, os.path.join(root, "scripts", "manage.py"), *args],
        cwd=root,
        env={**env, "PYTHONPATH": root},
        capture_output=True,
        text=True,
        timeout=MIGRATE_TIMEOUT,
    )
    assert done.returncode == 0, f"{root}: manage.py {args}: {done.stdout}{done.stderr}"
    return done.stdout


class Reads:
    """GETs over the gateways until :meth:`stop`: the customer, a product, and an order
    the load got a 201 for (which must read ``confirmed``); records every answer."""

    def __init__(self, urls, customer_id, product_ids, load, pace=0.05):
        self.customer_id, self.product_ids, self.load = customer_id, product_ids, load
        self.urls, self.pace = itertools.cycle(urls), pace
        self.answers = []  # (path, status or the exception's name, confirmed or None)
        self.http = requests.Session()
        self.stopped = False
        self._thread = None

    def paths(self):
        for n in itertools.count():
            yield f"/api/customers/{self.customer_id}"
            yield f"/api/products/{self.product_ids[n % len(self.product_ids)]}"
            confirmed = [
                body["id"] for status, body, _ in self.load.answers.values() if status == 201
            ]
            if confirmed:
                yield f"/api/orders/{confirmed[-1]}"

    def run(self):
        for path in self.paths():
            if self.stopped:
                return
            try:
                response = self.http.get(f"{next(self.urls)}{path}", timeout=20)
                status = response.status_code
                ok = response.json().get("status") == "confirmed" if "/orders/" in path else None
            except (requests.RequestException, ValueError) as exc:
                status, ok = type(exc).__name__, None
            self.answers.append((path, status, ok))
            eventlet.sleep(self.pace)

    def start(self):
        self._thread = eventlet.spawn(self.run)

    def stop(self):
        self.stopped = True
        self._thread.wait()

    def failures(self):
        return [answer for answer in self.answers if answer[1] != 200 or answer[2] is False]


class Rollout:
    """The test's processes under supervisord: ``old`` programs from the previous
    release's worktree, then their replacements from this checkout, one at a time."""

    def __init__(self, stack, old_root):
        self.stack, self.old_root = stack, old_root
        self.ports = [free_port() for _ in range(PROCESSES)]  # the gateways' public ports
        self.urls = [f"http://127.0.0.1:{port}" for port in self.ports]
        self.replaced = []  # (program, seconds until ready)

    def start(self, kind, index, release):
        """Start ``kind`` process ``index`` of ``release`` ("old" or "new"); returns the
        URL of its probe. A new gateway also listens on a port of its own, so that its
        probe reaches it and not the old one sharing the public port."""
        root = self.old_root if release == "old" else ROOT
        if kind == GATEWAY:
            own = f"127.0.0.1:{free_port()}"
            public = f"127.0.0.1:{self.ports[index]}"
            env = {"WEB_SERVER_ADDRESS": public if release == "old" else f"{public},{own}"}
            probe = upgrade.probe_url(kind, public if release == "old" else own)
        else:
            own = f"127.0.0.1:{free_port()}"
            env = {"OPS_HTTP_ADDRESS": own}
            probe = upgrade.probe_url(kind, own)
        name = f"{kind}-{release}{index}"
        self.stack.add(name, program(name, kind, root, self.stack.run_dir, env))
        return probe

    def start_old(self):
        probes = [
            self.start(kind, index, "old")
            for kind in (*SERVICES, GATEWAY)
            for index in range(PROCESSES)
        ]
        for probe in probes:
            assert readiness.wait_answering(probe), f"{probe}: the previous release never ready"

    def replace(self, step):
        """This code's process for ``step`` ready beside the old one, then the old one
        stopped gracefully (what the rolling upgrade does to each process)."""
        started = time.monotonic()
        probe = self.start(step.kind, step.index, "new")
        assert readiness.wait_answering(probe), f"{step.program}: this code's process never ready"
        self.replaced.append((step.program, round(time.monotonic() - started, 1)))
        stopped = self.stack.stop_program(f"{step.kind}-old{step.index}")
        assert "stopped" in stopped, stopped

    def steps(self):
        return upgrade.ordered(
            upgrade.Step(kind, index, f"{kind}-new{index}", "")
            for kind in upgrade.ROLL_ORDER
            for index in range(PROCESSES)
        )


def error_lines(run_dir):
    """Lines of the processes' logs at level ERROR or above, and tracebacks."""
    found = []
    for path in sorted(glob.glob(os.path.join(run_dir, "logs", "*-*.*"))):
        with open(path, errors="replace") as stream:
            for line in stream:
                if (
                    '"level": "ERROR"' in line
                    or '"level": "CRITICAL"' in line
                    or "Traceback" in line
                ):
                    found.append(f"{os.path.basename(path)}: {line.strip()[:300]}")
    return found


def test_rolling_upgrade_from_the_previous_release_under_load(
    request, rabbit_manager, previous_release, upgrade_databases, tmp_path
):
    tag, commit, old_root = previous_release
    uris, engines = upgrade_databases
    timeline = {}
    began = time.monotonic()
    amqp_uri = request.config.getoption("RABBIT_AMQP_URI")
    with rabbit_vhost(rabbit_manager, amqp_uri, "shop_upgrade") as vhost_uri:
        env = stack_env(vhost_uri, uris, **SETTINGS)
        # 1. the previous release's schema, by the previous release's migrate
        manage(old_root, env, "migrate")
        run_dir = str(tmp_path / "stack")
        with ProgramStack(env, run_dir) as stack:
            rollout = Rollout(stack, old_root)
            rollout.start_old()
            timeline["previous release ready"] = time.monotonic() - began
            customer_id, stock_added = create_shop(rollout.urls[0], stock=100_000)
            load = StoppableLoad(
                rollout.urls,
                customer_id,
                sorted(stock_added),
                count=20_000,
                concurrency=6,
                pace=0.05,
            )
            reads = Reads(rollout.urls, customer_id, sorted(stock_added), load)
            load.start()
            reads.start()
            eventlet.sleep(PHASE_SECONDS)

            # 2. expand, under load; no contract migration pending afterwards (none exists)
            expanded = manage(ROOT, env, "migrate", "--phase", "expand")
            for service, uri in uris.items():
                assert admin.schema_state(service, uri) == "current", (service, expanded)
            timeline["expanded"] = time.monotonic() - began
            eventlet.sleep(PHASE_SECONDS)

            # 3. every process, one at a time, in the documented order
            upgrade.roll(rollout.steps(), rollout.replace, ready=lambda probe: True, say=print)
            timeline["rolled"] = time.monotonic() - began

            # 4. contract: nothing to do yet (no migration is a contract since the rule)
            contracted = manage(ROOT, env, "migrate", "--phase", "contract")
            assert contracted.count("nothing pending") == len(uris), contracted
            eventlet.sleep(PHASE_SECONDS)
            load.stop()
            reads.stop()
            timeline["load stopped"] = time.monotonic() - began

            outcome = {
                "orders": len(load.attempts),
                "order statuses": sorted(load.statuses_seen, key=str),
                "connection failures": load.connection_failures,
                "longest order answer s": load.outage()["longest_answer_s"],
                "reads": len(reads.answers),
                "read failures": reads.failures()[:10],
                "replaced (program, s to ready)": rollout.replaced,
                "timeline s": {k: round(v, 1) for k, v in timeline.items()},
            }
            print(f"rolling upgrade from {tag} ({commit[:10]}): {outcome}")
            assert load.statuses_seen == {201}, outcome
            assert not load.connection_failures, (outcome, load.aborted[:5])
            assert reads.answers and not reads.failures(), outcome
            # 5. nothing lost: each key one confirmed order, books balanced, none pending
            assert_books(engines, stock_added, load)
            assert error_lines(run_dir) == []
        with open(os.path.join(run_dir, "logs", "supervisord.log")) as log:
            assert "SIGKILL" not in log.read()  # every stop was graceful


def test_make_upgrade_restarts_every_program_in_order(stack, test_db_uris, capsys):
    """`make upgrade` (manage.py upgrade) on a stack `make up` runs: the expand phase
    (nothing pending here), then every supervisord program restarted in ROLL_ORDER, each
    waited for until it answers its probe."""
    from scripts import manage

    names = [f"{kind}-{index}" for kind, count in stack.counts.items() for index in range(count)]
    names += [f"gateway-{index}" for index in range(len(stack.urls))]
    before = {name: stack.pid(name) for name in names}
    config = {
        **stack.config,
        "DB_URIS": {f"{service}:Base": uri for service, uri in test_db_uris.items()},
    }
    manage.cmd_upgrade(
        manage.build_parser().parse_args(["upgrade", "--run-dir", stack.run_dir]), config
    )
    said = capsys.readouterr().out.splitlines()
    groups = [line.split(":", 1)[0] for line in said if line.endswith("s") and "replaced" in line]
    counts = {**stack.counts, "gateways": len(stack.urls)}
    order = [kind if kind in counts else "gateways" for kind in upgrade.ROLL_ORDER]
    assert groups == [kind for kind in order for _ in range(counts[kind])], said
    after = {name: stack.pid(name) for name in names}
    assert [name for name in names if after[name] == before[name]] == [], (before, after)
