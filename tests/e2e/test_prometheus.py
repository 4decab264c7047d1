"""The metrics as an operator sees them: the real Prometheus server scraping the e2e stack
with the scrape configuration `make up` writes (scripts/prometheus_conf.py, from the
stack's own config), queried over its HTTP API.

The stack is shared by the whole folder, so its counters (and the Prometheus view of them)
already hold what earlier tests did: every assertion is on what changed between two
moments, each read after a scrape that started once the shop was quiet (see
:meth:`Prometheus.settled`).
"""

import glob
import math
import os
import shutil
import subprocess
import time

import pytest
import requests
import yaml

from scripts.processes import free_port
from scripts.prometheus_conf import RULES_GLOB, render
from tests.e2e.test_order_lifecycle import setup_shop

SCRAPE_INTERVAL = "1s"
READY_TIMEOUT = 30
SCRAPE_DEADLINE = 15  # s: many 1 s scrapes, for what we placed to show up
# A scrape whose sample is stamped this much after a moment began after it (Prometheus
# may stamp a scrape up to 2 ms after its start, to align timestamps).
STAMP_MARGIN = 0.05
CONFIRMED, REJECTED = 12, 3

GATEWAY_CREATE_ORDER = (
    'shop_entrypoint_duration_seconds_bucket{service="gateway",entrypoint="create_order"}'
)
COUNTERS = {
    "confirmed": 'sum(shop_orders_total{status="confirmed"})',
    "rejected": 'sum(shop_orders_total{status="rejected",reason="insufficient_stock"})',
    "http_201": 'sum(shop_http_responses_total{route="create_order",status="201"})',
    "http_409": 'sum(shop_http_responses_total{route="create_order",status="409"})',
    "orders_create_order": "sum(shop_entrypoint_duration_seconds_count"
    '{service="orders",entrypoint="create_order"})',
}
EXPECTED = {
    "confirmed": CONFIRMED,
    "rejected": REJECTED,
    "http_201": CONFIRMED,
    "http_409": REJECTED,
    "orders_create_order": CONFIRMED + REJECTED,
}


class Prometheus:
    """A Prometheus server of this test, on ``url``, and its HTTP API."""

    def __init__(self, url, log_path):
        self.url = url
        self.log_path = log_path

    def api(self, path, **params):
        response = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = response.json()
        assert body.get("status") == "success", (path, params, body)
        return body["data"]

    def query(self, promql, at):
        """The instant vector of ``promql`` evaluated at ``at`` (Unix seconds), as
        ``[(labels, value)]``."""
        data = self.api("query", query=promql, time=f"{at:.3f}")
        assert data["resultType"] == "vector", data
        return [(item["metric"], float(item["value"][1])) for item in data["result"]]

    def scalar(self, promql, at):
        """A one-element (``sum(...)``) query's value; no result (no such series yet: nothing
        counted) is 0."""
        result = self.query(promql, at)
        assert len(result) <= 1, result
        return result[0][1] if result else 0.0

    def buckets(self, at):
        """``{le: count}`` of the gateway's create_order histogram, summed over gateways."""
        return {
            float(labels["le"]): value
            for labels, value in self.query(f"sum by (le) ({GATEWAY_CREATE_ORDER})", at)
        }

    def targets(self):
        return self.api("targets", state="active")["activeTargets"]

    def settled(self, since, targets, deadline):
        """Wait until every target has a stored scrape that began after ``since``; returns
        the evaluation time to query at. ``up`` is appended in the same commit as the
        scraped samples, so a fresh ``up`` means that scrape's samples are queryable."""
        while True:
            now = time.time()
            stamps = [value for _, value in self.query('timestamp(up{job="shop"})', now)]
            if len(stamps) == targets and min(stamps) > since + STAMP_MARGIN:
                return now
            assert time.monotonic() < deadline, (
                f"no scrape of every target after {since}: {stamps}; {self.log_tail()}"
            )
            time.sleep(0.2)

    def log_tail(self):
        with open(self.log_path, errors="replace") as stream:
            return "prometheus log:\n" + "".join(stream.readlines()[-20:])


