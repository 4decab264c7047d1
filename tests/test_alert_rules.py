"""The alerting rules of deploy/prometheus/rules/, checked and unit-tested by the real
``promtool`` (Debian's prometheus package: /usr/bin/promtool; .ci/run installs it), as
`make alerts-check` does; then what promtool cannot know:

* every alert has a promtool test where it fires AND one where it stays silent;
* every alert's runbook link is a section of docs/ALERTS.md;
* every ``shop_*`` metric a rule reads is one the shop's processes export
  (common/metrics.py), so a renamed metric cannot leave an alert silently blind.
"""

import glob
import os
import re
import shutil
import subprocess

import pytest
import yaml
from prometheus_client import REGISTRY

import common.metrics  # noqa: F401 - registers every shop metric
from common.config import ROOT, load_config
from scripts.prometheus_conf import rabbitmq_targets, render

RULES_DIR = os.path.join(ROOT, "deploy", "prometheus", "rules")
TESTS_DIR = os.path.join(ROOT, "deploy", "prometheus", "tests")
RULE_FILES = sorted(glob.glob(os.path.join(RULES_DIR, "*.yml")))
TEST_FILES = sorted(glob.glob(os.path.join(TESTS_DIR, "*.test.yml")))
RUNBOOK = os.path.join(ROOT, "docs", "ALERTS.md")
PROMTOOL_TIMEOUT = 120  # s; the SLO tests replay 5 days of 1-minute samples (~20 s)
SHOP_METRIC = re.compile(r"\b(shop_[a-z0-9_]+)")
SERIES_SUFFIXES = ("_total", "_bucket", "_count", "_sum")


def promtool():
    binary = shutil.which("promtool") or "/usr/bin/promtool"
    if not os.access(binary, os.X_OK):
        pytest.fail(
            "no promtool: apt-get install prometheus (Debian's package ships "
            "/usr/bin/promtool; .ci/run installs it)"
        )
    return binary


def run_promtool(*args):
    result = subprocess.run(
        [promtool(), *args],
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT,
        cwd=ROOT,
    )
    return result.returncode, result.stdout + result.stderr


def rules():
    """Every rule of every rule file, as dicts (``alert`` or ``record``, ``expr``...)."""
    found = []
    for path in RULE_FILES:
        with open(path) as stream:
            for group in yaml.safe_load(stream)["groups"]:
                found.extend(group["rules"])
    return found


def alerts():
    return {rule["alert"]: rule for rule in rules() if "alert" in rule}


def test_the_rule_and_test_files_exist():
    assert {os.path.basename(path) for path in RULE_FILES} == {"shop-slo.yml", "shop-infra.yml"}
    assert len(TEST_FILES) == len(RULE_FILES)


@pytest.mark.parametrize("path", RULE_FILES, ids=os.path.basename)
def test_promtool_check_rules(path):
    code, output = run_promtool("check", "rules", path)
    assert code == 0, output


@pytest.mark.parametrize("path", TEST_FILES, ids=os.path.basename)
def test_promtool_test_rules(path):
    code, output = run_promtool("test", "rules", path)
    assert code == 0, output
    assert "SUCCESS" in output, output


def test_promtool_test_rules_fails_a_wrong_expectation(tmp_path):
    """The runner really checks: the infra tests with one expected alert's label changed
    fail (promtool compares labels and annotations exactly)."""
    source = os.path.join(TESTS_DIR, "shop-infra.test.yml")
    with open(source) as stream:
        tests = yaml.safe_load(stream)
    tests["rule_files"] = [os.path.join(RULES_DIR, "shop-infra.yml")]
    expectation = next(
        case
        for case in tests["tests"][0]["alert_rule_test"]
        if case["exp_alerts"] and case["alertname"] == "ShopBrokerBlocksPublishers"
    )
    expectation["exp_alerts"][0]["exp_labels"]["service"] = "gateway"
    broken = tmp_path / "broken.test.yml"
    broken.write_text(yaml.safe_dump(tests, sort_keys=False))
    code, output = run_promtool("test", "rules", str(broken))
    assert code != 0 and "FAILED" in output, output


def test_every_alert_is_tested_firing_and_silent():
    fired, silent = set(), set()
    for path in TEST_FILES:
        with open(path) as stream:
            for group in yaml.safe_load(stream)["tests"]:
                for case in group.get("alert_rule_test", []):
                    (fired if case.get("exp_alerts") else silent).add(case["alertname"])
    names = set(alerts())
    assert names - fired == set(), "alerts never shown firing"
    assert names - silent == set(), "alerts never shown silent"
    assert (fired | silent) - names == set(), "tests of alerts that do not exist"


def test_every_alert_has_a_severity_and_a_runbook_section():
    with open(RUNBOOK) as stream:
        headings = {line.lstrip("#").strip().lower() for line in stream if line.startswith("### ")}
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in ("page", "ticket"), name
        assert rule["annotations"]["runbook"] == f"docs/ALERTS.md#{name.lower()}", name
        assert name.lower() in headings, f"docs/ALERTS.md has no section ### {name}"


def test_every_shop_metric_the_rules_read_is_exported():
    exported = {family.name for family in REGISTRY.collect()}  # counters: without _total
    read = {name for rule in rules() for name in SHOP_METRIC.findall(rule["expr"])}
    assert read, "no shop metric read by the rules"
    missing = set()
    for name in read:
        base = next((name[: -len(s)] for s in SERIES_SUFFIXES if name.endswith(s)), name)
        if name not in exported and base not in exported:
            missing.add(name)
    assert missing == set(), f"read by the rules, exported by no shop process: {missing}"


def test_make_up_scrapes_the_cluster_up_nodes_under_the_job_names_the_rules_read():
    cluster = ";".join(f"pyamqp://shop:pw@127.0.0.1:{5700 + n}/shop" for n in (1, 2, 3))
    assert rabbitmq_targets(cluster) == ["127.0.0.1:15801", "127.0.0.1:15802", "127.0.0.1:15803"]
    assert rabbitmq_targets("pyamqp://guest:guest@127.0.0.1:5672/") == []
    assert rabbitmq_targets("pyamqp://shop:pw@rabbit.example:5701/shop") == []

    config = load_config()
    jobs = {
        job["job_name"]: job for job in render({**config, "AMQP_URI": cluster})["scrape_configs"]
    }
    assert {name: job["metrics_path"] for name, job in jobs.items()} == {
        "shop": "/metrics",
        "rabbitmq": "/metrics",
        "rabbitmq-queues": "/metrics/per-object",
    }
    read = {job for rule in rules() for job in re.findall(r'job="([^"]+)"', rule["expr"])}
    assert read <= set(jobs), read
    single = render(config)  # the default broker: no plugin, no RabbitMQ job
    assert [job["job_name"] for job in single["scrape_configs"]] == ["shop"]
    assert single["rule_files"] == [os.path.join(RULES_DIR, "*.yml")]
