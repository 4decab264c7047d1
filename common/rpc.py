"""RPC plumbing shared by the services: a bounded proxy and the ``rpc`` entrypoint.

Nameko 2.x's ``RpcProxy`` waits for a reply forever: a call to a service whose queue exists
but has no live consumer hangs the caller (and a gateway hung that way ignores SIGTERM).
:class:`BoundedRpcProxy` puts every call, publish included, under one deadline
(``RPC_TIMEOUT`` seconds in config.yml, ``RPC_TIMEOUTS`` per target service) and turns the failure modes
into errors of the shared hierarchy:

* no queue bound for the service (never started)  -> :class:`ServiceUnavailable` (503)
* no reply within the deadline                    -> :class:`GatewayTimeout` (504)
* the broker unreachable (publish fails)          -> :class:`ServiceUnavailable` (503)
"""
import eventlet
from kombu.exceptions import OperationalError as KombuOperationalError
from nameko.exceptions import UnknownService
from nameko.rpc import MethodProxy, RpcProxy, ServiceProxy, rpc as nameko_rpc

from common.errors import GatewayTimeout, ServiceUnavailable, ShopError

RPC_TIMEOUT_CONFIG_KEY = "RPC_TIMEOUT"
RPC_TIMEOUTS_CONFIG_KEY = "RPC_TIMEOUTS"  # per target service, overrides RPC_TIMEOUT
DEFAULT_RPC_TIMEOUT = 10.0


def call_bound(config, target_service):
    """Seconds a call to ``target_service`` may take: ``RPC_TIMEOUTS[target_service]``,
    else ``RPC_TIMEOUT``."""
    return float(
        (config.get(RPC_TIMEOUTS_CONFIG_KEY) or {}).get(target_service)
        or config.get(RPC_TIMEOUT_CONFIG_KEY, DEFAULT_RPC_TIMEOUT)
    )


def longest_call_bound(config):
    """The longest bound of any call made with ``config``, in seconds."""
    per_service = [float(value) for value in (config.get(RPC_TIMEOUTS_CONFIG_KEY) or {}).values()]
    return max([float(config.get(RPC_TIMEOUT_CONFIG_KEY, DEFAULT_RPC_TIMEOUT)), *per_service])


def rpc(fn):
    """``@rpc`` whose ShopErrors are expected outcomes (not logged as crashes)."""
    return nameko_rpc(expected_exceptions=ShopError)(fn)


class BoundedMethodProxy(MethodProxy):
    def __init__(self, *args, timeout, **options):
        self.timeout = timeout
        super().__init__(*args, **options)

    def __call__(self, *args, **kwargs):
        deadline = eventlet.Timeout(self.timeout)
        reply = None
        try:
            reply = self._call(*args, **kwargs)
            return reply.result()
        except eventlet.Timeout as exc:
            if exc is not deadline:
                raise
            self._forget(reply)
            raise GatewayTimeout(
                f"{self.service_name}.{self.method_name} did not answer within "
                f"{self.timeout:g}s",
                {"service": self.service_name, "timeout_seconds": self.timeout},
            ) from None
        except UnknownService:
            raise ServiceUnavailable(
                f"service {self.service_name!r} is not running",
                {"service": self.service_name},
            ) from None
        except (KombuOperationalError, ConnectionError) as exc:
            raise ServiceUnavailable(
                f"the message broker is unavailable: cannot call {self.service_name}",
                {"service": self.service_name, "reason": "broker"},
            ) from exc
        finally:
            deadline.cancel()

    def _forget(self, reply):
        """Drop the reply slot of a timed-out call so late replies do not pile up."""
        if reply is None:
            return
        events = self.reply_listener._reply_events
        for correlation_id, event in list(events.items()):
            if event is reply.reply_event:
                events.pop(correlation_id, None)


class BoundedServiceProxy(ServiceProxy):
    def __getattr__(self, name):
        return BoundedMethodProxy(
            self.worker_ctx, self.service_name, name, self.reply_listener, **self.options
        )


class BoundedRpcProxy(RpcProxy):
    """Drop-in for ``RpcProxy`` whose calls never wait longer than ``timeout`` seconds.

    ``timeout`` defaults to ``RPC_TIMEOUTS[target_service]``, else ``RPC_TIMEOUT``, from
    the container config.
    """

    def __init__(self, target_service, timeout=None, **options):
        self.timeout_override = timeout
        super().__init__(target_service, **options)

    def get_dependency(self, worker_ctx):
        timeout = float(
            self.timeout_override or call_bound(self.container.config, self.target_service)
        )
        return BoundedServiceProxy(
            worker_ctx, self.target_service, self.rpc_reply_listener,
            timeout=timeout, **self.options
        )
