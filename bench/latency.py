"""Scenario 8 of `make bench`, ``latency`` (alone: `make bench-latency`): latency at a fixed
arrival rate, free of coordinated omission (issue 23).

For each target of ``BENCH_LATENCY_TARGETS``:

* ``by_id``: ``GET /api/products/<id>``, ids drawn from a sample of the catalog (at least
  ``BENCH_SMALL_CATALOG`` products), as scenario 2;
* ``orders``: ``POST /api/orders`` of 1-3 lines (1 unit each) over
  ``BENCH_ORDER_PRODUCTS`` new products, for one new customer, as scenario 5;

its **capacity** is measured first, closed-loop, by wrk with that scenario's Lua script
and data for ``BENCH_DURATION`` (a row of the main table); then bench/openloop.py offers
each fraction of ``BENCH_LATENCY_LOADS`` (0.5, 0.8) of that capacity for
``BENCH_LATENCY_DURATION`` seconds, spread over the gateway ports, at most
``BENCH_LATENCY_CONNECTIONS`` connections. Capacity is measured right before its
fractions, not taken from scenario 2 or 5 of the same run: this machine's speed drifts by
10-20 % within minutes, and 0.8 of a stale figure can be 0.95 of the real one.

Each fraction gives a ``Row`` whose ``raw`` holds ``fixed_rate`` (bench.openloop's
figures: achieved send rate, send lag, p50-max, spectrum, encoded histogram, the client's
CPU), ``target`` (the request), ``capacity`` and ``fraction``; bench/report.py prints those rows in a table of their
own and bench/latency_plot.py draws their spectra.
"""

import asyncio
import json
import random
import time

from bench.cpu import cpu_note, cpu_snapshot, cpu_usage, restarts
from bench.data import write_ids
from bench.openloop import open_loop, summarize
from bench.report import Row
from bench.settings import HarnessError
from bench.wrk import run_wrk

# A generator behind its schedule by more than this, or using more than this share of a
# core, is said to be (possibly) the limit of its own measurement.
BEHIND = 0.97
BUSY_CLIENT = 0.8


class Target:
    """What one target loads: its name (the request) and label (the data too), the wrk
    script, path and environment of its capacity run, and ``make_request(i) -> (method,
    path, body)`` for the open loop."""

    def __init__(self, key, name, label, script, path, env, make_request):
        self.key = key
        self.name = name
        self.label = label
        self.script = script
        self.path = path
        self.env = env
        self.make_request = make_request


def product_reads(ctx):
    settings, catalog = ctx["settings"], ctx["catalog"]
    present = catalog.ensure(settings.small_catalog)
    ids = catalog.sample_ids()
    rng = random.Random(settings.tag)

    def make_request(_index):
        return "GET", f"/api/products/{rng.choice(ids)}", b""

    return Target(
        "by_id",
        "GET /api/products/<id>",
        f"GET /api/products/<id> (random of {present:,})",
        "product_by_id.lua",
        "/api/products/1",
        {"WRKB_IDS_FILE": write_ids(ctx["workdir"], "latency-product-ids.txt", ids)},
        make_request,
    )


def orders(ctx):
    settings, api = ctx["settings"], ctx["api"]
    print(f"  creating {settings.order_products} products (stock 100,000,000) and a customer ...")
    ids = api.create_products(settings.order_products, 100_000_000, "latency")
    customer = api.create_customer("latency")
    rng = random.Random(settings.tag)

    def make_request(_index):
        lines = rng.sample(ids, rng.randint(1, min(3, len(ids))))
        body = {"customer_id": customer, "products": [{"id": i, "quantity": 1} for i in lines]}
        return "POST", "/api/orders", json.dumps(body).encode()

    return Target(
        "orders",
        "POST /api/orders",
        f"POST /api/orders (1-3 lines over {len(ids)} products)",
        "create_order.lua",
        "/api/orders",
        {
            "WRKB_IDS_FILE": write_ids(ctx["workdir"], "latency-order-ids.txt", ids),
            "WRKB_CUSTOMER": customer,
            "WRKB_MAX_LINES": 3,
        },
        make_request,
    )


