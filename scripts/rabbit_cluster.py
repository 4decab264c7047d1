"""Local RabbitMQ nodes and clusters from the installed server: `make cluster-up`,
`make cluster-down`, `make cluster-status`, and the test suite's private brokers.

Each node runs the installed ``rabbitmq-server`` with its own name, ports, data, log,
config and enabled-plugins files under its own directory, and the installed server's
Erlang cookie (copied into the node's ``HOME``, which its ``rabbitmqctl`` shares), so it
never touches the default node on 5672. Nodes are stopped by their own pid.

`make cluster-up` starts three nodes, ``shop-rabbit-N@localhost`` (AMQP 127.0.0.1:570N,
management 1570N, distribution 2570N, files under ``.run/rabbitmq-N/``), joins them into
one cluster, and creates the vhost ``shop`` whose default queue type is quorum: Nameko's
queues (``rpc-<service>``, the event handlers', and its reply queues too, which kombu
declares durable, with ``x-expires``) are then quorum queues replicated on every node,
with no client change. The vhost's only user is ``shop``, with the shop's permissions
(common/broker_permissions.py: its queues and exchanges, nothing else) and a random
password kept in the first node's directory; ``guest`` is deleted (the nodes are managed
with ``rabbitmqctl``, which needs no user). It is idempotent (a stopped node is started
and rejoins) and prints the ``AMQP_URI`` to give `make up`: the three URIs, as ``shop``,
``;``-separated (kombu fails over).

    python scripts/rabbit_cluster.py up|down|status
"""

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

if __package__ in (None, ""):  # `python3 scripts/rabbit_cluster.py`: import from the repository
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.broker_permissions import rabbitmqctl_args  # noqa: E402
from scripts.processes import free_port, process_alive, wait_for  # noqa: E402

RABBITMQ_BIN = "/usr/lib/rabbitmq/bin"
INSTALLED_COOKIE = "/var/lib/rabbitmq/.erlang.cookie"
START_TIMEOUT = 120
VHOST = "shop"
USER = "shop"  # the vhost's only user; its password: RabbitCluster.password
# `make cluster-up` node N: AMQP on AMQP_PORT_BASE + N; the rabbitmq_prometheus plugin's
# /metrics on PROMETHEUS_PORT_BASE + N (scraped by `make up`: scripts/prometheus_conf.py).
AMQP_PORT_BASE = 5700
PROMETHEUS_PORT_BASE = 15800
# Schedulers that sleep instead of spinning: several nodes share two cores with the stack.
ERL_ARGS = "+sbwt none +sbwtdcpu none +sbwtdio none"


def tool(name):
    path = os.path.join(RABBITMQ_BIN, name)
    return path if os.path.exists(path) else shutil.which(name)


