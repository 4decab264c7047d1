"""`make seed`: fake customers and products written straight into their databases.

Bulk inserts in batches (one statement per batch), so 100k rows take seconds; emails are
made unique by construction and a clash with an existing row is skipped, so seeding twice
adds rows instead of failing.
"""

import random
import sys
import time
from decimal import Decimal

from faker import Faker
from sqlalchemy import create_engine
from sqlalchemy.dialects.postgresql import insert

from customers.models import Customer
from products.models import Product

BATCH = 5000


def fake_customers(faker, count, run_tag):
    for index in range(count):
        name = faker.name()
        local = "".join(c for c in name.lower() if c.isalnum() or c == " ").replace(" ", ".")
        yield {"name": name, "email": f"{local}.{run_tag}{index}@{faker.free_email_domain()}"}


def fake_products(faker, count):
    for _ in range(count):
        yield {
            "name": f"{faker.color_name()} {faker.word()} {faker.word()}"[:200],
            "price": Decimal(random.randint(50, 50000)) / 100,
            "stock": random.randint(0, 500),
        }


def insert_in_batches(uri, table, rows, total, label):
    engine = create_engine(uri)
    done = 0
    started = time.monotonic()
    try:
        with engine.begin() as conn:
            batch = []
            for row in rows:
                batch.append(row)
                if len(batch) == BATCH:
                    conn.execute(insert(table).on_conflict_do_nothing(), batch)
                    done += len(batch)
                    batch = []
                    progress(label, done, total)
            if batch:
                conn.execute(insert(table).on_conflict_do_nothing(), batch)
                done += len(batch)
            progress(label, done, total, end="\n")
    finally:
        engine.dispose()
    print(f"{label}: {done} rows in {time.monotonic() - started:.1f}s")


def progress(label, done, total, end=""):
    width = 30
    filled = int(width * done / total) if total else width
    sys.stdout.write(f"\r{label:<10} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}{end}")
    sys.stdout.flush()


def seed(uris, customers, products):
    faker = Faker()
    run_tag = format(int(time.time()), "x")
    insert_in_batches(
        uris["customers"],
        Customer.__table__,
        fake_customers(faker, customers, run_tag),
        customers,
        "customers",
    )
    insert_in_batches(
        uris["products"], Product.__table__, fake_products(faker, products), products, "products"
    )
