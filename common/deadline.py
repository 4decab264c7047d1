"""A request's deadline, set once when the gateway accepts it and carried by every RPC.

A client's bound is counted from when its request arrived, not from when some call
started: time spent waiting for a gateway worker, in a RabbitMQ queue or in a service's
prefetch buffer counts against it. So the gateway stamps each request with an absolute
deadline (arrival + its route's bound, :func:`from_arrival`), which travels in nameko's
context data (the ``nameko.deadline`` header of every call, :data:`DEADLINE_KEY`):

* a caller waits for a reply at most until the deadline, and a nested call never gets
  more than what is left of its caller's (:func:`call_timeout`);
* the request message expires in RabbitMQ at the deadline (AMQP ``expiration``): a
  queue drops what nobody waits for any more, without a consumer spending a thing on it;
* a service drops a request whose deadline has passed before doing any work (what was
  already prefetched, or redelivered after a restart): :func:`expired`.

The deadline is wall-clock time (``time.time()``, seconds since the epoch), the one clock
hosts share: across machines their clocks must agree (NTP: within milliseconds), as
every deadline-propagating RPC system assumes (gRPC sends a relative timeout instead, but
a message can sit in a queue for an unknown time: only an absolute time sees that).
"""

import time
from collections.abc import Callable, Mapping
from typing import Any

DEADLINE_KEY = "deadline"  # in nameko's context data: epoch seconds, a float

Clock = Callable[[], float]


def from_arrival(arrived: float, bound: float) -> float:
    """The deadline of a request that arrived at ``arrived`` (epoch seconds) and must be
    answered within ``bound`` seconds."""
    return arrived + bound


def deadline_of(context_data: Mapping[str, Any]) -> float | None:
    """The deadline carried in ``context_data``, or None (a call from outside the shop:
    ``nameko shell``, a timer). Anything that is not a number is ignored."""
    value = context_data.get(DEADLINE_KEY)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def call_timeout(context_data: Mapping[str, Any], bound: float, clock: Clock = time.time) -> float:
    """Seconds a call made now may wait: its own ``bound``, or what is left of the
    caller's deadline if that ends first (0 or less: it has passed)."""
    inherited = deadline_of(context_data)
    return bound if inherited is None else min(bound, inherited - clock())


def expired(context_data: Mapping[str, Any], clock: Clock = time.time) -> float | None:
    """Seconds since the deadline in ``context_data`` passed, or None while it has not
    (or there is none)."""
    deadline = deadline_of(context_data)
    if deadline is None:
        return None
    late = clock() - deadline
    return late if late >= 0 else None
