"""The hold reconciler: settles the holds whose order is decided, and gives back the stock
of orders that will never be confirmed.

Every reservation leaves a ``reserved`` hold, and orders does not tell products when the
order commits (that would be a second RPC on every order). So every hold passes through
here once it is ``HOLD_CONFIRM_AGE`` old, and the reconciler must keep up with the peak
order rate, with any number of products processes sharing the work.

One tick (:func:`reconcile`) runs batches until no aged hold is left for it or its time
budget (one ``HOLD_CHECK_INTERVAL``) is spent. A batch is one transaction:

1. lock up to ``HOLD_CHECK_BATCH`` holds still ``reserved`` after ``HOLD_CONFIRM_AGE``,
   oldest first, ``FOR UPDATE SKIP LOCKED``: a hold another process is working on is
   skipped, so concurrent reconcilers take disjoint batches;
2. one ``orders.order_states`` RPC for the whole batch (bounded by ``RPC_TIMEOUT``, well
   under ``idle_in_transaction_session_timeout``);
3. one UPDATE for the whole batch: the holds of confirmed orders become ``confirmed``
   (never looked at again), every other one gets ``updated_at`` set to the time of the
   check, and no reconciler takes it again for ``HOLD_CONFIRM_AGE``: a tick selects only
   holds whose ``updated_at`` (equal to ``created_at`` until a first check) is older than
   its own start minus that age. That is what moves a tick past the holds of pending
   orders, and what keeps other processes off the holds this one is about to release.
   Checking a pending order's hold again only an age later costs nothing: orders'
   recovery resolves the order well before, and gives its stock back itself if the order
   fails; only marking the hold confirmed waits;
4. commit. Then the holds of rejected, failed, cancelled or unknown orders are released
   one by one (:func:`products.stock.release`, each in its own transaction): a release
   locks product rows before the hold, and taking product locks while the batch holds
   hold locks would invert the lock order of :mod:`products.stock`.

Each tick first reads the age of the oldest hold still ``reserved`` (the index's first
entry): ``shop_reconciler_oldest_hold_age_seconds`` shows it, ageing between ticks
(:class:`OldestHold`), so a reconciler that stopped ticking shows an ever older hold.

A failure (orders down, the database busy) rolls the current batch back and ends the
tick; the caller logs it (:mod:`common.ticks`). Earlier batches stay done; a hold whose
release failed is stamped, so it is taken again one ``HOLD_CONFIRM_AGE`` later. Every
step is idempotent: a hold released twice gives its stock back once; a confirmed hold is
never selected again.
"""

import logging
import time
from dataclasses import dataclass

from sqlalchemy import text

from common.metrics import HOLDS_RELEASED, OLDEST_HOLD_AGE
from common.settings import settings_of
from products import stock
from products.models import HoldStatus

log = logging.getLogger(__name__)

# Order states (from orders.order_states; None: no such order, and none can commit any
# more) whose stock must be given back. "pending" is left to orders' own recovery, and
# "in_flight" (its placing transaction is still open) to a later check. So is
# "cancelling" (a cancel under way, orders/flow.py): never confirmed here, its release is
# the cancel's own step, which a retry or orders' recovery finishes.
ORDER_STATES_WITHOUT_STOCK = {None, "rejected", "failed", "cancelled"}
# orders.order_states answers for at most this many order_refs per call.
MAX_BATCH = 1000

# Holds due for a check, oldest first. Served by ix_order_holds_status_created
# (status, created_at): an index range scan in created_at order, LIMIT after the locks.
AGED_HOLDS = text("""
    SELECT order_ref FROM order_holds
    WHERE status = :reserved
      AND created_at < now() - make_interval(secs => :age)
      AND updated_at < :checked_before
    ORDER BY created_at
    LIMIT :batch
    FOR UPDATE SKIP LOCKED
""")

# The batch's verdict in one statement: confirmed, or stamped as checked. The clock, not
# now() (the transaction's start): a tick that began during this batch's RPC must not
# see the stamp as older than its own start.
SETTLE = text("""
    UPDATE order_holds
    SET status = CASE WHEN order_ref = ANY(CAST(:confirmed AS text[]))
                      THEN :confirmed_status ELSE status END,
        updated_at = clock_timestamp()
    WHERE order_ref = ANY(CAST(:refs AS text[]))
""")


