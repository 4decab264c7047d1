"""deploy/k8s/, without a cluster.

Each overlay is rendered by `kubectl kustomize` (kubectl embeds kustomize); every built-in
object is validated offline against the Kubernetes OpenAPI schemas (kubernetes-validate);
then our own rules are checked on what would be applied: what no schema says (every
container probed, limited and non-root; every setting config.yml reads provided; every
command a real service), and the fields we rely on in the operators' objects, which have
no schema here.
"""

import base64
import functools
import os
import re
import subprocess
import sys

import jsonschema
import kubernetes_validate
import pytest
import yaml
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from common import admin, broker_permissions
from common.config import ROOT
from scripts import prometheus_rule
from tests.deploy_commands import check_command, tool

K8S = os.path.join(ROOT, "deploy", "k8s")
CONFIG = os.path.join(ROOT, "config.yml")
BASE_CONFIG = os.path.join(K8S, "base", "config.yml")
OVERLAYS = ("operators", "external")
NAMESPACE = "shop"
# The oldest Kubernetes the manifests need (matchLabelKeys in a topology spread, enabled
# by default from 1.27; unhealthyPodEvictionPolicy from 1.27) and a recent one.
KUBERNETES_VERSIONS = ("1.27.0", "1.37.0")
# The operators' objects (RabbitmqCluster; CloudNativePG's Cluster and Database; the
# Prometheus Operator's PrometheusRule): no schema here, test_operator_objects and
# test_the_prometheus_rule_is_the_repository_s_rule_files check the fields we rely on.
OPERATOR_API_VERSIONS = {
    "rabbitmq.com/v1beta1",
    "postgresql.cnpg.io/v1",
    "monitoring.coreos.com/v1",
}
# supervisord's stopwaitsecs, under which `make down` is tested, and a gateway's drain:
# its longest call bound (ORDERS_RPC_TIMEOUT, 20 s) + 1 s.
STOP_WAIT_SECONDS = 45
GATEWAY_DRAIN_SECONDS = 21
# config.yml variables read only by `make up` (supervisord, its scrape configuration)
# and the benchmark, never by a process in Kubernetes: their defaults on this machine
# are right where they are read.
LOCAL_ONLY = {
    "RABBIT_MANAGEMENT_URI",
    "GATEWAY_ADDRESSES",
    "OPS_HTTP_HOST",
    "CUSTOMERS_OPS_PORT",
    "PRODUCTS_OPS_PORT",
    "ORDERS_OPS_PORT",
    "CUSTOMERS_PROCESSES",
    "PRODUCTS_PROCESSES",
    "ORDERS_PROCESSES",
    # `make setup` and the test suite's only: in a cluster, the roles and databases are
    # the operator's (overlays/operators/postgres.yaml) or the DBA's (overlays/external).
    "DB_ADMIN_URI",
}
CONFIG_VARIABLE = re.compile(r"\$\{(\w+)(?::([^}]*))?\}")
REFERENCE = re.compile(r"\$\((\w+)\)")


def kubectl():
    return tool(
        "kubectl",
        "KUBECTL",
        "it renders deploy/k8s (`kubectl kustomize`). Install kubectl 1.27 or later (the "
        "Kubernetes project's release binary or its apt repository; kustomize is built in)",
    )