@pytest.fixture
def prometheus(stack, tmp_path):
    """A real Prometheus (its own data dir and free port) scraping ``stack`` every second,
    with the configuration ``make up`` would write for it; always stopped by its pid."""
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not os.access(binary, os.X_OK):
        pytest.fail(
            "no prometheus server binary: apt-get install prometheus "
            "(Debian's package; .ci/run installs it)"
        )
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(render(stack.config, SCRAPE_INTERVAL), sort_keys=False))
    address = f"127.0.0.1:{free_port()}"
    log_path = tmp_path / "prometheus.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address={address}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    server = Prometheus(f"http://{address}", log_path)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            assert process.poll() is None, (
                f"prometheus exited {process.returncode}; {server.log_tail()}"
            )
            try:
                if requests.get(f"{server.url}/-/ready", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, f"prometheus not ready; {server.log_tail()}"
            time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def bucket_quantile(q, buckets):
    """Prometheus' ``histogram_quantile`` (promql/quantile.go, classic buckets) of
    cumulative ``{upper_bound: count}``: linear interpolation inside the bucket holding
    rank ``q * count``; the largest finite bound if that is the +Inf bucket."""
    bounds = sorted(buckets)
    if len(bounds) < 2 or bounds[-1] != math.inf or buckets[math.inf] == 0:
        return math.nan
    counts = [buckets[bound] for bound in bounds]
    for i in range(1, len(counts)):  # as Prometheus: tolerate non-monotonic counts
        counts[i] = max(counts[i], counts[i - 1])
    rank = q * counts[-1]
    b = next(i for i, count in enumerate(counts) if count >= rank)
    if b == len(bounds) - 1:
        return bounds[-2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start, count = 0.0, counts[b]
    if b > 0:
        start, count, rank = bounds[b - 1], count - counts[b - 1], rank - counts[b - 1]
    return start + (bounds[b] - start) * (rank / count)


def test_prometheus_scrapes_every_process_and_counts_what_was_ordered(stack, api, prometheus):
    """Every process is an ``up`` target; 12 confirmed and 3 insufficient_stock orders
    placed over HTTP move the counters by exactly that much, and the gateway's median
    create_order latency is within what the client saw.

    The latency check does not use ``histogram_quantile`` over the whole history: the
    gateway's buckets are cumulative since the process started, so they also hold the
    earlier tests' create_order calls on this shared stack (hundreds of concurrent orders
    in test_stock_race, slower than these sequential ones), and their median may well be
    above anything these 15 orders took. (``increase()`` over a range would not help
    either: it extrapolates, and its range covers part of the quiet time before.)
    Instead the cumulative buckets are read from Prometheus at two settled moments,
    before and after, and the quantile is computed from their difference, which holds
    exactly these 15 observations (nothing else calls create_order meanwhile; a process
    restart would show as a negative difference and fail the count check). Each of them
    is at most the client-side latency of its request (the worker runs inside the HTTP
    exchange), so the median lies in a bucket whose bound is at most the smallest bound
    >= the largest latency the client measured. The same difference is also evaluated by
    Prometheus itself (``@`` modifier) and must agree. The whole-history quantile is only
    checked to be a finite positive number."""
    # Every target of the stack, as the generator listed them, scraped and up.
    expected = {
        (f"http://{target}/metrics", service)
        for service, targets in stack.metrics_targets.items()
        for target in targets
    }
    deadline = time.monotonic() + SCRAPE_DEADLINE
    while True:
        targets = prometheus.targets()
        seen = {(t["scrapeUrl"], t["labels"]["service"]) for t in targets}
        down = [
            (t["scrapeUrl"], t["health"], t["lastError"]) for t in targets if t["health"] != "up"
        ]
        if seen == expected and not down:
            break
        assert time.monotonic() < deadline, (
            f"targets: missing {expected - seen}, unexpected {seen - expected}, not up {down}"
        )
        time.sleep(0.2)

    customer, product = setup_shop(api, stock=CONFIRMED)

    start = prometheus.settled(time.time(), len(expected), time.monotonic() + SCRAPE_DEADLINE)
    before = {name: prometheus.scalar(promql, start) for name, promql in COUNTERS.items()}
    buckets_before = prometheus.buckets(start)

    body = {"customer_id": customer, "products": [{"id": product, "quantity": 1}]}
    statuses, latencies = [], []
    for i in range(CONFIRMED + REJECTED):
        url = stack.urls[i % len(stack.urls)]
        began = time.perf_counter()
        response = requests.post(f"{url}/api/orders", json=body, timeout=30)
        latencies.append(time.perf_counter() - began)
        statuses.append(response.status_code)
        if response.status_code == 409:
            assert response.json()["error"] == "insufficient_stock", response.text
    assert statuses == [201] * CONFIRMED + [409] * REJECTED
    placed = time.time()

    # The numbers reach Prometheus with the next scrape of each process; a worker's
    # duration is observed just after its reply went out, so wait for the counts too.
    deadline = time.monotonic() + SCRAPE_DEADLINE
    while True:
        end = prometheus.settled(placed, len(expected), deadline)
        increase = {
            name: prometheus.scalar(promql, end) - before[name] for name, promql in COUNTERS.items()
        }
        buckets_after = prometheus.buckets(end)
        observed = buckets_after.get(math.inf, 0) - buckets_before.get(math.inf, 0)
        reached = all(increase[name] >= EXPECTED[name] for name in EXPECTED)
        if (reached and observed >= CONFIRMED + REJECTED) or time.monotonic() > deadline:
            break
        time.sleep(0.2)

    assert increase == EXPECTED
    delta = {le: count - buckets_before.get(le, 0) for le, count in buckets_after.items()}
    assert delta[math.inf] == CONFIRMED + REJECTED, delta
    assert all(count >= 0 for count in delta.values()), delta

    worst = max(latencies)
    bound = min((le for le in delta if le >= worst), default=math.inf)
    median = bucket_quantile(0.5, delta)
    assert 0 < median <= bound, (median, bound, worst, delta)
    # Prometheus' own histogram_quantile of the same difference (a bucket absent before
    # counted from 0) agrees with the one computed here.
    summed = f"sum by (le) ({GATEWAY_CREATE_ORDER})"
    summed_before = f"sum by (le) ({GATEWAY_CREATE_ORDER} @ {start:.3f})"
    promql_delta = f"{summed} - ({summed_before} or 0 * {summed})"
    ((_, by_prometheus),) = prometheus.query(f"histogram_quantile(0.5, {promql_delta})", end)
    assert by_prometheus == pytest.approx(median), (by_prometheus, median)

    whole_history = prometheus.scalar(f"histogram_quantile(0.5, {summed})", end)
    assert math.isfinite(whole_history) and whole_history > 0, whole_history
    print(
        f"\nclient latency max {worst * 1000:.1f} ms, median "
        f"{sorted(latencies)[len(latencies) // 2] * 1000:.1f} ms; gateway median from the "
        f"delta {median * 1000:.1f} ms (bound {bound}); whole history "
        f"{whole_history * 1000:.1f} ms"
    )


def test_prometheus_loads_and_evaluates_the_alerting_rules(stack, prometheus):
    """The configuration `make up` writes loads every rule group of deploy/prometheus/rules/
    (docs/ALERTS.md); after an evaluation none is in error, and the shop-side gauges the
    infrastructure alerts read are scraped from every service (no RabbitMQ job here: the
    stack's broker is not a `make cluster-up` node)."""
    expected, count = set(), 0
    for path in glob.glob(RULES_GLOB):
        with open(path) as stream:
            for group in yaml.safe_load(stream)["groups"]:
                expected.add(group["name"])
                count += len(group["rules"])
    deadline = time.monotonic() + SCRAPE_DEADLINE
    while True:
        groups = prometheus.api("rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        evaluated = all(rule.get("lastEvaluation", "").startswith("20") for rule in rules)
        if {group["name"] for group in groups} == expected and evaluated:
            break
        assert time.monotonic() < deadline, (
            f"rule groups {sorted(group['name'] for group in groups)}, expected "
            f"{sorted(expected)}; {prometheus.log_tail()}"
        )
        time.sleep(0.2)
    assert [(rule["name"], rule["lastError"]) for rule in rules if rule["health"] != "ok"] == []
    assert len(rules) == count
    while not (targets := prometheus.targets()):  # discovered a moment after the start
        assert time.monotonic() < deadline, f"no target; {prometheus.log_tail()}"
        time.sleep(0.2)
    assert {target["labels"]["job"] for target in targets} == {"shop"}

    services = set(stack.metrics_targets)
    while True:
        now = time.time()
        blocked = {
            labels["service"]: value
            for labels, value in prometheus.query("max by (service) (shop_broker_blocked)", now)
        }
        if set(blocked) == services:
            break
        assert time.monotonic() < deadline, blocked
        time.sleep(0.2)
    assert set(blocked.values()) == {0.0}, blocked
    # each products process shows it from its reconciler's first tick on
    while True:
        hold_age = prometheus.query("shop_reconciler_oldest_hold_age_seconds", time.time())
        if len(hold_age) >= len(stack.metrics_targets["products"]):
            break
        assert time.monotonic() < deadline, hold_age
        time.sleep(0.2)
    assert {labels["service"] for labels, _ in hold_age} == {"products"}, hold_age
    assert len(hold_age) == len(stack.metrics_targets["products"]), hold_age