# The tick's fixed clock, and the age of the oldest reserved hold (NULL: none), read from
# ix_order_holds_status_created's first entry.
TICK_START = text("""
    SELECT now() - make_interval(secs => :age),
           (SELECT extract(epoch FROM now() - min(created_at)) FROM order_holds
            WHERE status = :reserved)
""")


class OldestHold:
    """The oldest reserved hold's age as last read (:meth:`saw`), ageing on ``clock``
    since: :meth:`seconds` is what the gauge shows (0: there was none)."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.age = None
        self.seen_at = 0.0

    def saw(self, age):
        self.age, self.seen_at = (None if age is None else float(age)), self.clock()

    def seconds(self):
        return 0.0 if self.age is None else self.age + self.clock() - self.seen_at


OLDEST_HOLD = OldestHold()  # this process's view, shown by the gauge at every scrape
OLDEST_HOLD_AGE.labels("products").set_function(OLDEST_HOLD.seconds)


@dataclass(frozen=True)
class Settings:
    age: float  # HOLD_CONFIRM_AGE: a hold is looked at this old, then this long after a check
    interval: float  # HOLD_CHECK_INTERVAL: a tick's time budget
    batch: int  # HOLD_CHECK_BATCH, at most MAX_BATCH

    @classmethod
    def from_config(cls, config):
        settings = settings_of(config)
        return cls(
            age=settings.hold_confirm_age,
            interval=settings.hold_check_interval,
            batch=min(settings.hold_check_batch, MAX_BATCH),
        )


@dataclass
class Tally:
    """What one tick did."""

    batches: int = 0
    confirmed: int = 0
    released: int = 0
    left: int = 0  # pending orders (or a state this version does not know): not changed
    seconds: float = 0.0

    @property
    def holds(self):
        return self.confirmed + self.released + self.left


def reconcile(get_session, order_states, settings, clock=time.monotonic, oldest=OLDEST_HOLD):
    """One tick: batches until no aged hold is due or ``settings.interval`` seconds are
    spent (see the module docstring). ``get_session()`` opens a session that commits on
    exit (nameko-sqlalchemy's); ``order_states(refs)`` is the orders RPC; ``oldest``
    (an :class:`OldestHold`) is told the oldest reserved hold's age at the tick's start.
    Returns a :class:`Tally`. Raises what the database or the RPC raises, after rolling
    the current batch back (earlier batches stay done)."""
    started = clock()
    tally = Tally()
    checked_before = None
    while True:
        with get_session() as session:
            if checked_before is None:  # the database's clock, fixed for the whole tick
                checked_before, oldest_age = session.execute(
                    TICK_START, {"age": settings.age, "reserved": HoldStatus.RESERVED}
                ).one()
                oldest.saw(oldest_age)
            refs = session.scalars(
                AGED_HOLDS,
                {
                    "reserved": HoldStatus.RESERVED,
                    "age": settings.age,
                    "checked_before": checked_before,
                    "batch": settings.batch,
                },
            ).all()
            if not refs:
                break
            states = order_states(refs)
            confirmed = [ref for ref in refs if states.get(ref) == "confirmed"]
            session.execute(
                SETTLE,
                {
                    "refs": refs,
                    "confirmed": confirmed,
                    "confirmed_status": HoldStatus.CONFIRMED,
                },
            )
        tally.batches += 1
        tally.confirmed += len(confirmed)
        for ref in refs:
            state = states.get(ref)
            if state in ORDER_STATES_WITHOUT_STOCK:
                log.warning(
                    "releasing stock held for order_ref %s (order %s)", ref, state or "unknown"
                )
                stock.with_hold_retry(get_session, stock.release, ref, "reconciler")
                HOLDS_RELEASED.inc()
                tally.released += 1
            elif state != "confirmed":
                tally.left += 1
        if len(refs) < settings.batch or clock() - started >= settings.interval:
            break
    tally.seconds = clock() - started
    if tally.holds:
        log.info(
            "reconciled %d holds in %d batches, %.2f s: %d confirmed, %d released, %d left",
            tally.holds,
            tally.batches,
            tally.seconds,
            tally.confirmed,
            tally.released,
            tally.left,
            extra={
                "event": "holds_reconciled",
                "confirmed": tally.confirmed,
                "released": tally.released,
                "left": tally.left,
            },
        )
    return tally
