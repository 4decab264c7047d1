"""``shop_reconciler_oldest_hold_age_seconds`` (products/reconcile.py): the age of the
oldest hold still ``reserved``, read by each reconciler tick on the real test database
and ageing between ticks; what ShopHoldsNotReconciled (deploy/prometheus/) alerts on."""

from functools import partial

import pytest
from nameko.testing.services import worker_factory
from prometheus_client import REGISTRY
from sqlalchemy import text

from products import reconcile
from products.service import ProductsService

SETTINGS = reconcile.Settings(age=0, interval=5, batch=100)
GAUGE = "shop_reconciler_oldest_hold_age_seconds"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def insert_hold(engine, ref, status, age_seconds):
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO order_holds (order_ref, status, created_at, updated_at) "
                "VALUES (:ref, :status, now() - make_interval(secs => :age), "
                "now() - make_interval(secs => :age))"
            ),
            {"ref": ref, "status": status, "age": age_seconds},
        )


@pytest.fixture
def tick(db_wrapper):
    """``tick(order_states, oldest)``: one reconciler tick on the products test database."""
    db = db_wrapper("products")

    def run(order_states, oldest):
        return reconcile.reconcile(
            partial(db.get_session, close_on_exit=True), order_states, SETTINGS, oldest=oldest
        )

    return run


def test_the_oldest_reserved_hold_is_read_each_tick_and_ages_in_between(tick, clean_databases):
    engine = clean_databases["products"]
    clock = Clock()
    oldest = reconcile.OldestHold(clock)
    assert oldest.seconds() == 0  # never measured

    tick(lambda refs: {}, oldest)
    assert oldest.seconds() == 0  # no hold at all

    insert_hold(engine, "settled", "confirmed", 7200)  # not reserved: not counted
    insert_hold(engine, "old", "reserved", 600)
    insert_hold(engine, "young", "reserved", 30)
    tick(lambda refs: {ref: "pending" for ref in refs}, oldest)  # both left reserved
    assert 600 <= oldest.seconds() < 610
    clock.now += 45  # no tick meanwhile (a stopped reconciler): the hold only gets older
    assert 645 <= oldest.seconds() < 655

    # "old" is confirmed by this tick; the age was read at its start
    tick(lambda refs: {"old": "confirmed", "young": "pending"}, oldest)
    assert 600 <= oldest.seconds() < 610
    tick(lambda refs: {"young": "pending"}, oldest)  # the next tick sees "young" only
    assert 30 <= oldest.seconds() < 40


def test_the_service_timer_drives_the_gauge_every_process_serves(
    db_wrapper, base_config, clean_databases
):
    insert_hold(clean_databases["products"], "stuck", "reserved", 900)
    worker = worker_factory(
        ProductsService, db=db_wrapper("products"), config={**base_config, "HOLD_CONFIRM_AGE": 0}
    )
    worker.orders.order_states.return_value = {"stuck": "pending"}
    worker.reconcile_holds()
    age = REGISTRY.get_sample_value(GAUGE, {"service": "products"})
    assert 900 <= age < 960, age
    worker.orders.order_states.return_value = {"stuck": "confirmed"}
    worker.reconcile_holds()  # confirms it
    worker.reconcile_holds()  # sees none left
    assert REGISTRY.get_sample_value(GAUGE, {"service": "products"}) == 0
