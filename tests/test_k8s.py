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
import shutil
import subprocess
import sys

import jsonschema
import kubernetes_validate
import pytest
import yaml
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from common import admin
from common.config import ROOT
from tests.deploy_commands import check_command

K8S = os.path.join(ROOT, "deploy", "k8s")
CONFIG = os.path.join(ROOT, "config.yml")
BASE_CONFIG = os.path.join(K8S, "base", "config.yml")
OVERLAYS = ("operators", "external")
NAMESPACE = "shop"
# The oldest Kubernetes the manifests need (matchLabelKeys in a topology spread, enabled
# by default from 1.27; unhealthyPodEvictionPolicy from 1.27) and a recent one.
KUBERNETES_VERSIONS = ("1.27.0", "1.37.0")
# The operators' objects (RabbitmqCluster; CloudNativePG's Cluster and Database): no
# schema here, test_operator_objects checks the fields we rely on.
OPERATOR_API_VERSIONS = {"rabbitmq.com/v1beta1", "postgresql.cnpg.io/v1"}
# supervisord's stopwaitsecs, under which `make down` is tested, and a gateway's drain:
# its longest call bound (ORDERS_RPC_TIMEOUT, 20 s) + 1 s.
STOP_WAIT_SECONDS = 45
GATEWAY_DRAIN_SECONDS = 21
# config.yml variables read only by `make up` (supervisord, its scrape configuration)
# and the benchmark, never by a process in Kubernetes: their defaults on this machine
# are right where they are read.
LOCAL_ONLY = {
    "RABBIT_MANAGEMENT_URI", "GATEWAY_ADDRESSES", "OPS_HTTP_HOST",
    "CUSTOMERS_OPS_PORT", "PRODUCTS_OPS_PORT", "ORDERS_OPS_PORT",
    "CUSTOMERS_PROCESSES", "PRODUCTS_PROCESSES", "ORDERS_PROCESSES",
    # `make setup` and the test suite's only: in a cluster, the roles and databases are
    # the operator's (overlays/operators/postgres.yaml) or the DBA's (overlays/external).
    "DB_ADMIN_URI",
}
CONFIG_VARIABLE = re.compile(r"\$\{(\w+)(?::([^}]*))?\}")
REFERENCE = re.compile(r"\$\((\w+)\)")


def kubectl():
    path = shutil.which(os.environ.get("KUBECTL") or "kubectl")
    if not path:
        pytest.fail(
            "kubectl not found: it renders deploy/k8s (`kubectl kustomize`). Install "
            "kubectl 1.27 or later (the Kubernetes project's release binary or its apt "
            "repository; kustomize is built in), or set KUBECTL to its path"
        )
    return path


@functools.cache
def render(overlay):
    """The objects `kubectl apply -k deploy/k8s/overlays/<overlay>` would send."""
    result = subprocess.run(
        [kubectl(), "kustomize", os.path.join(K8S, "overlays", overlay)],
        capture_output=True, text=True, timeout=120,
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
        kind, ref = ("Secret", source["secretRef"]) if "secretRef" in source else (
            "ConfigMap", source["configMapRef"])
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
        secret = [obj for obj in of_kind(objects, "Secret") if obj["metadata"]["name"] == ref["name"]]
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
                        f"{context}: no {part}.{resource}")


def test_every_command_names_a_real_service_and_reads_the_configmap(overlay):
    objects = render(overlay)
    (configmap,) = [cm for cm in of_kind(objects, "ConfigMap")
                    if cm["metadata"]["name"].startswith("shop-config")]
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
                "or add it to LOCAL_ONLY here if no process in Kubernetes reads it")
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
                name for name, number in ports.items() if number == port}, context


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
        ports = {port["containerPort"] for c in containers(deployment, init=False)
                 for port in c.get("ports", [])}
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
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway"}
    assert hpa["spec"]["minReplicas"] == 2 <= hpa["spec"]["maxReplicas"]
    budgets = of_kind(objects, "PodDisruptionBudget")
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        matching = [pdb for pdb in budgets
                    if pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()]
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
            "cp config.yml deploy/k8s/base/config.yml")


def test_configmap_is_config_yml(overlay):
    (configmap,) = [cm for cm in of_kind(render(overlay), "ConfigMap")
                    if cm["metadata"]["name"].startswith("shop-config-")]  # content hash
    with open(CONFIG) as stream:
        text = stream.read()
    assert configmap["data"] == {"config.yml": text}
    # every key a service reads, as a top-level key of the mounted file
    assert set(yaml.safe_load(configmap["data"]["config.yml"])) == set(yaml.safe_load(text))


# --- the overlays' backing services ------------------------------------------------------


def test_external_overlay_reads_example_uris_from_its_secret():
    objects = render("external")
    assert not [obj for obj in objects if obj["apiVersion"] in OPERATOR_API_VERSIONS]
    (secret,) = of_kind(objects, "Secret")
    assert secret["metadata"]["name"].startswith("shop-backing-")  # content hash
    amqp, databases = connection_variables()
    values = {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}
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
    settings = [line.split("#")[0].replace(" ", "")
                for line in rabbit["spec"]["rabbitmq"]["additionalConfig"].splitlines()]
    assert "default_queue_type=quorum" in settings  # every Nameko queue a quorum queue

    (cluster,) = of_kind(objects, "Cluster")
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1"
    assert cluster["spec"]["instances"] == 2  # a primary and a replica
    initdb = cluster["spec"]["bootstrap"]["initdb"]
    databases = {initdb["database"]}
    for database in of_kind(objects, "Database"):
        assert database["apiVersion"] == "postgresql.cnpg.io/v1"
        assert database["spec"]["cluster"]["name"] == cluster["metadata"]["name"]
        assert database["spec"]["owner"] == initdb["owner"]
        databases.add(database["spec"]["name"])

    # What every pod connects to is what these objects make: the operators' Services
    # and the Secrets they generate (<cluster>-default-user, <cluster>-app).
    rabbit_name, db_name = rabbit["metadata"]["name"], cluster["metadata"]["name"]
    amqp, uri_variables = connection_variables()
    seen = set()
    for workload in workloads(objects):
        for container in containers(workload):
            env = resolved_env(container, objects)
            for variable in required_variables(container):
                if variable == amqp:
                    assert env[amqp] == (
                        f"pyamqp://secret.{rabbit_name}-default-user.username:"
                        f"secret.{rabbit_name}-default-user.password@{rabbit_name}:5672/")
                    continue
                url = make_url(env[variable])
                assert (url.username, url.password, url.host, url.port) == (
                    f"secret.{db_name}-app.username", f"secret.{db_name}-app.password",
                    f"{db_name}-rw", 5432), where(workload, container)
                seen.add(url.database)
    assert seen == databases == {f"shop_{service}" for service in uri_variables}


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
        [sys.executable, "scripts/manage.py", "wait-schema", "customers",
         "--timeout", "0", "--interval", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "CUSTOMERS_DB_URI": closed},
    )
    assert result.returncode == 1
    assert "customers (OperationalError" in result.stderr
    assert "migration Job" in result.stderr
