"""Operations behind the Makefile: databases, migrations, seed data, supervisor, readiness.

Run from the repository root with the project's virtualenv, e.g.
``.venv/bin/python scripts/manage.py migrate``. Settings come from config.yml (or
``$SHOP_CONFIG``), environment variables substituted.
"""

import argparse
import logging
import os
import sys
import time
import warnings

# eventlet (imported by nameko) warns that it is in maintenance mode; nothing to act on.
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
logging.getLogger("amqp").setLevel(logging.ERROR)  # ping retries close channels noisily

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sqlalchemy.engine import make_url  # noqa: E402

from common import admin  # noqa: E402
from common.config import ROOT, load_config  # noqa: E402


def database_uris(config):
    return {
        service: config["DB_URIS"][f"{service}:Base"] for service in admin.SERVICES_WITH_DATABASE
    }


def admin_uri(config):
    return config.get("DB_ADMIN_URI") or admin.DEFAULT_ADMIN_URI


def cmd_setup(args, config):
    """As the superuser (DB_ADMIN_URI): each service's role and database, owned by it and
    only it connecting (idempotent: re-owns an install made as postgres)."""
    for service, uri in database_uris(config).items():
        created = admin.create_database(uri, admin_uri(config))
        print(
            f"{service}: database {uri.rsplit('/', 1)[-1]} {'created' if created else 'exists'}"
            f", owned by {make_url(uri).username}"
        )


def cmd_migrate(args, config):
    """Alembic upgrade of each database: to head, or with ``--phase expand`` to the last
    revision before the first pending contract (docs/DEPLOY.md, "Migrations: expand,
    then contract")."""
    for service, uri in database_uris(config).items():
        if args.allow_ahead and admin.schema_state(service, uri) == "ahead":
            # Newer code migrated it: this is a rollback, and expand-then-contract
            # migrations let older code run on the newer schema (docs/DEPLOY.md).
            print(f"{service}: migrated by newer code, left as it is")
            continue
        if args.phase is None:
            admin.migrate(service, uri)
            print(f"{service}: migrated to head")
            continue
        revision = admin.migrate_phase(service, uri, args.phase)
        where = "nothing pending" if revision is None else f"migrated to {revision}"
        print(f"{service}: {args.phase} phase, {where}")


def cmd_upgrade(args, config):
    """A rolling upgrade of the running `make up` stack to this code (scripts/upgrade.py):
    the expand migrations, then each supervisord program restarted in turn, each waited
    for until it is ready. The contract migrations are left to the operator."""
    from functools import partial

    from scripts import readiness, upgrade

    args.phase, args.allow_ahead = admin.EXPAND, False
    cmd_migrate(args, config)
    supervisorctl = [
        os.path.join(os.path.dirname(sys.executable), "supervisorctl"),
        "-c",
        os.path.join(args.run_dir, "supervisord.conf"),
    ]
    try:
        upgrade.roll(
            upgrade.supervisor_steps(config),
            partial(upgrade.supervisor_restart, supervisorctl),
            partial(readiness.wait_answering, timeout=args.timeout),
        )
    except RuntimeError as exc:
        sys.exit(f"upgrade: {exc} (see `make logs`)")
    print("every process runs this code; contract migrations, if any, once no process of")
    print("the previous release can come back: python scripts/manage.py migrate --phase contract")


def cmd_seed(args, config):
    from scripts.seed import seed

    seed(database_uris(config), customers=args.customers, products=args.products)


def cmd_supervisor_conf(args, config):
    """Write the supervisord configuration and the Prometheus scrape configuration."""
    from scripts.prometheus_conf import write_prometheus_conf
    from scripts.supervisor import write_supervisor_conf

    path = write_supervisor_conf(config, args.run_dir)
    write_prometheus_conf(config, args.run_dir)
    print(path)


