"""Network partitions of one service process, on one machine (issue 22).

``tc netem`` is not in this kernel and toxiproxy's server is not to be had here; iptables
is (Debian's package, installed by .ci/run). An :class:`Outsider` is one more process of a
service, joined to a running stack (tests/harness.py) but started by the test, under a
group id of its own (``setpriv --regid``); :func:`cut_off` drops every packet that group
sends to a port (``iptables -m owner --gid-owner``), which cuts that process alone off
from PostgreSQL (5432) or RabbitMQ (5672), both ways in effect (TCP gets nothing back),
while every other process, and the servers themselves, go on untouched.

Every rule carries :data:`COMMENT` and is deleted when the block ends, whatever happens
in it; :func:`clear_rules` also removes any left over by a test run that was killed.
The outsider is stopped by pid by its owner (``with Outsider(...)``)."""

import contextlib
import os
import signal
import subprocess
import sys
import time

import requests

from common.config import ROOT
from common.registry import SERVICE_CLASSES
from scripts.processes import free_port, process_alive

COMMENT = "shop-partition-test"
PARTITION_GID = 4242  # no group of this machine; only the outsider runs under it
START_TIMEOUT = 60


def iptables(*args):
    subprocess.run(["iptables", *args], check=True, capture_output=True, timeout=30)


def rule(gid, port):
    return [
        "OUTPUT",
        *("-p", "tcp", "-m", "owner", "--gid-owner", str(gid), "--dport", str(port)),
        *("-m", "comment", "--comment", COMMENT, "-j", "DROP"),
    ]


def clear_rules():
    """Delete every rule this module added (a killed run's too)."""
    listed = subprocess.run(
        ["iptables", "-S", "OUTPUT"], check=True, capture_output=True, text=True, timeout=30
    ).stdout
    for line in listed.splitlines():
        if COMMENT in line and line.startswith("-A "):
            iptables("-D", *line.split()[1:])


@contextlib.contextmanager
def cut_off(port, gid=PARTITION_GID):
    """Drop what processes of group ``gid`` send to ``port`` for the block."""
    iptables("-I", *rule(gid, port))
    try:
        yield
    finally:
        iptables("-D", *rule(gid, port))


class Outsider:
    """One more ``service`` process of ``stack``, under group ``gid``, with an operations
    listener of its own (``ops_url``: ``/ready``, ``/metrics``) and its log under the
    stack's logs. ``with Outsider(...)`` starts it (ready: its ``/ready`` answers 200) and
    always stops it, by pid."""

    def __init__(self, stack, service, gid=PARTITION_GID):
        self.service = service
        self.ops_url = f"http://127.0.0.1:{free_port()}"
        self.log = os.path.join(stack.run_dir, "logs", f"{service}-outsider.log")
        self.env = {
            **stack.env,
            "OPS_HTTP_ADDRESS": self.ops_url.removeprefix("http://"),
            "SHOP_LOG_FILE": self.log,
        }
        nameko = os.path.join(os.path.dirname(sys.executable), "nameko")
        self.command = [
            *("setpriv", "--regid", str(gid), "--clear-groups", "--"),
            *(nameko, "run", "--config", os.path.join(ROOT, "config.yml")),
            SERVICE_CLASSES[service],
        ]
        self.process = None
        self.last_ready = None

    def __enter__(self):
        clear_rules()
        self.process = subprocess.Popen(
            self.command,
            env=self.env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=open(self.log + ".out", "w"),  # noqa: SIM115 - closed with the process
        )
        deadline = time.monotonic() + START_TIMEOUT
        while self.ready_status() != 200:
            assert self.process.poll() is None, f"{self.service} outsider exited; see {self.log}"
            assert time.monotonic() < deadline, f"{self.service} outsider never ready"
            time.sleep(0.2)
        return self

    def __exit__(self, *exc_info):
        clear_rules()
        pid = self.process.pid
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        assert not process_alive(pid)

    def ready_status(self):
        """The status of the outsider's ``/ready`` (None: no answer within 3 s); its body
        is kept in ``last_ready``."""
        try:
            response = requests.get(f"{self.ops_url}/ready", timeout=3)
        except requests.RequestException:
            return None
        self.last_ready = response.json()
        return response.status_code

    def alive(self):
        return self.process.poll() is None
