"""Dependencies of the gateway beyond the services' RPC proxies."""

import logging

from eventlet import GreenPool
from nameko.extensions import DependencyProvider

from common.errors import Reason, ShopError
from common.rpc import BoundedRpcProxy, BoundedServiceProxy, broker_status
from common.settings import settings_of


class Readiness:
    """What a worker's ``self.readiness`` is: :meth:`check` runs every probe at once."""

    def __init__(self, probes, broker_watch):
        self.probes = probes  # {service: bounded proxy}
        self.broker_watch = broker_watch

    def check(self):
        """``(ready, checks)``: ``checks`` maps ``rabbitmq`` and each service to
        ``{"status": "ok" | error code, ...}``. Each service check is bounded by
        ``READY_TIMEOUT`` and they run concurrently; while the broker blocks publishers
        none is sent and every one fails at once (``reason: broker_blocked``)."""
        checks = dict(GreenPool().imap(self._check, self.probes.items()))
        ready = all(check["status"] == "ok" for check in checks.values())
        rabbitmq = broker_status(self.broker_watch)
        if rabbitmq["status"] == "ok" and any(
            check.get("reason") == Reason.BROKER for check in checks.values()
        ):  # a probe could not even publish
            rabbitmq = {"status": "service_unavailable", "reason": Reason.BROKER}
        return ready and rabbitmq["status"] == "ok", {"rabbitmq": rabbitmq, **checks}

    @staticmethod
    def _check(named_probe):
        name, probe = named_probe
        try:
            return name, {"status": "ok", **probe.check_ready()}
        except ShopError as exc:
            reason = exc.details.get("reason")  # broker, broker_blocked, database, or none
            return name, {
                "status": exc.error,
                "message": exc.message,
                **({"reason": reason} if reason else {}),
            }


class ReadinessProbes(BoundedRpcProxy):
    """:class:`Readiness` over ``services``, whose calls are bounded by ``READY_TIMEOUT``
    (short: a readiness check must answer fast even when a service hangs)."""

    def __init__(self, services):
        super().__init__(target_service=None)
        self.services = services

    def get_dependency(self, worker_ctx):
        timeout = settings_of(self.container.config).ready_timeout
        probes = {
            service: BoundedServiceProxy(
                worker_ctx,
                service,
                self.rpc_reply_listener,
                timeout=timeout,
                broker_watch=self.broker_watch,
            )
            for service in self.services
        }
        return Readiness(probes, self.broker_watch)


class AuthSettings(DependencyProvider):
    """Checks ``AUTH_MODE`` when the gateway starts (a wrong value fails the start) and
    logs how requests are authenticated; in jwt mode without a configured key this is
    where the development secret is created (gateway/authz.py)."""

    def setup(self):
        from gateway import authz

        logging.getLogger("gateway.authz").info(authz.describe(self.container.config))

    def get_dependency(self, worker_ctx):
        return None