def cmd_wait_schema(args, config):
    """Wait until each named service's database is at this code's migration head (or
    past it: a rollback). The init container of every service pod in deploy/k8s/ runs
    it, so a pod of new code never serves before the migration Job has migrated its
    database, and the pods themselves never migrate (two replicas would race)."""
    uris = database_uris(config)
    unknown = set(args.services) - set(uris)
    if unknown:
        sys.exit(f"wait-schema: no database for {', '.join(sorted(unknown))}")
    pending = {service: "not checked yet" for service in args.services or uris}
    deadline = time.monotonic() + args.timeout
    while True:
        for service in sorted(pending):
            try:
                state = admin.schema_state(service, uris[service])
            except Exception as exc:  # noqa: BLE001 - unreachable, or no database yet
                first_line = (str(exc).strip().splitlines() or [""])[0]
                state = f"{type(exc).__name__}: {first_line}"
            if state in ("current", "ahead"):
                print(f"{service}: schema {state}", flush=True)
                del pending[service]
            else:
                pending[service] = state
        if not pending:
            return
        if time.monotonic() > deadline:
            print(
                f"schema not migrated after {args.timeout:g}s: "
                + ", ".join(f"{name} ({state})" for name, state in sorted(pending.items()))
                + " (has the migration Job run? `python scripts/manage.py migrate`)",
                file=sys.stderr,
            )
            sys.exit(1)
        time.sleep(args.interval)


def gateway_urls(config):
    urls = []
    for address in config["GATEWAY_ADDRESSES"]:
        host, port = str(address).rsplit(":", 1)
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        urls.append(f"http://{host}:{port}")
    return urls


def cmd_wait(args, config):
    """Wait until every gateway answers /health and every service answers an RPC ping."""
    from scripts.readiness import wait_until_ready

    pending = wait_until_ready(
        config, gateway_urls=gateway_urls(config), timeout=args.timeout, interval=0.5
    )
    if pending:
        print(
            f"not ready after {args.timeout}s: {', '.join(pending)} (see `make logs`)",
            file=sys.stderr,
        )
        sys.exit(1)
    for url in gateway_urls(config):
        print(f"gateway ready: {url}/api/...")
    print(auth_notice(config))


def auth_notice(config):
    """What `make up` says about who may call the API (gateway/authz.py)."""
    from gateway.authz import auth_mode, describe

    mode = auth_mode(config)
    if mode == "off":
        return (
            "auth: off (AUTH_MODE): every route is open to anyone who reaches the "
            "gateways; AUTH_MODE=jwt make restart, then make token ROLE=admin"
        )
    if mode == "tokens":
        return "auth: static bearer tokens (API_TOKENS) on write routes"
    # builds the verifier as a gateway does: a bad key setting fails `make up` here, and
    # without any key this is where the development secret is created (and said so)
    return f"auth: {describe(config)}; make token ROLE=admin | CUSTOMER=<id>"


def cmd_ping(args, config):
    from scripts.readiness import ping

    ok = ping(config, args.service, args.timeout)
    print(f"{args.service}: {'pong' if ok else 'no answer'}")
    sys.exit(0 if ok else 1)


def cmd_ports(args, config):
    """Each process `make up` runs and where it answers HTTP (its /health, /ready and
    /metrics): a gateway on its API address, a service process on its ops listener."""
    from scripts.supervisor import metrics_targets

    for service, addresses in metrics_targets(config).items():
        for index, address in enumerate(addresses):
            name = (
                f"gateway-{address.rsplit(':', 1)[1]}-0"
                if service == "gateway"
                else f"{service}-{index}"
            )
            role = (
                "API, /health /ready /metrics"
                if service == "gateway"
                else "/health /ready /metrics"
            )
            print(f"{name:24s} http://{address:22s} {role}")


def cmd_token(args, config):
    """Print a bearer JWT for local use (AUTH_MODE=jwt): the admin's or a customer's,
    HS256 with AUTH_JWT_SECRET, else the development secret the gateways use."""
    from gateway import authz

    if not args.role and args.customer is None:
        sys.exit("token: --role admin or --customer <id>")
    print(authz.mint(config, admin=args.role == "admin", customer_id=args.customer, ttl=args.ttl))


