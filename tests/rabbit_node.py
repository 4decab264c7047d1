"""A private RabbitMQ node for tests that break the broker (alarms, and later clusters).

The node runs from the installed RabbitMQ (the same server as the default one) with its own
name, ports, data directory and Erlang cookie under a temporary directory, so nothing a
test does to it (an alarm, a kill) touches the default broker on 5672 that other tests and
`make up` use. It is stopped by its pid, and its directory is left for the test's logs.
"""
import contextlib
import os
import re
import shutil
import signal
import subprocess
import time

from tests.harness import free_port

RABBITMQ_BIN = "/usr/lib/rabbitmq/bin"
START_TIMEOUT = 90


def _tool(name):
    path = os.path.join(RABBITMQ_BIN, name)
    return path if os.path.exists(path) else shutil.which(name)


class RabbitNode:
    """One RabbitMQ node: ``start()``, ``stop()``, ``ctl(*args)``, ``amqp_uri``."""

    def __init__(self, base_dir, name="shoptest"):
        self.base_dir = base_dir
        self.port = free_port()
        self.dist_port = free_port()
        self.nodename = f"{name}{self.port}@localhost"
        self.amqp_uri = f"pyamqp://guest:guest@127.0.0.1:{self.port}/"
        self.pid = None
        self._server = None

    @property
    def env(self):
        base = self.base_dir
        return {
            **os.environ,
            "HOME": base,  # its own Erlang cookie, shared with ctl()
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": os.path.join(base, "mnesia"),
            "RABBITMQ_LOG_BASE": os.path.join(base, "log"),
            "RABBITMQ_PID_FILE": os.path.join(base, "rabbit.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(base, "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": os.path.join(base, "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": os.path.join(base, "advanced.config"),
        }

    def start(self):
        os.makedirs(self.base_dir, exist_ok=True)
        with open(os.path.join(self.base_dir, "enabled_plugins"), "w") as stream:
            stream.write("[].\n")
        open(os.path.join(self.base_dir, "rabbitmq.conf"), "w").close()
        self._server = subprocess.Popen(
            [_tool("rabbitmq-server")], env=self.env, cwd=self.base_dir,
            stdout=open(os.path.join(self.base_dir, "server.log"), "w"),
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:  # the node registers with epmd a moment after its process starts
            try:
                self.ctl("await_startup", "--timeout", "10", timeout=30)
                break
            except RuntimeError:
                if self._server.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        with open(os.path.join(self.base_dir, "rabbit.pid")) as stream:
            self.pid = int(stream.read().strip())

    def ctl(self, *args, timeout=60):
        """``rabbitmqctl -n <this node> args``; its stdout."""
        result = subprocess.run(
            [_tool("rabbitmqctl"), "-n", self.nodename, *args], env=self.env,
            capture_output=True, text=True, timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {result.stderr or result.stdout}")
        return result.stdout

    def alarms(self):
        """The node's resource alarms, e.g. ``["memory"]`` (empty when there is none)."""
        out = self.ctl("eval", "rabbit_alarm:get_alarms().")
        return re.findall(r"\{resource_limit,(\w+),", out)

    @contextlib.contextmanager
    def memory_alarm(self):
        """A memory alarm (the watermark set to a sliver of memory) for the block's
        duration; cleared on the way out, waiting until the node says so."""
        self.ctl("set_vm_memory_high_watermark", "0.000001")
        try:
            _wait_for(lambda: "memory" in self.alarms(), "the memory alarm never went off")
            yield
        finally:
            self.ctl("set_vm_memory_high_watermark", "0.4")
            _wait_for(lambda: "memory" not in self.alarms(), "the memory alarm never cleared")

    def stop(self):
        """SIGTERM to the node's own pid (and the wrapper's session), then SIGKILL if it
        lingers."""
        for pid in (self.pid, self._server.pid if self._server else None):
            if pid is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while self.pid is not None and _alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if self._server is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._server.pid, signal.SIGKILL)
            self._server.wait(timeout=30)
        if self.pid is not None and _alive(self.pid):
            os.kill(self.pid, signal.SIGKILL)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_for(condition, message, timeout=30):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.2)


@contextlib.contextmanager
def private_rabbit_node(base_dir):
    node = RabbitNode(base_dir)
    try:
        node.start()
        yield node
    finally:
        node.stop()