@functools.cache
def render(overlay):
    """The objects `kubectl apply -k deploy/k8s/overlays/<overlay>` would send."""
    result = subprocess.run(
        [kubectl(), "kustomize", os.path.join(K8S, "overlays", overlay)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"kubectl kustomize {overlay}:\n{result.stderr}"
    return [obj for obj in yaml.safe_load_all(result.stdout) if obj]


@pytest.fixture(params=OVERLAYS)
def overlay(request):
    return request.param


def of_kind(objects, kind):
    return [obj for obj in objects if obj["kind"] == kind]


def named(objects, kind, name):
    found = [obj for obj in of_kind(objects, kind) if obj["metadata"]["name"] == name]
    assert len(found) == 1, f"one {kind} {name} expected, found {len(found)}"
    return found[0]


def workloads(objects):
    return of_kind(objects, "Deployment") + of_kind(objects, "Job")


def pod_spec(workload):
    return workload["spec"]["template"]["spec"]


def containers(workload, init=True):
    spec = pod_spec(workload)
    return spec["containers"] + (spec.get("initContainers", []) if init else [])


def where(workload, container):
    return f"{workload['kind']} {workload['metadata']['name']}, container {container['name']}"


class RawConfigLoader(yaml.SafeLoader):
    """YAML as written: once anything has loaded config.yml the nameko way
    (common.config), SafeLoader itself substitutes ``${VAR:default}``; this loader keeps
    its own copy of the resolvers, without nameko's."""


RawConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "!env_var"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def read_raw(stream):
    return yaml.load(stream, Loader=RawConfigLoader)  # noqa: S506 - a SafeLoader


def config_variables():
    """``{variable: default or None}`` of every ``${VAR:default}`` config.yml reads."""
    found = {}

    def walk(node):
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, str):
            for match in CONFIG_VARIABLE.finditer(node):
                found[match.group(1)] = match.group(2)  # None: no default

    with open(CONFIG) as stream:
        walk(read_raw(stream))  # the raw file: comments are not values
    return found


def variable_of(setting):
    """The variable a config.yml value such as ``${AMQP_URI:...}`` reads."""
    match = CONFIG_VARIABLE.fullmatch(setting)
    assert match, f"config.yml: {setting!r} is not one ${{VAR:default}}"
    return match.group(1)


@functools.cache
def connection_variables():
    """``("AMQP_URI", {service: "<SERVICE>_DB_URI"})``, as config.yml names them."""
    with open(CONFIG) as stream:
        raw = read_raw(stream)
    databases = {
        service: variable_of(raw["DB_URIS"][f"{service}:Base"])
        for service in admin.SERVICES_WITH_DATABASE
    }
    return variable_of(raw["AMQP_URI"]), databases


def required_variables(container):
    """The connection variables this container's process reads."""
    amqp, databases = connection_variables()
    kind, target, _ = check_command(container["command"])
    if kind == "nameko":
        return {amqp} | ({databases[target.name]} if target.name in databases else set())
    if target.command == "migrate":
        return set(databases.values())
    if target.command == "wait-schema":
        return {databases[service] for service in target.services or databases}
    raise AssertionError(f"no rule for {container['command']}")


def env_sources(container, objects):
    """Names the container's envFrom brings, from the rendered Secrets / ConfigMaps."""
    names = set()
    for source in container.get("envFrom", []):
        kind, ref = (
            ("Secret", source["secretRef"])
            if "secretRef" in source
            else ("ConfigMap", source["configMapRef"])
        )
        found = [obj for obj in of_kind(objects, kind) if obj["metadata"]["name"] == ref["name"]]
        assert found, f"envFrom {kind} {ref['name']} is not in the overlay"
        obj = found[0]
        keys = set(obj.get("data") or {}) | set(obj.get("stringData") or {})
        names |= {source.get("prefix", "") + key for key in keys}
    return names


def resolved_env(container, objects):
    """The container's variables as the kubelet would set them; a value from a Secret the
    overlay does not hold (the operators') reads ``secret.<name>.<key>``."""
    values = {}
    for source in container.get("envFrom", []):
        ref = source["secretRef"]
        secret = [
            obj for obj in of_kind(objects, "Secret") if obj["metadata"]["name"] == ref["name"]
        ]
        for key, value in (secret[0].get("data") or {}).items() if secret else ():
            values[source.get("prefix", "") + key] = base64.b64decode(value).decode()
    for entry in container.get("env", []):
        if "value" in entry:
            values[entry["name"]] = REFERENCE.sub(lambda m: values[m.group(1)], entry["value"])
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            values[entry["name"]] = f"secret.{ref['name']}.{ref['key']}"
    return values


# --- rendering and schemas ---------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_builtin_objects_match_the_kubernetes_schemas(overlay, version):
    for obj in render(overlay):
        if obj["apiVersion"] in OPERATOR_API_VERSIONS:
            continue  # test_operator_objects
        try:  # an apiVersion / kind it has no schema for fails too: nothing unchecked
            kubernetes_validate.validate(obj, version, strict=True)
        except jsonschema.ValidationError as exc:  # kubernetes_validate's derive from it
            path = "/".join(str(part) for part in exc.path)
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {exc.message} at {path}")


def test_everything_lands_in_the_shop_namespace(overlay):
    objects = render(overlay)
    assert [ns["metadata"]["name"] for ns in of_kind(objects, "Namespace")] == [NAMESPACE]
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == NAMESPACE, obj["metadata"]["name"]


# --- every pod -----------------------------------------------------------------------


def test_every_container_runs_unprivileged_and_limited(overlay):
    """Also what the "restricted" Pod Security Standard asks (overlays' namespace.yaml)."""
    for workload in workloads(render(overlay)):
        spec = pod_spec(workload)
        pod_security = spec.get("securityContext", {})
        assert pod_security.get("runAsNonRoot") is True, workload["metadata"]["name"]
        assert pod_security.get("runAsUser", 0) != 0
        assert pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault"
        assert spec.get("automountServiceAccountToken") is False
        for container in containers(workload):
            context = where(workload, container)
            security = container.get("securityContext", {})
            assert security.get("allowPrivilegeEscalation") is False, context
            assert security.get("readOnlyRootFilesystem") is True, context
            assert security.get("capabilities", {}).get("drop") == ["ALL"], context
            assert not security.get("capabilities", {}).get("add"), context
            assert not security.get("privileged"), context
            assert security.get("runAsUser", 1) != 0, context
            for part in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    assert resource in container.get("resources", {}).get(part, {}), (
                        f"{context}: no {part}.{resource}"
                    )


def test_every_command_names_a_real_service_and_reads_the_configmap(overlay):
    objects = render(overlay)
    (configmap,) = [
        cm
        for cm in of_kind(objects, "ConfigMap")
        if cm["metadata"]["name"].startswith("shop-config")
    ]
    for workload in workloads(objects):
        volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
        for container in containers(workload):
            context = where(workload, container)
            kind, target, config = check_command(container["command"])
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            config = config or env.get("SHOP_CONFIG")  # scripts/manage.py reads it
            assert config, f"{context}: no configuration named"
            folder, filename = os.path.split(config)
            assert filename in configmap["data"], context
            mounts = [m for m in container.get("volumeMounts", []) if m["mountPath"] == folder]
            assert mounts and mounts[0].get("readOnly"), f"{context}: {folder} not mounted"
            volume = volumes[mounts[0]["name"]]
            assert volume["configMap"]["name"] == configmap["metadata"]["name"], context
            if kind == "nameko" and workload["kind"] == "Deployment":
                assert target.name == workload["metadata"]["name"], context


def test_every_setting_config_yml_reads_is_provided(overlay):
    """The ConfigMap is config.yml itself (test_configmap_is_config_yml). What it reads
    from the environment either has a default that is right in a cluster, or is set in
    every container that reads it: a default on this machine (127.0.0.1) is not."""
    amqp, databases = connection_variables()
    connection = {amqp, *databases.values()}
    for name, default in config_variables().items():
        on_this_machine = default is None or "127.0.0.1" in default or "localhost" in default
        if on_this_machine:
            assert name in connection | LOCAL_ONLY, (
                f"config.yml reads {name}, its default is this machine's: give it a value in "
                "deploy/k8s (the Secret shop-backing and overlays/operators/backing-*.yaml), "
                "or add it to LOCAL_ONLY here if no process in Kubernetes reads it"
            )
    objects = render(overlay)
    for workload in workloads(objects):
        for container in containers(workload):
            provided = {e["name"] for e in container.get("env", [])}
            provided |= env_sources(container, objects)
            missing = required_variables(container) - provided
            assert not missing, f"{where(workload, container)}: {sorted(missing)} not set"


def test_variable_references_follow_their_definition(overlay):
    """Kubernetes expands $(VAR) only from variables defined before it (envFrom, then
    earlier env entries); anything else stays a literal "$(VAR)" in the URI."""
    objects = render(overlay)
    for workload in workloads(objects):
        for container in containers(workload):
            defined = env_sources(container, objects)
            for entry in container.get("env", []):
                for name in REFERENCE.findall(entry.get("value", "")):
                    assert name in defined, f"{where(workload, container)}: {entry['name']}"
                defined.add(entry["name"])


# --- Deployments -----------------------------------------------------------------------


def test_every_deployment_is_probed_on_its_own_port(overlay):
    for deployment in of_kind(render(overlay), "Deployment"):
        for container in containers(deployment, init=False):
            context = where(deployment, container)
            ports = {port["name"]: port["containerPort"] for port in container.get("ports", [])}
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert probe in container, f"{context}: no {probe}"
                assert container[probe]["httpGet"]["port"] in ports, f"{context}: {probe}"
            # liveness is the process alone, never a dependency
            assert container["livenessProbe"]["httpGet"]["path"] == "/health", context
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            if deployment["metadata"]["name"] == "gateway":
                address = env["WEB_SERVER_ADDRESS"]
                assert container["readinessProbe"]["httpGet"]["path"] == "/health"
            else:
                address = env["OPS_HTTP_ADDRESS"]  # common/ops_http.py
                assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
                # /ready bounds each check by READY_TIMEOUT (2 s)
                assert container["readinessProbe"]["timeoutSeconds"] > 2
            port = int(address.rpartition(":")[2])
            assert container["livenessProbe"]["httpGet"]["port"] in {
                name for name, number in ports.items() if number == port
            }, context


def test_grace_period_outlasts_every_stop(overlay):
    for deployment in of_kind(render(overlay), "Deployment"):
        grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
        assert grace > STOP_WAIT_SECONDS, deployment["metadata"]["name"]
        for container in containers(deployment, init=False):
            pre_stop = container.get("lifecycle", {}).get("preStop")
            if pre_stop:  # the grace period counts the preStop too
                command = pre_stop["exec"]["command"]
                assert command[0] == "sleep"
                assert grace > int(command[1]) + GATEWAY_DRAIN_SECONDS
    gateway = named(render(overlay), "Deployment", "gateway")
    assert containers(gateway, init=False)[0]["lifecycle"]["preStop"]


def test_every_process_is_scraped(overlay):
    for deployment in of_kind(render(overlay), "Deployment"):
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == "/metrics"
        ports = {
            port["containerPort"]
            for c in containers(deployment, init=False)
            for port in c.get("ports", [])
        }
        assert int(annotations["prometheus.io/port"]) in ports


def test_replicas_budgets_and_the_gateway_autoscaler(overlay):
    objects = render(overlay)
    deployments = {d["metadata"]["name"]: d for d in of_kind(objects, "Deployment")}
    assert set(deployments) == {"gateway", "customers", "products", "orders"}
    for name in ("customers", "products", "orders"):
        assert deployments[name]["spec"]["replicas"] == 2
    # the autoscaler owns the gateway's count: a count in the Deployment would be reset
    # by every apply
    assert "replicas" not in deployments["gateway"]["spec"]
    (hpa,) = of_kind(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "gateway",
    }
    assert hpa["spec"]["minReplicas"] == 2 <= hpa["spec"]["maxReplicas"]
    budgets = of_kind(objects, "PodDisruptionBudget")
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        matching = [
            pdb
            for pdb in budgets
            if pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(matching) == 1, f"{name}: {len(matching)} PodDisruptionBudgets"
        assert matching[0]["spec"].get("maxUnavailable") == 1


def test_the_ingress_reaches_the_gateway_api_only(overlay):
    objects = render(overlay)
    gateway = named(objects, "Deployment", "gateway")
    service = named(objects, "Service", "gateway")
    labels = gateway["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    port_names = {p["name"] for c in containers(gateway) for p in c.get("ports", [])}
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= port_names
    (ingress,) = of_kind(objects, "Ingress")
    paths = [path for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]]
    # /metrics, /ready and /health stay inside the cluster
    assert [(path["path"], path["pathType"]) for path in paths] == [("/api", "Prefix")]
    for path in paths:
        backend = path["backend"]["service"]
        assert backend["name"] == "gateway"
        assert backend["port"]["name"] in {port["name"] for port in service["spec"]["ports"]}


def test_migrations_run_in_one_job_and_service_pods_wait_for_them(overlay):
    objects = render(overlay)
    (job,) = of_kind(objects, "Job")
    assert pod_spec(job)["restartPolicy"] == "Never"
    (migrate,) = containers(job)
    assert check_command(migrate["command"])[1].command == "migrate"
    for deployment in of_kind(objects, "Deployment"):
        name = deployment["metadata"]["name"]
        for container in containers(deployment, init=False):
            kind, target, _ = check_command(container["command"])
            assert kind == "nameko", f"{name}: Deployments never migrate (replicas race)"
        init = pod_spec(deployment).get("initContainers", [])
        if name in admin.SERVICES_WITH_DATABASE:
            (schema,) = init
            args = check_command(schema["command"])[1]
            assert (args.command, args.services) == ("wait-schema", [name])
        else:
            assert not init


# --- configuration ---------------------------------------------------------------------


def test_base_config_is_the_repository_config():
    with open(CONFIG, "rb") as ours, open(BASE_CONFIG, "rb") as copy:
        assert copy.read() == ours.read(), (
            "deploy/k8s/base/config.yml differs from config.yml: "
            "cp config.yml deploy/k8s/base/config.yml"
        )


def test_configmap_is_config_yml(overlay):
    (configmap,) = [
        cm
        for cm in of_kind(render(overlay), "ConfigMap")
        if cm["metadata"]["name"].startswith("shop-config-")
    ]  # content hash
    with open(CONFIG) as stream:
        text = stream.read()
    assert configmap["data"] == {"config.yml": text}
    # every key a service reads, as a top-level key of the mounted file
    assert set(yaml.safe_load(configmap["data"]["config.yml"])) == set(yaml.safe_load(text))


# --- the overlays' backing services ------------------------------------------------------


def test_external_overlay_reads_example_uris_from_its_secret():
    objects = render("external")
    assert not [obj for obj in objects if obj["apiVersion"] in OPERATOR_API_VERSIONS]
    amqp, databases = connection_variables()
    # shop-backing (AMQP_URI) and one Secret per service (its database URI alone), each
    # name with a hash of its content
    secrets = {
        secret["metadata"]["name"].rpartition("-")[0]: secret
        for secret in of_kind(objects, "Secret")
    }
    assert set(secrets) == {"shop-backing", *(f"shop-{s}-db" for s in databases)}
    values = {}
    for name, secret in secrets.items():
        keys = {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}
        service = name.removeprefix("shop-").removesuffix("-db")
        assert set(keys) == ({databases[service]} if service in databases else {amqp}), name
        values |= keys
    assert set(values) == {amqp, *databases.values()}
    for service, variable in databases.items():
        url = make_url(values[variable])
        assert url.get_backend_name() == "postgresql" and url.host.endswith(".example.internal")
        assert url.database == f"shop_{service}"
    assert ".example.internal" in values[amqp]


def test_operator_objects():
    objects = render("operators")
    (rabbit,) = of_kind(objects, "RabbitmqCluster")
    assert rabbit["apiVersion"] == "rabbitmq.com/v1beta1"
    assert rabbit["spec"]["replicas"] == 3
    settings = [
        line.split("#")[0].replace(" ", "")
        for line in rabbit["spec"]["rabbitmq"]["additionalConfig"].splitlines()
    ]
    assert "default_queue_type=quorum" in settings  # every Nameko queue a quorum queue

    (cluster,) = of_kind(objects, "Cluster")
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1"
    assert cluster["spec"]["instances"] == 2  # a primary and a replica
    initdb = cluster["spec"]["bootstrap"]["initdb"]
    databases = {initdb["database"]}
    for database in of_kind(objects, "Database"):
        assert database["apiVersion"] == "postgresql.cnpg.io/v1"
        assert database["spec"]["cluster"]["name"] == cluster["metadata"]["name"]
        databases.add(database["spec"]["name"])  # owners: test_managed_roles_...

    # What every pod connects to is what these objects make: the operators' Services
    # and Secrets (<user>-user-credentials; <cluster>-<service>-user, each service's
    # role's, which CloudNativePG reads: test_managed_roles_are_unprivileged_...).
    rabbit_name, db_name = rabbit["metadata"]["name"], cluster["metadata"]["name"]
    # the broker: the Topology Operator's User (Secret <user>-user-credentials) on its Vhost
    (user,), (vhost,) = of_kind(objects, "User"), of_kind(objects, "Vhost")
    credentials = f"{user['metadata']['name']}-user-credentials"
    amqp, uri_variables = connection_variables()
    seen = set()
    for workload in workloads(objects):
        for container in containers(workload):
            env = resolved_env(container, objects)
            for variable in required_variables(container):
                if variable == amqp:
                    assert env[amqp] == (
                        f"pyamqp://secret.{credentials}.username:"
                        f"secret.{credentials}.password@{rabbit_name}:5672/"
                        f"{vhost['spec']['name']}"
                    )
                    continue
                url = make_url(env[variable])
                (service,) = [s for s, v in uri_variables.items() if v == variable]
                assert (url.username, url.password, url.host, url.port) == (
                    f"secret.{db_name}-{service}-user.username",
                    f"secret.{db_name}-{service}-user.password",
                    f"{db_name}-rw",
                    5432,
                ), where(workload, container)
                seen.add(url.database)
    assert seen == databases == {f"shop_{service}" for service in uri_variables}


def test_the_prometheus_rule_is_the_repository_s_rule_files():
    """One source for the alerting rules: the operators overlay applies a PrometheusRule
    whose groups are exactly deploy/prometheus/rules/*.yml (the committed manifest is
    what scripts/prometheus_rule.py writes), in the shop's namespace."""
    with open(prometheus_rule.MANIFEST) as stream:
        assert stream.read() == prometheus_rule.render(), (
            "deploy/k8s/overlays/operators/prometheus-rule.yaml is out of date: run "
            "python scripts/prometheus_rule.py"
        )
    (rule,) = of_kind(render("operators"), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == NAMESPACE
    assert rule["spec"]["groups"] == prometheus_rule.rule_groups()
    names = [group["name"] for group in rule["spec"]["groups"]]
    assert len(names) == len(set(names)) and len(names) >= 2, names
    for group in rule["spec"]["groups"]:
        for item in group["rules"]:
            assert set(item) <= {"alert", "record", "expr", "for", "labels", "annotations"}
            assert ("alert" in item) != ("record" in item), item
    assert of_kind(render("external"), "PrometheusRule") == []


# --- least privilege in PostgreSQL (one role per service) ----------------------------------


READ_REPLICA_VARIABLE = "PRODUCTS_READ_DB_URI"  # config.yml: products' reads on a replica


def database_variables():
    """Every variable config.yml reads a PostgreSQL URI from, and whose database it is."""
    _, databases = connection_variables()
    owner_of = {variable: service for service, variable in databases.items()}
    return owner_of | {READ_REPLICA_VARIABLE: "products"}


def cluster_roles(objects):
    """``{Secret name: role}`` of the CloudNativePG Cluster's managed roles (empty in an
    overlay without one): the Secret whose username and password the role logs in with."""
    roles = {}
    for cluster in of_kind(objects, "Cluster"):
        for role in cluster["spec"].get("managed", {}).get("roles", []):
            roles[role["passwordSecret"]["name"]] = role["name"]
    return roles


def database_secrets(objects):
    """``{Secret name: {service, ...}}``: every Secret holding a database credential, and
    the services' databases it opens. The operators overlay: each managed role's Secret
    (the role shop_<service>); the external one: each Secret with a database URI."""
    found = {name: {role.removeprefix("shop_")} for name, role in cluster_roles(objects).items()}
    variables = database_variables()
    for secret in of_kind(objects, "Secret"):
        services = {variables[key] for key in secret.get("data") or {} if key in variables}
        if services:
            found[secret["metadata"]["name"]] = services
    return found


def secrets_read(container):
    """The names of every Secret a container's environment comes from."""
    names = {
        source["secretRef"]["name"]
        for source in container.get("envFrom", [])
        if "secretRef" in source
    }
    names |= {
        entry["valueFrom"]["secretKeyRef"]["name"]
        for entry in container.get("env", [])
        if "secretKeyRef" in entry.get("valueFrom", {})
    }
    return names


def services_reachable(workload):
    """The databases a workload's pods are meant to open: a service its own, the
    migration Job the three, the gateway none."""
    name = workload["metadata"]["name"]
    if workload["kind"] == "Job":
        return set(admin.SERVICES_WITH_DATABASE)
    return {name} & set(admin.SERVICES_WITH_DATABASE)


def test_each_pod_holds_its_own_database_credentials_only(overlay):
    """A service's pods (the service and its schema wait) can read one database
    credential, its own role's; the migration Job the three; the gateway none. And each
    URI a pod is given names that role and that database."""
    objects = render(overlay)
    secrets = database_secrets(objects)
    roles = cluster_roles(objects)
    variables = database_variables()
    assert set().union(*secrets.values()) == set(admin.SERVICES_WITH_DATABASE), secrets
    deployments = {d["metadata"]["name"] for d in of_kind(objects, "Deployment")}
    assert "gateway" in deployments and set(admin.SERVICES_WITH_DATABASE) <= deployments
    for workload in workloads(objects):
        expected = services_reachable(workload)
        for container in containers(workload):
            context = where(workload, container)
            read = secrets_read(container)
            opened = set().union(*(secrets[name] for name in read if name in secrets))
            assert opened == expected, f"{context}: credentials of {sorted(opened)}"
            env = resolved_env(container, objects)
            given = {variable for variable in env if variable in variables}
            assert {variables[variable] for variable in given} == expected, (
                f"{context}: {sorted(given)}"
            )
            for variable in given:
                service = variables[variable]
                url = make_url(env[variable])
                secret, _, key = url.username.removeprefix("secret.").rpartition(".")
                role = roles[secret] if url.username.startswith("secret.") else url.username
                assert (role, url.database) == (f"shop_{service}", f"shop_{service}"), (
                    f"{context}: {variable}"
                )
                if url.username.startswith("secret."):  # its password from the same Secret
                    assert key == "username"
                    assert url.password == f"secret.{secret}.password", f"{context}: {variable}"


def hba_method(rules, database, user):
    """The method of the first pg_hba rule matching a TCP connection of ``user`` to
    ``database``: the Cluster's own rules, then CloudNativePG's default (a
    ``host all all all`` rule). Its fixed rules come first but name only its own
    users (streaming_replica, cnpg_pooler_pgbouncer) over TCP."""
    for rule in [*rules, "host all all all scram-sha-256"]:
        kind, databases, users, _address, method, *_ = rule.split()
        if kind not in ("host", "hostssl"):
            continue
        if {"all", database} & set(databases.split(",")) and {"all", user} & set(users.split(",")):
            return method
    raise AssertionError("no rule")


def test_managed_roles_are_unprivileged_and_each_owns_one_database():
    objects = render("operators")
    (cluster,) = of_kind(objects, "Cluster")
    spec = cluster["spec"]
    roles = {role["name"]: role for role in spec["managed"]["roles"]}
    services = admin.SERVICES_WITH_DATABASE
    assert set(roles) == {f"shop_{service}" for service in services}
    for name, role in roles.items():
        assert role.get("ensure", "present") == "present", name
        assert role.get("login") is True, name
        for attribute in ("superuser", "createdb", "createrole", "replication", "bypassrls"):
            assert role.get(attribute, False) is False, f"{name}: {attribute}"
        assert not role.get("inRoles"), f"{name}: member of {role['inRoles']}"
        assert role["passwordSecret"]["name"] == f"shop-db-{name.removeprefix('shop_')}-user"
    secrets = [role["passwordSecret"]["name"] for role in roles.values()]
    assert len(set(secrets)) == len(secrets), "two roles share a Secret"

    databases = of_kind(objects, "Database")
    owners = {}
    for database in databases:
        assert database["spec"]["cluster"]["name"] == cluster["metadata"]["name"]
        assert database["spec"].get("ensure", "present") == "present"
        owners.setdefault(database["spec"]["owner"], []).append(database["spec"]["name"])
    # each role owns exactly one database, its own; nothing else owns one
    assert owners == {f"shop_{service}": [f"shop_{service}"] for service in services}

    # initdb's database is one of them, owned by its role, with that role's Secret: no
    # generated `app` role or database, no Secret shop-db-app
    initdb = spec["bootstrap"]["initdb"]
    assert owners[initdb["owner"]] == [initdb["database"]]
    assert initdb["secret"]["name"] == roles[initdb["owner"]]["passwordSecret"]["name"]

    # CONNECT from PUBLIC, as pg_hba.conf: over the network each database takes its
    # owner alone; every other role, the superuser included, is rejected
    rules = spec["postgresql"]["pg_hba"]
    for service in services:
        database = f"shop_{service}"
        assert hba_method(rules, database, f"shop_{service}") == "scram-sha-256"
        for other in [*roles, "postgres", "app", "someone"]:
            if other != f"shop_{service}":
                assert hba_method(rules, database, other) == "reject", (database, other)


def test_no_shared_database_credential_is_left():
    """No pod reads the Secret CloudNativePG generates for a single application owner
    (<cluster>-app, the old role `shop`), and no credential is in the overlay."""
    objects = render("operators")
    (cluster,) = of_kind(objects, "Cluster")
    app_secret = f"{cluster['metadata']['name']}-app"
    for workload in workloads(objects):
        for container in containers(workload):
            assert app_secret not in secrets_read(container), where(workload, container)
    assert app_secret not in yaml.safe_dump_all(objects)
    assert not of_kind(objects, "Secret")  # the operator of the cluster creates them
    for role in cluster["spec"]["managed"]["roles"]:
        assert role["name"] != "shop" and "password" not in role


def test_the_shop_broker_user_has_the_shop_permissions_only():
    """The Messaging Topology Operator's Vhost, User and Permission (rabbitmq-topology.yaml):
    the permissions are common/broker_permissions.py's, verbatim, and the user is not an
    administrator."""
    objects = render("operators")
    (rabbit,) = of_kind(objects, "RabbitmqCluster")
    topology = of_kind(objects, "Vhost") + of_kind(objects, "User") + of_kind(objects, "Permission")
    assert len(topology) == 3, [obj["kind"] for obj in topology]
    for obj in topology:
        assert obj["apiVersion"] == "rabbitmq.com/v1beta1"
        assert obj["spec"]["rabbitmqClusterReference"] == {"name": rabbit["metadata"]["name"]}
    vhost, user, permission = topology
    assert vhost["spec"]["name"] == "shop"
    assert vhost["spec"]["defaultQueueType"] == "quorum"  # before any queue is declared
    assert not user["spec"].get("tags")  # no management access
    assert "importCredentialsSecret" not in user["spec"]  # generated: <name>-user-credentials
    assert permission["spec"]["vhost"] == vhost["spec"]["name"]
    assert permission["spec"]["userReference"] == {"name": user["metadata"]["name"]}
    assert "user" not in permission["spec"]
    assert permission["spec"]["permissions"] == broker_permissions.PERMISSIONS


def test_no_pod_uses_the_brokers_default_user(overlay):
    """The Cluster Operator's <cluster>-default-user is the broker's administrator: the
    Topology Operator's, never a pod's."""
    for workload in workloads(render(overlay)):
        spec = pod_spec(workload)
        names = [
            volume["secret"]["secretName"]
            for volume in spec.get("volumes", [])
            if "secret" in volume
        ]
        for container in containers(workload):
            names += [
                source["secretRef"]["name"]
                for source in container.get("envFrom") or []
                if "secretRef" in source
            ]
            names += [
                entry["valueFrom"]["secretKeyRef"]["name"]
                for entry in container.get("env") or []
                if "secretKeyRef" in entry.get("valueFrom", {})
            ]
            for entry in container.get("env") or []:
                assert "guest" not in entry.get("value", ""), where(workload, container)
        assert not [name for name in names if name.endswith("-default-user")], (
            workload["metadata"]["name"],
            names,
        )


# --- the schema wait (scripts/manage.py wait-schema) ---------------------------------------


@pytest.mark.parametrize("service", admin.SERVICES_WITH_DATABASE)
def test_schema_wait_compares_the_database_with_this_code(service):
    script = ScriptDirectory.from_config(admin.alembic_config(service))
    heads = script.get_heads()
    revisions = [revision.revision for revision in script.walk_revisions()]  # newest first
    assert admin.compare_heads(script, heads) == "current"
    assert admin.compare_heads(script, ()) == "behind"  # never migrated
    if len(revisions) > 1:
        assert admin.compare_heads(script, (revisions[-1],)) == "behind"
    # a revision this code does not know: newer code migrated it (a rollback)
    assert admin.compare_heads(script, ("0123456789ab",)) == "ahead"


def test_schema_wait_gives_up_after_its_timeout_saying_why():
    closed = "postgresql+psycopg2://nobody@127.0.0.1:9/shop_customers"  # discard: refused
    result = subprocess.run(
        [
            sys.executable,
            "scripts/manage.py",
            "wait-schema",
            "customers",
            "--timeout",
            "0",
            "--interval",
            "0",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "CUSTOMERS_DB_URI": closed},
    )
    assert result.returncode == 1
    assert "customers (OperationalError" in result.stderr
    assert "migration Job" in result.stderr