class RabbitNode:
    """One node: ``start()`` (idempotent), ``stop()`` by pid, ``ctl(*args)``."""

    def __init__(
        self,
        base_dir,
        nodename,
        port,
        dist_port,
        management_port=None,
        cookie=None,
        prometheus_port=None,
    ):
        self.base_dir = os.path.abspath(base_dir)
        self.nodename = nodename
        self.port = port
        self.dist_port = dist_port
        self.management_port = management_port
        self.cookie = cookie
        self.prometheus_port = prometheus_port  # rabbitmq_prometheus's /metrics, if set

    def uri(self, user, password, vhost=""):
        return f"pyamqp://{user}:{password}@127.0.0.1:{self.port}/{vhost}"

    @property
    def pid_file(self):
        return os.path.join(self.base_dir, "rabbit.pid")

    @property
    def env(self):
        base = self.base_dir
        return {
            **os.environ,
            "HOME": base,  # its Erlang cookie, shared with ctl()
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": os.path.join(base, "mnesia"),
            "RABBITMQ_LOG_BASE": os.path.join(base, "log"),
            "RABBITMQ_PID_FILE": self.pid_file,
            "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(base, "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": os.path.join(base, "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": os.path.join(base, "advanced.config"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": ERL_ARGS,
        }

    @property
    def pid(self):
        with contextlib.suppress(OSError, ValueError):
            with open(self.pid_file) as stream:
                return int(stream.read().strip())
        return None

    def is_running(self):
        return self.pid is not None and process_alive(self.pid)

    def _write_files(self):
        os.makedirs(self.base_dir, exist_ok=True)
        plugins = ["rabbitmq_management"] if self.management_port else []
        plugins += ["rabbitmq_prometheus"] if self.prometheus_port else []
        with open(os.path.join(self.base_dir, "enabled_plugins"), "w") as stream:
            stream.write(f"[{','.join(plugins)}].\n")
        with open(os.path.join(self.base_dir, "rabbitmq.conf"), "w") as stream:
            if self.management_port:
                stream.write(
                    f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {self.management_port}\n"
                )
            if self.prometheus_port:
                stream.write(
                    f"prometheus.tcp.ip = 127.0.0.1\nprometheus.tcp.port = {self.prometheus_port}\n"
                )
        if self.cookie:
            path = os.path.join(self.base_dir, ".erlang.cookie")
            with contextlib.suppress(FileNotFoundError):
                os.chmod(path, 0o600)
            with open(path, "w") as stream:
                stream.write(self.cookie)
            os.chmod(path, 0o400)

    def start(self):
        """Start the node unless it runs; return once it accepts connections."""
        if self.is_running():
            return
        self._write_files()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.pid_file)
        log = open(os.path.join(self.base_dir, "server.log"), "a")
        server = subprocess.Popen(
            [tool("rabbitmq-server")],
            env=self.env,
            cwd=self.base_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:  # the node registers with epmd a moment after its process starts
            try:
                self.ctl("await_startup", "--timeout", "15", timeout=40)
                break
            except RuntimeError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        wait_for(lambda: self.pid is not None, f"{self.nodename} wrote no pid file")

    def ctl(self, *args, timeout=60, tool_name="rabbitmqctl"):
        """``rabbitmqctl -n <this node> args`` (or another CLI tool); its stdout."""
        result = subprocess.run(
            [tool(tool_name), "-n", self.nodename, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{tool_name} {' '.join(args)}: {result.stderr or result.stdout}")
        return result.stdout

    def stop(self, sig=signal.SIGTERM, timeout=60):
        """Send ``sig`` to the node's own pid; wait until it is gone (SIGKILL after
        ``timeout``)."""
        pid = self.pid
        if pid is None or not process_alive(pid):
            return
        os.kill(pid, sig)
        try:
            wait_for(lambda: not process_alive(pid), f"{self.nodename} did not stop", timeout)
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: not process_alive(pid), f"{self.nodename} survived SIGKILL", 30)

    def kill(self):
        """kill -9, as a crash."""
        self.stop(signal.SIGKILL)

    def alarms(self):
        """The node's resource alarms, e.g. ``["memory"]``."""
        out = self.ctl("eval", "rabbit_alarm:get_alarms().")
        return re.findall(r"\{resource_limit,(\w+),", out)

    @contextlib.contextmanager
    def memory_alarm(self):
        """A memory alarm (the watermark set to a sliver of memory) for the block's
        duration; cleared on the way out, waiting until the node says so."""
        self.ctl("set_vm_memory_high_watermark", "0.000001")
        try:
            wait_for(lambda: "memory" in self.alarms(), "the memory alarm never went off")
            yield
        finally:
            self.ctl("set_vm_memory_high_watermark", "0.4")
            wait_for(lambda: "memory" not in self.alarms(), "the memory alarm never cleared")


class RabbitCluster:
    """Nodes joined into one cluster (the first is the one the others join), with a vhost
    whose durable queues are quorum queues."""

    def __init__(self, nodes, vhost=VHOST, user=USER):
        self.nodes = nodes
        self.vhost = vhost
        self.user = user

    @property
    def password_file(self):
        return os.path.join(self.nodes[0].base_dir, f"{self.user}-password")

    @property
    def password(self):
        """The user's password: made once, kept (mode 600) in the first node's directory."""
        with contextlib.suppress(FileNotFoundError):
            with open(self.password_file) as stream:
                return stream.read().strip()
        os.makedirs(os.path.dirname(self.password_file), exist_ok=True)
        password = secrets.token_hex(16)  # goes into the URI and rabbitmqctl as it is
        descriptor = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as stream:
            stream.write(password)
        return password

    @property
    def amqp_uri(self):
        """Every node's URI on the vhost, as the shop's user, ``;``-separated: kombu's
        failover list."""
        password = self.password
        return ";".join(node.uri(self.user, password, self.vhost) for node in self.nodes)

    def node(self, nodename):
        return next(node for node in self.nodes if node.nodename == nodename)

    def running_nodes(self):
        return [node for node in self.nodes if node.is_running()]

    def members(self, via):
        """Nodes of the cluster ``via`` belongs to (running or not)."""
        status = json.loads(via.ctl("cluster_status", "--formatter", "json"))
        return set(status.get("disk_nodes", [])) | set(status.get("ram_nodes", []))

    def running_members(self, via):
        """Nodes of ``via``'s cluster that are running, as ``via`` sees them."""
        status = json.loads(via.ctl("cluster_status", "--formatter", "json"))
        return set(status.get("running_nodes", []))

    def up(self):
        """Start every node, join the cluster, create the vhost; idempotent."""
        seed, *others = self.nodes
        fresh = {
            node.nodename: not os.path.isdir(os.path.join(node.base_dir, "mnesia"))
            for node in others
        }
        with ThreadPoolExecutor(len(self.nodes)) as pool:  # boots overlap: ~10 s each
            list(pool.map(RabbitNode.start, self.nodes))
        for node in others:
            if fresh[node.nodename] or seed.nodename not in self.members(node):
                node.ctl("stop_app")
                node.ctl("reset")
                node.ctl("join_cluster", seed.nodename)
                node.ctl("start_app")
        if self.vhost not in seed.ctl("list_vhosts", "--quiet", "--no-table-headers").split():
            seed.ctl("add_vhost", self.vhost, "--default-queue-type", "quorum")
        self._shop_user(seed)
        return self

    def _shop_user(self, seed):
        """The user, its password, no tags, only the shop's permissions; no guest."""
        users = [
            line.split()[0]
            for line in seed.ctl("list_users", "--quiet", "--no-table-headers").splitlines()
            if line
        ]
        if self.user in users:
            seed.ctl("change_password", self.user, self.password)
        else:
            seed.ctl("add_user", self.user, self.password)
        seed.ctl("set_user_tags", self.user)
        seed.ctl(*rabbitmqctl_args(self.vhost, self.user))
        if "guest" in users:
            seed.ctl("delete_user", "guest")

    def down(self):
        for node in reversed(self.nodes):
            node.stop()

    def any_running(self):
        running = self.running_nodes()
        if not running:
            raise RuntimeError("no node of the cluster is running")
        return running[0]

    def queue_leaders(self):
        """``{queue: leader node}`` of the vhost's quorum queues."""
        out = self.any_running().ctl(
            "list_queues",
            "-p",
            self.vhost,
            "name",
            "type",
            "leader",
            "--quiet",
            "--no-table-headers",
        )
        leaders = {}
        for line in out.splitlines():
            fields = line.split()
            if len(fields) == 3 and fields[1] == "quorum":
                leaders[fields[0]] = fields[2]
        return leaders

    def status(self):
        lines = []
        for node in self.nodes:
            state = f"running (pid {node.pid})" if node.is_running() else "stopped"
            lines.append(f"{node.nodename}  amqp 127.0.0.1:{node.port}  {state}")
        if self.running_nodes():
            members = self.members(self.any_running())
            lines.append("cluster members: " + ", ".join(sorted(members)))
            leaders = self.queue_leaders()
            replies = [queue for queue in leaders if queue.startswith("rpc.reply-")]
            for queue, leader in sorted(leaders.items()):
                if queue not in replies:
                    lines.append(f"quorum queue {queue}: leader {leader}")
            lines.append(
                f"reply queues (quorum, expire 5 min after their last consumer): {len(replies)}"
            )
        return "\n".join(lines)


def installed_cookie():
    """The installed server's Erlang cookie, if this user may read it."""
    with contextlib.suppress(OSError):
        with open(INSTALLED_COOKIE) as stream:
            return stream.read().strip()
    return None


def make_cluster(run_dir, count=3):
    """The `make cluster-up` cluster: ``shop-rabbit-N@localhost`` on 570N / 1570N / 2570N,
    Prometheus metrics on 1580N."""
    cookie = installed_cookie() or "shop-cluster-cookie"
    return RabbitCluster(
        [
            RabbitNode(
                os.path.join(run_dir, f"rabbitmq-{n}"),
                f"shop-rabbit-{n}@localhost",
                port=AMQP_PORT_BASE + n,
                dist_port=25700 + n,
                management_port=15700 + n,
                cookie=cookie,
                prometheus_port=PROMETHEUS_PORT_BASE + n,
            )
            for n in range(1, count + 1)
        ]
    )


def private_cluster(base_dir, count=3, name="shoptest"):
    """A cluster on free ports, e.g. for one test (no management plugin: lean). With
    ``count=1``, a lone node."""
    cookie = f"{name}-{os.getpid()}-{free_port()}"
    nodes = []
    for n in range(1, count + 1):
        port = free_port()
        nodes.append(
            RabbitNode(
                os.path.join(base_dir, f"rabbitmq-{n}"),
                f"{name}{port}@localhost",
                port=port,
                dist_port=free_port(),
                cookie=cookie,
            )
        )
    return RabbitCluster(nodes)


def main(argv):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cluster = make_cluster(os.path.join(root, ".run"))
    command = argv[1] if len(argv) > 1 else "status"
    if command == "up":
        cluster.up()
        print(cluster.status())
        print(f"AMQP_URI='{cluster.amqp_uri}'")
    elif command == "down":
        cluster.down()
        print("cluster stopped")
    elif command == "status":
        print(cluster.status())
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
