"""The supervisord configuration `make up` runs, written from config.yml.

One program per service (``PROCESSES`` in config.yml gives the process count) and one
gateway program per address in ``GATEWAY_ADDRESSES``. supervisord restarts a process that
dies, stops them with SIGTERM (Nameko lets in-flight workers finish) and keeps each
process's log under ``.run/logs``.

Stop order (supervisord stops one group at a time, highest ``priority`` first, and
starts in the reverse order): the gateways first, all together (one group), each
draining its connections (gateway/http.py); then orders, which calls the others; then
products and customers. A drained gateway takes at most its longest call bound + 1 s, so
no process reaches ``stopwaitsecs`` (SIGKILL) under a normal load.

Each service process gets an operations listener of its own (``/health``, ``/metrics``,
:mod:`common.ops_http`): process N of a service listens on ``OPS_HTTP_PORTS[service] + N``
(the base a multiple of 10, so at most 10 processes per service) on ``OPS_HTTP_HOST``.
:func:`metrics_targets` lists every process's metrics address, for Prometheus
(scripts/prometheus_conf.py).
"""

import os
import sys

from common.config import ROOT
from common.registry import GATEWAY, SERVICE_CLASSES

HEADER = """\
; Written by `make up` (scripts/supervisor.py) from config.yml; edits are overwritten.
[unix_http_server]
file={run}/supervisor.sock

[supervisord]
logfile={run}/logs/supervisord.log
pidfile={run}/supervisord.pid
childlogdir={run}/logs

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{run}/supervisor.sock
"""

PROGRAM = """
[program:{name}]
priority={priority}
command={nameko} run --config {root}/config.yml {module}
directory={root}
process_name=%(program_name)s-%(process_num)d
numprocs={processes}
environment=PYTHONPATH="{root}",SHOP_LOG_FILE="{run}/logs/%(program_name)s-%(process_num)d.log"{extra_env}
autostart=true
autorestart=true
startsecs=3
startretries=20
stopsignal=TERM
stopwaitsecs={stopwaitsecs}
stopasgroup=true
killasgroup=true
redirect_stderr=true
; the log lines are written by the process itself (SHOP_LOG_FILE, rotated at 20 MB); what
; supervisord collects here is what bypasses logging (an interpreter's dying words)
stdout_logfile={run}/logs/%(program_name)s-%(process_num)d.out
stdout_logfile_maxbytes=5MB
stdout_logfile_backups=1
"""


# Higher stops first: callers before the services they call.
PRIORITY = {"gateways": 900, "orders": 800, "products": 700, "customers": 700}
STOP_WAIT_SECONDS = 45  # above a gateway's drain (ORDERS_RPC_TIMEOUT 20 s + 1 s) with margin

GATEWAY_GROUP = """
[group:gateways]
programs={programs}
priority={priority}
"""


DEFAULT_OPS_HOST = "127.0.0.1"
MAX_PROCESSES = 10  # per service: the process number is the last digit of its ops port


def ops_ports(config):
    """``{service: [port of process 0, 1, ...]}`` of the operations listeners."""
    bases = config.get("OPS_HTTP_PORTS") or {}
    ports = {}
    for service, processes in config["PROCESSES"].items():
        base, count = int(bases[service]), int(processes)
        if base % 10 or not 0 < count <= MAX_PROCESSES:
            raise ValueError(
                f"OPS_HTTP_PORTS[{service}]={base} must be a multiple of 10 and "
                f"PROCESSES[{service}]={count} between 1 and {MAX_PROCESSES}"
            )
        ports[service] = [base + index for index in range(count)]
    return ports


def scrape_host(host):
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def gateway_processes(config):
    """The addresses each gateway process listens on: ``GATEWAY_ADDRESSES`` dealt among
    ``GATEWAY_PROCESSES`` processes (process i takes every n-th address from the i-th),
    so each address has exactly one process and each process at least one address."""
    addresses = [str(address) for address in config["GATEWAY_ADDRESSES"]]
    count = int(config.get("GATEWAY_PROCESSES") or len(addresses))
    if not 0 < count <= len(addresses):
        raise ValueError(
            f"GATEWAY_PROCESSES={count} must be between 1 and the {len(addresses)} "
            "GATEWAY_ADDRESSES (a port is served by one process)"
        )
    return [addresses[index::count] for index in range(count)]


def metrics_targets(config):
    """``{"gateway" | service: ["host:port", ...]}``: where each process serves
    ``/metrics`` (a gateway process on the first of its addresses, a service process on
    its ops port)."""
    targets = {"gateway": []}
    for addresses in gateway_processes(config):
        host, port = addresses[0].rsplit(":", 1)
        targets["gateway"].append(f"{scrape_host(host)}:{port}")
    host = scrape_host(config.get("OPS_HTTP_HOST") or DEFAULT_OPS_HOST)
    for service, ports in ops_ports(config).items():
        targets[service] = [f"{host}:{port}" for port in ports]
    return targets


def render(config, run_dir):
    nameko = os.path.join(os.path.dirname(sys.executable), "nameko")
    common = {"nameko": nameko, "root": ROOT, "run": run_dir}
    parts = [HEADER.format(**common)]
    ops_host = config.get("OPS_HTTP_HOST") or DEFAULT_OPS_HOST
    for service, ports in ops_ports(config).items():
        # supervisord expands %(process_num)d: process N listens on base + N
        ops_address = f"{ops_host}:{ports[0] // 10}%(process_num)d"
        parts.append(
            PROGRAM.format(
                name=service,
                module=SERVICE_CLASSES[service],
                processes=len(ports),
                extra_env=f',OPS_HTTP_ADDRESS="{ops_address}"',
                priority=PRIORITY.get(service, 700),
                stopwaitsecs=STOP_WAIT_SECONDS,
                **common,
            )
        )
    gateways = []
    for addresses in gateway_processes(config):
        port = addresses[0].rsplit(":", 1)[-1]  # a gateway process goes by its first port
        gateways.append(f"gateway-{port}")
        parts.append(
            PROGRAM.format(
                name=f"gateway-{port}",
                module=SERVICE_CLASSES[GATEWAY],
                processes=1,
                extra_env=f',WEB_SERVER_ADDRESS="{",".join(addresses)}"',
                priority=PRIORITY["gateways"],
                stopwaitsecs=STOP_WAIT_SECONDS,
                **common,
            )
        )
    if gateways:
        parts.append(
            GATEWAY_GROUP.format(programs=",".join(gateways), priority=PRIORITY["gateways"])
        )
    return "".join(parts)


def write_supervisor_conf(config, run_dir):
    os.makedirs(os.path.join(run_dir, "logs"), exist_ok=True)
    path = os.path.join(run_dir, "supervisord.conf")
    with open(path, "w") as stream:
        stream.write(render(config, run_dir))
    return path
