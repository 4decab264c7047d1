"""The Grafana dashboard (deploy/grafana) asks only for metrics the shop exports.

* shop.json is well formed: unique panel ids, every panel titled, typed, placed, with
  targets that each have a ``refId`` and a PromQL ``expr`` naming at least one metric, all
  on the provisioned data source (uid ``prometheus``);
* the provisioning files and the compose Prometheus configuration parse and agree with it;
* every metric name a query references is a sample name in the scrape of the real stack
  (after a little traffic), except the few that only faults produce (``FAULT_ONLY``):
  those must at least be declared by a process (a ``# TYPE`` line with no sample yet).
"""

import json
import re
import time
import uuid
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy/grafana/dashboards/shop.json"
DATASOURCES = ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml"
PROVIDERS = ROOT / "deploy/grafana/provisioning/dashboards/shop.yml"
COMPOSE_PROMETHEUS = ROOT / "deploy/prometheus/prometheus.yml"

# Labelled counters that need a fault to get a sample: a pending order resolved by
# recovery, a database error. (The traffic below happens to count one database error today,
# reason "other": the IntegrityError of an idempotent replay. Not relied on.)
FAULT_ONLY = {"shop_orders_recovered_total", "shop_db_errors_total"}

# Words of PromQL that look like a metric name but are not one (functions are also
# recognised by the "(" after them; this list covers keywords and modifiers).
PROMQL_WORDS = {
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "limitk",
    "limit_ratio",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "atan2",
    "inf",
    "nan",
    "rate",
    "irate",
    "increase",
    "delta",
    "idelta",
    "deriv",
    "histogram_quantile",
    "clamp",
    "clamp_min",
    "clamp_max",
    "abs",
    "vector",
    "scalar",
    "label_replace",
    "label_join",
    "absent",
    "sort",
    "sort_desc",
    "time",
    "timestamp",
}
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", re.I)
# A whole name (not the "e" of 1e-9 nor a $variable), not followed by "(" (a function).
IDENTIFIER = re.compile(r"(?<![\w.:$])[A-Za-z_:][\w:]*(?![\w:]|\s*\()")
LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*\w+\s*\)\s*$")


