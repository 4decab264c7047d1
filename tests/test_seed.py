"""`make seed` (scripts/seed.py) on the real test databases: the rows it promises, valid
for the services (unique lower-case emails, prices and stock in range), and a second run
adding rows instead of failing."""

from decimal import Decimal

from sqlalchemy import text

from scripts.seed import BATCH, seed


def counts(engines):
    with engines["customers"].connect() as conn:
        customers = conn.scalar(text("SELECT count(*) FROM customers"))
    with engines["products"].connect() as conn:
        products = conn.scalar(text("SELECT count(*) FROM products"))
    return customers, products


def test_seed_writes_valid_rows_and_can_run_twice(databases, clean_databases, capsys):
    customers = BATCH + 7  # more than one batch, and a partial one
    seed(databases, customers=customers, products=120)
    assert counts(clean_databases) == (customers, 120)
    with clean_databases["customers"].connect() as conn:
        emails = conn.scalars(text("SELECT email FROM customers")).all()
    assert len(set(emails)) == len(emails) and all(e == e.lower() and "@" in e for e in emails)
    with clean_databases["products"].connect() as conn:
        rows = conn.execute(text("SELECT name, price, stock FROM products")).all()
    assert all(
        name and Decimal("0.50") <= price <= Decimal("500.00") and 0 <= stock <= 500
        for name, price, stock in rows
    )
    assert "customers" in capsys.readouterr().out  # the progress bar and the summary

    seed(databases, customers=10, products=5)
    assert counts(clean_databases) == (customers + 10, 125)