def cmd_broker_user(args, config):
    """As the broker's administrator (``--admin-uri``, default ``$RABBIT_ADMIN_URI``: the
    management API, ``http://admin:pw@host:15672``): the vhost, user and password of
    AMQP_URI, with the shop's permissions only (common/broker_permissions.py). Retries
    until the management API answers (``--timeout``). Idempotent."""
    from urllib.parse import unquote, urlsplit

    import requests

    from common import broker_permissions

    admin = args.admin_uri or os.environ.get("RABBIT_ADMIN_URI")
    if not admin:
        sys.exit("broker-user: --admin-uri or RABBIT_ADMIN_URI (the management API as admin)")
    amqp = urlsplit(config["AMQP_URI"].split(";")[0])
    user, password = unquote(amqp.username or ""), unquote(amqp.password or "")
    vhost = unquote(amqp.path[1:]) or "/"
    if user == "guest" or user == urlsplit(admin).username:
        sys.exit(f"broker-user: AMQP_URI's user is {user!r}: give the shop a user of its own")
    deadline = time.monotonic() + args.timeout
    while True:
        try:
            broker_permissions.apply(
                admin, vhost, user, password, default_queue_type=args.default_queue_type
            )
            break
        except (requests.RequestException, broker_permissions.ManagementError) as exc:
            starting = not isinstance(exc, broker_permissions.ManagementError) or exc.status >= 500
            if not starting or time.monotonic() > deadline:  # e.g. 401: a wrong password
                sys.exit(f"broker-user: {exc}")
            time.sleep(2)
    print(f"RabbitMQ: user {user} on vhost {vhost}, the shop's permissions only")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="config file (default: config.yml)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("setup", help="create the three roles and databases").set_defaults(
        func=cmd_setup
    )
    migrate = sub.add_parser("migrate", help="alembic upgrade head, each service")
    migrate.add_argument(
        "--allow-ahead",
        action="store_true",
        help="leave a database migrated by newer code as it is (a rollback), not fail",
    )
    migrate.add_argument(
        "--phase",
        choices=admin.PHASES,
        help="expand: up to the first pending contract migration (the running release "
        "keeps working); contract: to head (default: head)",
    )
    migrate.set_defaults(func=cmd_migrate)
    upgrade = sub.add_parser(
        "upgrade",
        help="rolling upgrade of the running `make up` stack: expand migrations, then "
        "each process restarted in turn (orders, products, customers, gateways)",
    )
    upgrade.add_argument("--run-dir", default=os.path.join(ROOT, ".run"))
    upgrade.add_argument(
        "--timeout", type=float, default=60, help="seconds each process has to be ready"
    )
    upgrade.set_defaults(func=cmd_upgrade)
    seed = sub.add_parser("seed", help="fake customers and products (faker)")
    seed.add_argument("--customers", type=int, default=100)
    seed.add_argument("--products", type=int, default=100)
    seed.set_defaults(func=cmd_seed)
    conf = sub.add_parser("supervisor-conf", help="write the supervisord configuration")
    conf.add_argument("--run-dir", default=os.path.join(ROOT, ".run"))
    conf.set_defaults(func=cmd_supervisor_conf)
    sub.add_parser("ports", help="each process's HTTP address").set_defaults(func=cmd_ports)
    wait = sub.add_parser("wait", help="wait until gateways and services answer")
    wait.add_argument("--timeout", type=float, default=90)
    wait.set_defaults(func=cmd_wait)
    ping_cmd = sub.add_parser("ping", help="RPC ping one service")
    ping_cmd.add_argument("service")
    ping_cmd.add_argument("--timeout", type=float, default=5)
    ping_cmd.set_defaults(func=cmd_ping)
    schema = sub.add_parser(
        "wait-schema", help="wait until the services' databases are migrated (k8s init)"
    )
    schema.add_argument(
        "services",
        nargs="*",
        help=f"any of {', '.join(admin.SERVICES_WITH_DATABASE)} (default: all)",
    )
    schema.add_argument("--timeout", type=float, default=600)
    schema.add_argument("--interval", type=float, default=2)
    schema.set_defaults(func=cmd_wait_schema)
    broker = sub.add_parser(
        "broker-user", help="the AMQP_URI's vhost and user, with the shop's permissions only"
    )
    broker.add_argument("--admin-uri", help="management API as admin (default: $RABBIT_ADMIN_URI)")
    broker.add_argument(
        "--default-queue-type",
        choices=["classic", "quorum"],
        help="of a vhost it creates (default: the broker's)",
    )
    broker.add_argument(
        "--timeout",
        type=float,
        default=120,
        help="seconds to retry while the management API does not answer",
    )
    broker.set_defaults(func=cmd_broker_user)
    token = sub.add_parser("token", help="print a local bearer JWT (AUTH_MODE=jwt)")
    token.add_argument("--role", choices=["admin"], help="the admin (scope shop:admin)")
    token.add_argument("--customer", type=int, help="a customer's id (its sub)")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    token.set_defaults(func=cmd_token)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.func(args, load_config(args.config))


if __name__ == "__main__":
    main()