def metric_names(expr):
    """The metric names a PromQL expression selects: string literals, label matchers
    ``{...}``, range selectors ``[...]`` and ``by``/``without``/``on``/``ignoring``/
    ``group_*`` label lists are dropped; what remains of the identifiers, less those
    followed by ``(`` (functions) and PromQL's keywords, are metric names."""
    expr = STRING.sub(" ", expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = GROUPING.sub(" ", expr)
    return {name for name in IDENTIFIER.findall(expr) if name.lower() not in PROMQL_WORDS}


@pytest.mark.parametrize(
    "expr, names",
    [
        (
            "histogram_quantile(0.99, sum by (service, le) (rate(shop_entrypoint_duration_seconds_bucket"
            '{service=~"$service", entrypoint!="a{b}"}[$__rate_interval])))',
            {"shop_entrypoint_duration_seconds_bucket"},
        ),
        (
            'max by (service) (pool{state="checked_out"} / ignoring (state) group_left pool{state="size"})'
            " > bool 0.5 or on (job) vector(0)",
            {"pool"},
        ),
        (
            "sum(rate(a_total[5m] offset 1h)) / clamp_min(sum without (x) (rate(b:c_total[5m:1m])), 1e-9)"
            " unless up",
            {"a_total", "b:c_total", "up"},
        ),
        ('sum(rate(x_total{job="y"}[1m])) by (job)', {"x_total"}),
        ("vector(1) + scalar(time())", set()),
    ],
)
def test_metric_names_extracts_what_a_query_selects(expr, names):
    assert metric_names(expr) == names


def load_dashboard():
    with open(DASHBOARD) as stream:
        return json.load(stream)


def queries(dashboard):
    """``[(where, expr)]``: every panel target, and the metric part of every
    ``label_values(metric, label)`` template variable."""
    found = [
        (f"panel {panel['id']} {panel['title']!r}", target["expr"])
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            query = query.get("query", "") if isinstance(query, dict) else query
            match = LABEL_VALUES.match(query)
            found.append((f"variable ${variable['name']}", match.group(1) if match else query))
    return found


OUTCOME_MATCHER = re.compile(r'outcome\s*(=~|!~|=|!=)\s*\\?"([^"\\]*)')


def known_outcomes():
    """Every word the ``outcome`` label can hold: ``ok`` and every error code."""
    import common.errors
    import gateway.exceptions  # noqa: F401 - the gateway-only errors (401, 413...)

    def codes(cls):
        yield cls.error
        for subclass in cls.__subclasses__():
            yield from codes(subclass)

    return {"ok", *codes(common.errors.ShopError)}


def test_every_outcome_a_query_names_is_a_real_one():
    """A typo'd or renamed error code in an ``outcome`` matcher selects nothing, silently:
    every alternative must be a code the services can report."""
    outcomes = known_outcomes()
    named = {}
    for where, expr in queries(load_dashboard()):
        for _, values in OUTCOME_MATCHER.findall(expr):
            for value in values.split("|"):
                named.setdefault(value, where)
    assert named, "no query filters on outcome: the check would prove nothing"
    unknown = {value: where for value, where in named.items() if value not in outcomes}
    assert not unknown, f"outcomes no service reports: {unknown}"


def test_dashboard_is_well_formed():
    dashboard = load_dashboard()
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"
    datasource = {"type": "prometheus", "uid": "prometheus"}
    for panel in panels:
        assert panel["title"] and panel["type"] in ("timeseries", "stat"), panel["id"]
        assert set(panel["gridPos"]) >= {"h", "w", "x", "y"}, panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        assert panel["datasource"] == datasource, panel["title"]
        targets = panel["targets"]
        assert targets, f"{panel['title']!r} has no target"
        ref_ids = [target["refId"] for target in targets]
        assert all(ref_ids) and len(set(ref_ids)) == len(ref_ids), panel["title"]
        for target in targets:
            assert target["expr"].strip(), f"{panel['title']!r} {target['refId']}: empty expr"
            assert target.get("datasource", datasource) == datasource, panel["title"]
    nameless = [(where, expr) for where, expr in queries(dashboard) if not metric_names(expr)]
    assert nameless == [], "queries that name no metric"


def test_provisioning_matches_the_dashboard():
    with open(DATASOURCES) as stream:
        [source] = yaml.safe_load(stream)["datasources"]
    assert (source["uid"], source["type"], source["url"]) == (
        "prometheus",
        "prometheus",
        "http://prometheus:9090",
    )
    assert {panel["datasource"]["uid"] for panel in load_dashboard()["panels"]} == {source["uid"]}
    with open(PROVIDERS) as stream:
        [provider] = yaml.safe_load(stream)["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"

    with open(ROOT / "docker-compose.yml") as stream:
        compose = yaml.safe_load(stream)["services"]
    mount = "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro"
    assert mount in compose["grafana"]["volumes"]
    with open(COMPOSE_PROMETHEUS) as stream:
        [job] = yaml.safe_load(stream)["scrape_configs"]
    assert job["job_name"] == "shop" and job["honor_labels"] is True
    [gateways] = job["static_configs"]
    assert gateways["labels"] == {"service": "gateway"}
    [discovered] = job["dns_sd_configs"]  # every container of a (scaled) service
    assert set(discovered["names"]) == {"customers", "products", "orders"}
    [relabel] = job["relabel_configs"]
    assert (relabel["source_labels"], relabel["target_label"]) == (["__meta_dns_name"], "service")
    addresses = [
        *gateways["targets"],
        *(f"{name}:{discovered['port']}" for name in discovered["names"]),
    ]
    for address in addresses:  # a compose service, on the port it serves /metrics on
        host, port = address.rsplit(":", 1)
        environment = compose[host]["environment"]
        listen = environment.get("OPS_HTTP_ADDRESS") or environment["WEB_SERVER_ADDRESS"]
        assert listen.endswith(f":{port}"), address


SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("", "_count", "_sum"),
    "gauge": ("",),
    "info": ("_info",),
    "unknown": ("",),
}


def scrape(stack):
    """``(sample names, declared names)`` over every process of ``stack``: the names of
    the samples served, and the series names of every family declared (with or without
    samples: a labelled metric never incremented has ``# TYPE`` but no sample)."""
    samples, declared = set(), set()
    for addresses in stack.metrics_targets.values():
        for address in addresses:
            response = requests.get(f"http://{address}/metrics", timeout=5)
            response.raise_for_status()
            for family in text_string_to_metric_families(response.text):
                samples.update(sample.name for sample in family.samples)
                declared.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return samples, declared


def drive_traffic(api):
    """A customer (and a replay of its creation), a product, an order confirmed then
    cancelled, an order rejected for insufficient stock."""
    unique = uuid.uuid4().hex
    key = {"Idempotency-Key": f"dashboard-{unique}"}
    body = {"name": "d", "email": f"d-{unique}@example.com"}
    customer = requests.post(f"{api}/api/customers", json=body, headers=key)
    replay = requests.post(f"{api}/api/customers", json=body, headers=key)
    assert customer.status_code == replay.status_code == 201, customer.text
    assert replay.json() == customer.json()
    product = requests.post(f"{api}/api/products", json={"name": "p", "price": "1", "stock": 2})
    assert product.status_code == 201, product.text

    def order(quantity):
        lines = [{"id": product.json()["id"], "quantity": quantity}]
        return requests.post(
            f"{api}/api/orders", json={"customer_id": customer.json()["id"], "products": lines}
        )

    confirmed = order(1)
    assert confirmed.status_code == 201, confirmed.text
    cancelled = requests.post(f"{api}/api/orders/{confirmed.json()['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    refused = order(99)
    assert (refused.status_code, refused.json()["error"]) == (409, "insufficient_stock")


def unexported(referenced, samples, declared):
    """The referenced names with no sample (a ``FAULT_ONLY`` name: not even declared)."""
    return {
        name
        for name in referenced
        if name not in samples and not (name in FAULT_ONLY and name in declared)
    }


def test_every_metric_of_the_dashboard_is_exported(stack, api):
    drive_traffic(api)
    where = {}
    for place, expr in queries(load_dashboard()):
        for name in metric_names(expr):
            where.setdefault(name, []).append(place)
    assert len(where) > 10, f"too few metric names extracted: {sorted(where)}"
    deadline = time.monotonic() + 10  # a counter of a commit may trail the HTTP answer
    while True:
        samples, declared = scrape(stack)
        missing = unexported(where, samples, declared)
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not missing, "not exported by any process:\n" + "\n".join(
        f"  {name}: {', '.join(sorted(set(where[name])))}" for name in sorted(missing)
    )
    # the exemption stays honest: a fault-only name is still one the shop declares
    assert FAULT_ONLY <= declared
