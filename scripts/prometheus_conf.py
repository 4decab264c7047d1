"""The Prometheus scrape configuration of a shop started by `make up` (or a test stack).

``make up`` writes ``.run/prometheus.yml``: one job, ``shop``, whose targets are every
process's ``/metrics`` address (scripts/supervisor.py :func:`metrics_targets`), each
labelled with its ``service`` (``gateway``, ``customers``, ``products``, ``orders``), the
same value as the ``service`` label the processes put on their own metrics.
Run a Prometheus on it with::

    prometheus --config.file=.run/prometheus.yml --storage.tsdb.path=.run/prometheus
"""

import os

import yaml

from scripts.supervisor import metrics_targets

DEFAULT_SCRAPE_INTERVAL = "5s"


def render(config, scrape_interval=DEFAULT_SCRAPE_INTERVAL):
    """The configuration as a dict (YAML-ready)."""
    return {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval if _seconds(scrape_interval) < 10 else "10s",
        },
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
        ],
    }


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
