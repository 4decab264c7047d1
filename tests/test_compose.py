"""docker-compose.yml, without Docker running: `docker-compose config` accepts it, and every
app container runs the one image built from the root Dockerfile with a command that names
a real service (tests/deploy_commands.py)."""

import os
import subprocess

import pytest
import yaml

from common.config import ROOT
from tests.deploy_commands import check_command, tool

COMPOSE_FILE = os.path.join(ROOT, "docker-compose.yml")
IMAGE = "shop"


def docker_compose():
    return tool(
        "docker-compose",
        "DOCKER_COMPOSE",
        "`apt-get install -y docker-compose` (Debian's package; .ci/run installs it)",
    )


def run_compose(*args):
    # `config` reads and resolves the file only: no Docker daemon is needed.
    result = subprocess.run(
        [docker_compose(), "-f", COMPOSE_FILE, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"docker-compose {' '.join(args)}:\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def services():
    return yaml.safe_load(run_compose("config"))["services"]


def app_services(services):
    return {name: svc for name, svc in services.items() if svc.get("image") == IMAGE}


def test_config_is_valid():
    run_compose("config", "-q")


def test_one_image_built_once_from_the_root_dockerfile(services):
    apps = app_services(services)
    # the migration, the three services and the three gateways
    assert {"migrate", "customers", "products", "orders"} <= set(apps)
    assert sum(name.startswith("gateway") for name in apps) == 3
    builders = [name for name, svc in services.items() if "build" in svc]
    assert builders == ["migrate"], "build the image once; every other container reuses it"
    build = services["migrate"]["build"]
    assert os.path.realpath(build["context"]) == os.path.realpath(ROOT)
    assert build.get("dockerfile", "Dockerfile") == "Dockerfile"
    # every app container that starts waits for the one that builds the image
    for name in apps:
        if name != "migrate":
            assert "migrate" in dependencies(services, name), name


def dependencies(services, name, seen=None):
    seen = set() if seen is None else seen
    for dep in services[name].get("depends_on") or {}:
        if dep not in seen:
            seen.add(dep)
            dependencies(services, dep, seen)
    return seen


def test_no_other_dockerfile():
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # .venv, .git, .run...
        found += [
            os.path.relpath(os.path.join(folder, name), ROOT)
            for name in files
            if name == "Dockerfile"
        ]
    assert found == ["Dockerfile"], "one image: the root Dockerfile builds every process"


def test_every_command_names_a_real_service(services):
    kinds = {}
    for name, svc in app_services(services).items():
        command = svc.get("command")
        assert command, f"{name}: the image's default command is not for every service"
        kind, target, config = check_command(command)
        if kind == "nameko":
            assert config == "config.yml", name  # the image's /app/config.yml
            kinds[name] = target.name
        else:
            kinds[name] = target.command
    assert kinds["migrate"] == "migrate"
    assert {kinds[name] for name in ("customers", "products", "orders")} == {
        "customers",
        "products",
        "orders",
    }
    assert all(kinds[name] == "gateway" for name in kinds if name.startswith("gateway"))


def test_backing_services_are_not_published_and_apps_use_least_privilege(services):
    """RabbitMQ and PostgreSQL stay on the compose network; the app containers connect as
    the broker's `shop` user (not guest) and each service's own database role."""
    for name in ("rabbitmq", "postgres"):
        assert not services[name].get("ports"), f"{name} must not be published"
    for name, svc in app_services(services).items():
        env = svc["environment"]
        assert "guest" not in env["AMQP_URI"], name
        if name == "rabbitmq-setup":
            continue  # the broker's user only: no database
        for service in ("customers", "products", "orders"):
            uri = env[f"{service.upper()}_DB_URI"]
            assert uri.split("://", 1)[1].startswith(f"shop_{service}"), (name, uri)


def test_the_shop_broker_user_is_not_the_administrator_and_management_is_private(services):
    """RabbitMQ's default user is its administrator, used only by the one-shot
    rabbitmq-setup (scripts/manage.py broker-user), which gives AMQP_URI's user the shop's
    permissions (common/broker_permissions.py) before any app container starts; the
    management port is not published."""
    from urllib.parse import urlsplit

    rabbit = services["rabbitmq"]
    admin = rabbit["environment"]["RABBITMQ_DEFAULT_USER"]
    assert admin and admin != "guest"
    assert "RABBITMQ_DEFAULT_VHOST" not in rabbit["environment"]  # `shop` is setup's
    published = [port for svc in services.values() for port in svc.get("ports") or []]
    assert not any("15672" in str(port) or "5672" in str(port) for port in published), published

    setup = services["rabbitmq-setup"]
    kind, parsed, _ = check_command(setup["command"])
    assert (kind, parsed.command, parsed.default_queue_type) == ("manage", "broker-user", "quorum")
    assert urlsplit(setup["environment"]["RABBIT_ADMIN_URI"]).username == admin
    assert setup["depends_on"]["rabbitmq"]["condition"] == "service_healthy"

    apps = app_services(services)
    shop_uris = {svc["environment"]["AMQP_URI"] for name, svc in apps.items() if name != "migrate"}
    assert shop_uris == {setup["environment"]["AMQP_URI"]}, "one broker user, the one setup makes"
    (shop_uri,) = shop_uris
    assert urlsplit(shop_uri).username not in (admin, "guest")
    assert urlsplit(shop_uri).path == "/shop"
    for name, svc in apps.items():
        if name in ("migrate", "rabbitmq-setup"):
            continue
        env = svc["environment"]
        assert not {"RABBIT_ADMIN_URI", "RABBIT_MANAGEMENT_URI"} & set(env), name
        assert not any(
            admin in str(value).split("://", 1)[-1].split("@")[0]
            for value in env.values()
            if "@" in str(value)
        ), name
        assert "rabbitmq-setup" in dependencies(services, name), name
        if name in ("customers", "products", "orders"):
            assert svc["depends_on"]["rabbitmq-setup"]["condition"] == (
                "service_completed_successfully"
            )
