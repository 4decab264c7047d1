"""Dependencies of the gateway beyond the services' RPC proxies."""
from nameko.rpc import RpcProxy

from common.rpc import BoundedServiceProxy

DEFAULT_READY_TIMEOUT = 2.0


class ReadinessProbes(RpcProxy):
    """``{service: proxy}`` whose calls are bounded by ``READY_TIMEOUT`` (short: a
    readiness check must answer fast even when a service hangs)."""

    def __init__(self, services):
        super().__init__(target_service=None)
        self.services = services

    def get_dependency(self, worker_ctx):
        timeout = float(self.container.config.get("READY_TIMEOUT", DEFAULT_READY_TIMEOUT))
        return {
            service: BoundedServiceProxy(
                worker_ctx, service, self.rpc_reply_listener, timeout=timeout
            )
            for service in self.services
        }


def rabbitmq_status(checks):
    """RabbitMQ is reachable unless a probe could not even publish (``reason: broker``)."""
    broker_down = any(check.get("reason") == "broker" for check in checks.values())
    return {"status": "service_unavailable" if broker_down else "ok"}
