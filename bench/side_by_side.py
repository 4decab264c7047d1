"""CPU per answer of two stacks running at the same time: an A/B without the machine's
drift between runs (docs/BENCHMARKS.md, "What metrics and tracing cost").

Start each stack from its own checkout (or run directory) on its own RabbitMQ vhost and
gateway port, then:

    .venv/bin/python bench/side_by_side.py base=/tmp/base:8000 head=/work/main:8010

Each ``name=checkout:port`` names a stack by the checkout whose ``.run/supervisord.pid``
runs it and its gateway port. One client with ``SIDE_THREADS`` threads (6) alternates
requests between the stacks (``SIDE_SCENARIO``: orders, ping, product or customer;
``SIDE_REQUESTS`` per stack, 1500), and each stack's processes' CPU (user + system, from
/proc) is read before and after: its services' and gateways', and its supervisord's (which
copies the processes' output when they log to its pipes). Prints the CPU milliseconds per
answer of each of them, per stack. RabbitMQ and PostgreSQL are shared and not attributed.
"""

import os
import sys
import threading
import time

import requests

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common.registry import PROCESS_KINDS  # noqa: E402 (the repository root first)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SERVICES = (*PROCESS_KINDS, "supervisord")
JSON = {"Content-Type": "application/json"}


def stack_processes(checkout):
    """``{pid: service}`` of the processes the checkout's supervisord runs, and its own."""
    with open(f"{checkout}/.run/supervisord.pid") as stream:
        supervisord = int(stream.read())
    found = {supervisord: "supervisord"}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as stream:
                stat = stream.read()
            with open(f"/proc/{pid}/cmdline", "rb") as stream:
                command = stream.read().decode(errors="replace")
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) != supervisord:
            continue
        service = next((s for s in SERVICES if f"{s}.service" in command), None)
        if service:
            found[int(pid)] = service
    return found


def cpu_seconds(processes):
    used = dict.fromkeys(SERVICES, 0.0)
    for pid, service in processes.items():
        with open(f"/proc/{pid}/stat") as stream:
            fields = stream.read().rsplit(")", 1)[1].split()
        used[service] += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return used


def prepare(name, url):
    """A customer and 20 products with plenty of stock on the stack at ``url``."""
    customer = requests.post(
        f"{url}/api/customers",
        headers=JSON,
        timeout=30,
        json={"name": "side", "email": f"side-{name}-{time.time()}@example.com"},
    ).json()["id"]
    products = [
        requests.post(
            f"{url}/api/products",
            headers=JSON,
            timeout=30,
            json={"name": "p", "price": "1", "stock": 10**6},
        ).json()["id"]
        for _ in range(20)
    ]
    return customer, products


def request(session, scenario, url, customer, products, tag):
    if scenario == "orders":
        return session.post(
            f"{url}/api/orders",
            headers=JSON,
            timeout=30,
            json={"customer_id": customer, "products": [{"id": products[tag % 20], "quantity": 1}]},
        )
    if scenario == "ping":
        return session.get(f"{url}/api/ping", timeout=30)
    if scenario == "product":
        return session.get(f"{url}/api/products/{products[tag % 20]}", timeout=30)
    if scenario == "customer":
        return session.post(
            f"{url}/api/customers",
            headers=JSON,
            timeout=30,
            json={"name": "x", "email": f"side-{tag}-{time.time()}@example.com"},
        )
    raise SystemExit(f"unknown SIDE_SCENARIO {scenario!r}")


def main(argv):
    scenario = os.environ.get("SIDE_SCENARIO", "orders")
    per_stack = int(os.environ.get("SIDE_REQUESTS", "1500"))
    threads = int(os.environ.get("SIDE_THREADS", "6"))
    stacks = {}
    for argument in argv:
        name, spec = argument.split("=", 1)
        checkout, port = spec.rsplit(":", 1)
        url = f"http://127.0.0.1:{port}"
        stacks[name] = (url, *prepare(name, url), stack_processes(checkout))
    time.sleep(2)  # let the preparation's own work finish
    before = {name: cpu_seconds(stack[3]) for name, stack in stacks.items()}
    answered = dict.fromkeys(stacks, 0)
    lock = threading.Lock()

    def drive(offset):
        session = requests.Session()
        for index in range(per_stack // threads):
            for name, (url, customer, products, _) in stacks.items():
                answer = request(session, scenario, url, customer, products, index + offset)
                if answer.status_code in (200, 201):
                    with lock:
                        answered[name] += 1

    workers = [threading.Thread(target=drive, args=(k * 1000,)) for k in range(threads)]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    time.sleep(1)
    print(f"{scenario}: {time.monotonic() - started:.0f} s, answered {answered}")
    for name, stack in stacks.items():
        after = cpu_seconds(stack[3])
        per_answer = {
            s: 1000 * (after[s] - before[name][s]) / max(answered[name], 1) for s in SERVICES
        }
        print(
            f"  {name}: "
            + ", ".join(f"{s} {ms:.2f}" for s, ms in per_answer.items())
            + f"; all {sum(per_answer.values()):.2f} CPU ms per answer"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
