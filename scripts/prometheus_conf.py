"""The Prometheus scrape configuration of a shop started by `make up` (or a test stack).

``make up`` writes ``.run/prometheus.yml``: one job, ``shop``, whose targets are every
process's ``/metrics`` address (scripts/supervisor.py :func:`metrics_targets`), each
labelled with its ``service`` (``gateway``, ``customers``, ``products``, ``orders``), the
same value as the ``service`` label the processes put on their own metrics.
It also loads the repository's alerting rules (``rule_files``: every
``deploy/prometheus/rules/*.yml`` by absolute path, evaluated every scrape interval;
docs/ALERTS.md). When ``AMQP_URI`` names the `make cluster-up` nodes
(127.0.0.1:5701-5709), each node's rabbitmq_prometheus plugin is scraped too, on its
port 1580N (scripts/rabbit_cluster.py): job ``rabbitmq`` (``/metrics``: alarms, ``up``)
and job ``rabbitmq-queues`` (``/metrics/per-object``: one series per queue), the names
the rules expect. Any other broker: no RabbitMQ job (add them by hand, docs/DEPLOY.md).
Run a Prometheus on it with::

    prometheus --config.file=.run/prometheus.yml --storage.tsdb.path=.run/prometheus
"""

import os
from urllib.parse import urlsplit

import yaml

from common.config import ROOT
from scripts.rabbit_cluster import AMQP_PORT_BASE, PROMETHEUS_PORT_BASE
from scripts.supervisor import metrics_targets

DEFAULT_SCRAPE_INTERVAL = "5s"
RULES_GLOB = os.path.join(ROOT, "deploy", "prometheus", "rules", "*.yml")
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
RABBITMQ_JOBS = {"rabbitmq": "/metrics", "rabbitmq-queues": "/metrics/per-object"}


def render(config, scrape_interval=DEFAULT_SCRAPE_INTERVAL):
    """The configuration as a dict (YAML-ready)."""
    rabbitmq = rabbitmq_targets(config.get("AMQP_URI") or "")
    return {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval if _seconds(scrape_interval) < 10 else "10s",
            "evaluation_interval": scrape_interval,
        },
        "rule_files": [RULES_GLOB],
        "scrape_configs": [
            {
                "job_name": "shop",
                "metrics_path": "/metrics",
                # the processes' own `service` label (RPC and worker metrics carry it) is the
                # target's: keep it, rather than get it renamed `exported_service`
                "honor_labels": True,
                "static_configs": [
                    {"targets": targets, "labels": {"service": service}}
                    for service, targets in metrics_targets(config).items()
                ],
            }
        ]
        + [
            {"job_name": job, "metrics_path": path, "static_configs": [{"targets": rabbitmq}]}
            for job, path in RABBITMQ_JOBS.items()
            if rabbitmq
        ],
    }


def rabbitmq_targets(amqp_uri):
    """The rabbitmq_prometheus addresses of the `make cluster-up` nodes ``amqp_uri``
    (``;``-separated alternates) names; [] for any other broker."""
    targets = []
    for uri in str(amqp_uri).split(";"):
        parts = urlsplit(uri.strip())
        try:
            port = parts.port
        except ValueError:
            continue
        if parts.hostname in LOCAL_HOSTS and port and 0 < port - AMQP_PORT_BASE < 10:
            targets.append(f"127.0.0.1:{PROMETHEUS_PORT_BASE + port - AMQP_PORT_BASE}")
    return targets


def _seconds(duration):
    return float(str(duration).rstrip("s"))


def write_prometheus_conf(config, run_dir, scrape_interval=DEFAULT_SCRAPE_INTERVAL):
    path = os.path.join(run_dir, "prometheus.yml")
    with open(path, "w") as stream:
        stream.write(
            "# Written by `make up` (scripts/prometheus_conf.py); edits are overwritten.\n"
        )
        yaml.safe_dump(render(config, scrape_interval), stream, sort_keys=False)
    return path
