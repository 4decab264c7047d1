"""What a container command of docker-compose.yml or deploy/k8s/ must name: a real service
class (``nameko run ... module:Class``, imported here) or a real subcommand of
scripts/manage.py (parsed by its own parser). Shared by tests/test_compose.py and
tests/test_k8s.py, with :func:`tool` (where their command-line tools are)."""

import importlib
import os
import shutil

import pytest

from scripts.manage import build_parser


def tool(name, env_var, how_to_get):
    """The path of the command-line tool ``name`` (or of ``$env_var``); fails the test
    saying ``how_to_get`` it when there is none."""
    path = shutil.which(os.environ.get(env_var) or name)
    if not path:
        pytest.fail(f"{name} not found: {how_to_get}, or set {env_var} to its path")
    return path


def check_command(command):
    """Raise AssertionError unless ``command`` (a list) runs something that exists.

    Returns ``("nameko", service_class, config_path)`` or ``("manage", argparse
    namespace, None)``."""
    assert isinstance(command, list) and command, f"not an exec-form command: {command!r}"
    if command[:2] == ["nameko", "run"]:
        args = command[2:]
        assert "--config" in args, f"{command}: no --config"
        config = args[args.index("--config") + 1]
        targets = [arg for arg in args if not arg.startswith("-") and arg != config]
        assert len(targets) == 1, f"{command}: one service expected, got {targets}"
        module_name, _, class_name = targets[0].partition(":")
        assert class_name, f"{command}: name the class (module:Class), not only the module"
        service = getattr(importlib.import_module(module_name), class_name, None)
        assert isinstance(service, type), f"{command}: no class {class_name} in {module_name}"
        assert getattr(service, "name", None), f"{command}: {class_name} is no nameko service"
        return "nameko", service, config
    assert command[:2] == ["python", "scripts/manage.py"], f"unknown command {command}"
    try:
        parsed = build_parser().parse_args(command[2:])
    except SystemExit as exc:  # argparse's way of saying no
        raise AssertionError(f"{command}: scripts/manage.py rejects it") from exc
    return "manage", parsed, None
