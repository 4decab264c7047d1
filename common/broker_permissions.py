"""The RabbitMQ permissions of the shop's broker user: the one place that says them.

RabbitMQ grants a user three regular expressions per vhost, matched (unanchored, hence
the ``^...$`` here) against the name of the queue or exchange an operation touches:

* configure: declare or delete a queue or an exchange;
* write: publish to an exchange, and be the queue (or exchange) end of a binding;
* read: consume or get from a queue, purge it, and be the exchange end of a binding.

What Nameko 2.14 touches in this stack (nameko/rpc.py, events.py, standalone/rpc.py,
standalone/events.py; common/broker.py):

* the RPC exchange ``nameko-rpc`` (topic): declared by every proxy and consumer, published
  to by every call and every reply (replies are routed by the caller's reply key);
* a service's queue ``rpc-<service>`` (customers, products, orders; the gateway serves no
  RPC), bound to ``nameko-rpc`` with ``<service>.*``;
* a reply queue per proxy-holding container, ``rpc.reply-<owner>-<uuid4>``, bound to
  ``nameko-rpc`` with its uuid: ``<owner>`` is the service holding the proxy (the gateway,
  orders, through common/rpc.py's ``BoundedRpcProxy`` which is a Nameko ``RpcProxy``), or
  ``standalone_rpc_proxy`` for ``ClusterRpcProxy`` (``nameko shell``,
  ``scripts/manage.py ping``, ``make seed``, the readiness checks of the tooling);
* an event exchange ``<service>.events`` (topic), declared by its dispatcher and by every
  handler of its events (customers dispatches ``customer_created``);
* an event handler's queue ``evt-<source>-<event_type>--<service>.<method>`` (the
  service-pool handler type, the only one the shop uses; orders handles
  ``customer_created``), bound to ``<source>.events`` with the event type;
* the default exchange (``amq.default`` for permission checks): common/broker.py's
  ``BrokerWatch`` publishes its probe there, to a routing key no queue has. Write on it lets
  the user route to any queue of the vhost by name, which ``nameko-rpc`` already lets it do
  for every queue it may read, so it is granted to write alone.

Nothing else: no server-named (``amq.gen-``) queue, no ``amq.*`` exchange but the default,
and only the shop's service names (common/registry.py; a caller that is not a service
goes in ``RPC_CALLERS``) (tests/test_broker_permissions.py checks the regexes against what the
service classes declare). RabbitMQ does not tell queues from exchanges in these rules: the
user could declare an exchange named ``rpc-orders``, which changes nothing it could not do.

:func:`apply` sets them through the management HTTP API (vhost, user, permissions), as the
docker-compose one-shot ``rabbitmq-setup`` does (``scripts/manage.py broker-user``);
``scripts/rabbit_cluster.py`` sets the same on the local cluster with ``rabbitmqctl``, and
deploy/k8s/overlays/operators/rabbitmq-topology.yaml holds them for the Topology Operator
(tests/test_k8s.py compares).
"""

import re
from urllib.parse import quote, urlsplit, urlunsplit

import requests

from common import registry

SERVICES = registry.SERVICES  # each serves RPC and may dispatch events
RPC_CALLERS = SERVICES + (registry.GATEWAY, "standalone_rpc_proxy")  # hold reply queues

_SERVICE = "(" + "|".join(SERVICES) + ")"
_CALLER = "(" + "|".join(RPC_CALLERS) + ")"
_UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_WORD = "[a-z0-9_]+"  # an event type, a handler method

EXCHANGES = ("nameko-rpc", rf"{_SERVICE}\.events")
QUEUES = (
    rf"rpc-{_SERVICE}",
    rf"rpc\.reply-{_CALLER}-{_UUID}",
    rf"evt-{_SERVICE}-{_WORD}--{_SERVICE}\.{_WORD}",
)
DEFAULT_EXCHANGE = r"amq\.default"


def _anchored(*alternatives):
    return "^(" + "|".join(alternatives) + ")$"


CONFIGURE = _anchored(*EXCHANGES, *QUEUES)
WRITE = _anchored(*EXCHANGES, *QUEUES, DEFAULT_EXCHANGE)
READ = _anchored(*EXCHANGES, *QUEUES)
PERMISSIONS = {"configure": CONFIGURE, "write": WRITE, "read": READ}

TIMEOUT = 10.0  # seconds, every management API call


def allowed(permission: str, name: str) -> bool:
    """Whether RabbitMQ would grant ``permission`` on the queue or exchange ``name``."""
    return re.search(PERMISSIONS[permission], name) is not None


def _split(management_uri):
    """``(base URL without credentials, (user, password))`` of ``http://user:pw@host:port``."""
    parts = urlsplit(management_uri)
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    return base, (parts.username or "", parts.password or "")


class ManagementError(RuntimeError):
    """The management API refused a call (``status``: its HTTP status)."""

    def __init__(self, method: str, url: str, response: requests.Response) -> None:
        super().__init__(
            f"RabbitMQ management API: {method} {url}: {response.status_code} {response.text[:300]}"
        )
        self.status = response.status_code


def _call(session, method, url, timeout, **kwargs):
    response = session.request(method, url, timeout=timeout, **kwargs)
    if response.status_code >= 400:
        raise ManagementError(method, url, response)
    return response


def apply(
    management_uri: str,
    vhost: str,
    user: str,
    password: str,
    default_queue_type: str | None = None,
    timeout: float = TIMEOUT,
) -> None:
    """As the administrator of ``management_uri`` (``http://admin:pw@host:15672``): create
    ``vhost`` (its default queue type ``default_queue_type`` if given: a vhost that exists
    keeps its queues, whose type cannot change), create or update ``user`` with
    ``password`` and no tags (no management access), and give it exactly
    :data:`PERMISSIONS` on ``vhost``. Idempotent."""
    base, auth = _split(management_uri)
    quoted_vhost, quoted_user = quote(vhost, safe=""), quote(user, safe="")
    with requests.Session() as session:
        session.auth = auth
        # RabbitMQ 3.x reads "defaultqueuetype" (what its UI sends), later versions also
        # "default_queue_type"; a key it does not know is ignored.
        vhost_body = (
            {"defaultqueuetype": default_queue_type, "default_queue_type": default_queue_type}
            if default_queue_type
            else {}
        )
        _call(session, "PUT", f"{base}/api/vhosts/{quoted_vhost}", timeout, json=vhost_body)
        _call(
            session,
            "PUT",
            f"{base}/api/users/{quoted_user}",
            timeout,
            json={"password": password, "tags": ""},
        )
        _call(
            session,
            "PUT",
            f"{base}/api/permissions/{quoted_vhost}/{quoted_user}",
            timeout,
            json=PERMISSIONS,
        )


def remove(
    management_uri: str,
    vhost: str | None = None,
    user: str | None = None,
    timeout: float = TIMEOUT,
) -> None:
    """Delete ``user`` and / or ``vhost`` (a missing one is no error)."""
    base, auth = _split(management_uri)
    with requests.Session() as session:
        session.auth = auth
        for kind, name in (("users", user), ("vhosts", vhost)):
            if name is not None:
                response = session.delete(
                    f"{base}/api/{kind}/{quote(name, safe='')}", timeout=timeout
                )
                if response.status_code not in (204, 404):
                    raise ManagementError("DELETE", response.url, response)


def rabbitmqctl_args(vhost: str, user: str) -> list[str]:
    """``rabbitmqctl`` arguments setting the same permissions (configure, write, read)."""
    return ["set_permissions", "-p", vhost, user, CONFIGURE, WRITE, READ]
