"""Reading config.yml outside ``nameko run`` (migrations, scripts, tests).

Uses nameko's own YAML loader, so ``${VAR:default}`` substitution behaves exactly as it
does for the running services.
"""

import os
from typing import Any

import yaml
from nameko.cli.main import setup_yaml_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG_PATH = os.path.join(ROOT, "config.yml")


_parser_ready = False


def load_config(path: str | None = None) -> dict[str, Any]:
    """config.yml (or ``$SHOP_CONFIG``) as a dict, environment variables substituted."""
    global _parser_ready
    if not _parser_ready:
        setup_yaml_parser()
        _parser_ready = True
    with open(path or os.environ.get("SHOP_CONFIG", DEFAULT_CONFIG_PATH)) as stream:
        return yaml.safe_load(stream)