TARGETS = {"by_id": product_reads, "orders": orders}


def scenario_latency(ctx):
    """Capacity then the fixed-rate rows, target by target: a list of ``Row``."""
    settings, rows = ctx["settings"], []
    for key in settings.latency_targets:
        target = TARGETS[key](ctx)
        capacity = Row(f"latency_{key}_capacity", f"8 capacity (closed loop): {target.label}")
        run_wrk(settings, ctx["workdir"], target.script, capacity, target.path, target.env)
        capacity.notes.append("the capacity the fixed-rate rows take their fractions of")
        rows.append(capacity)
        print(f"  capacity, closed loop: {capacity.rps or 0:.1f} req/s", flush=True)
        if not capacity.rps:
            raise HarnessError(f"no capacity measured for {key}: {capacity.notes}")
        for fraction in settings.latency_loads:
            time.sleep(settings.pause)
            row = fixed_rate_row(settings, target, capacity.rps, fraction)
            rows.append(row)
            figures = row.raw["fixed_rate"]
            print(
                f"  {fraction:g} x capacity: {figures['rate']:.1f}/s asked, "
                f"{figures['achieved_send_rate']:.1f}/s sent, p99 {row.p99} ms",
                flush=True,
            )
    return rows


def fixed_rate_row(settings, target, capacity, fraction):
    """One open-loop run at ``fraction`` x ``capacity`` req/s: its ``Row``."""
    rate = fraction * capacity
    before = cpu_snapshot()
    run = asyncio.run(
        open_loop(
            target.make_request,
            settings.ports,
            rate,
            settings.latency_duration,
            max_connections=settings.latency_connections,
            answer_timeout=settings.timeout,
        )
    )
    after = cpu_snapshot()
    usage = cpu_usage(before, after)
    figures = summarize(run)
    row = Row(
        f"latency_{target.key}_{round(fraction * 100)}",
        f"8 fixed rate {fraction:.0%} of capacity: {target.label}",
    )
    row.rps = figures["answer_rate"]
    latency = figures["latency_ms"]
    row.p50, row.p95, row.p99 = latency["p50"], latency["p95"], latency["p99"]
    row.errors = figures["errors"]
    row.raw = {
        "fixed_rate": figures,
        "target": target.name,
        "capacity": capacity,
        "fraction": fraction,
        # how busy the machine was, and the share of it taken by processes outside the
        # stack and the bench (other people's tests): what makes a tail noise
        "machine_busy": round(usage["busy"] / (usage["total"] or 1.0), 3),
        "others_cpu": round(usage["components"].get("other", 0.0) / (usage["total"] or 1.0), 3),
    }
    row.notes.extend(schedule_notes(figures, settings))
    row.notes.append(cpu_note(usage, figures["answered"]))
    stopped = restarts(before, after)
    if stopped:
        row.disturbed = True
        row.notes.append("DISTURBED: these processes stopped or restarted: " + ", ".join(stopped))
    return row


def schedule_notes(figures, settings):
    """What the run says about itself: the schedule kept or not, the client's CPU, answers."""
    lag = figures["send_lag_ms"]
    notes = [
        f"{figures['scheduled']} requests due at {figures['rate']:.1f}/s for "
        f"{settings.latency_duration:g}s; sent at {figures['achieved_send_rate']:.1f}/s "
        f"(send lag p50 {lag['p50']} p99 {lag['p99']} max {lag['max']} ms) on "
        f"{figures['connections']} connections; statuses {figures['statuses']}",
        f"latency from the scheduled send: p90 {figures['latency_ms']['p90']} mean "
        f"{figures['latency_ms']['mean']} ms; client CPU {figures['client_cpu_s']:.2f}s = "
        f"{figures['client_cpu_share']:.0%} of one core",
    ]
    if figures["achieved_send_rate"] < BEHIND * figures["rate"]:
        notes.append(
            "BEHIND SCHEDULE: the generator sent below the rate asked for (a busy client, or "
            "every connection in use): the latencies above still count from the schedule"
        )
    if figures["client_cpu_share"] > BUSY_CLIENT:
        notes.append("the client used most of a core: it may be the limit of this run itself")
    return notes
