"""The data `make bench` scenarios run on: ``Api`` prepares it through the gateway's HTTP
API (products, customers; retried, since it must exist before a measurement), and
``Catalog`` looks at the products table (count, random id samples) and tops it up with
``scripts/manage.py seed``; ``write_ids`` hands ids to the wrk scripts.
"""

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from bench.settings import ROOT, HarnessError, products_db_uri


def write_ids(workdir, name, ids):
    """``ids`` one per line in ``workdir/name`` (what the wrk scripts read); its path."""
    path = os.path.join(workdir, name)
    with open(path, "w") as f:
        f.write("\n".join(map(str, ids)) + "\n")
    return path


class Api:
    def __init__(self, settings):
        self.settings = settings
        self.session = requests.Session()

    def _check(self, response, expected):
        if response.status_code != expected:
            raise HarnessError(
                f"{response.request.method} {response.request.path_url} answered "
                f"{response.status_code} (expected {expected}): {response.text[:300]}"
            )
        return response.json()

    @staticmethod
    def _retrying(call):
        """Preparation requests are retried on 5xx and connection errors (3 tries, 1 s
        apart): the data must exist before the measurement, whatever happens meanwhile."""
        for attempt in range(3):
            try:
                response = call()
                if response.status_code < 500 or attempt == 2:
                    return response
            except requests.ConnectionError:
                if attempt == 2:
                    raise
            time.sleep(1)

    def post(self, path, body, session=None):
        session = session or self.session
        response = self._retrying(
            lambda: session.post(self.settings.url(path), json=body, timeout=30)
        )
        return self._check(response, 201)

    def get(self, path):
        response = self._retrying(lambda: self.session.get(self.settings.url(path), timeout=30))
        return self._check(response, 200)

    def create_products(self, count, stock, label):
        def create(index):
            with requests.Session() as session:
                return self.post(
                    "/api/products",
                    {
                        "name": f"bench {label} {self.settings.tag} {index}",
                        "price": "1.00",
                        "stock": stock,
                    },
                    session,
                )["id"]

        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(create, range(count)))

    def create_customer(self, label):
        return self.post(
            "/api/customers",
            {"name": f"bench {label}", "email": f"bench.{label}.{self.settings.tag}@example.com"},
        )["id"]

    def stock(self, product_id):
        return self.get(f"/api/products/{product_id}")["stock"]


class Catalog:
    """Read-only look at the products table (count, id samples); seeding by scripts/seed.py."""

    def __init__(self):
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        # A new connection per query: nothing stale if PostgreSQL restarts meanwhile.
        self.engine = create_engine(products_db_uri(), poolclass=NullPool)

    def _query(self, sql, **params):
        from sqlalchemy import exc, text

        for attempt in range(5):
            try:
                with self.engine.connect() as conn:
                    return conn.execute(text(sql), params).fetchall()
            except exc.OperationalError as error:
                if attempt == 4:
                    raise HarnessError(f"products database: {error}") from None
                time.sleep(2)

    def count(self):
        return self._query("SELECT count(*) FROM products")[0][0]

    def sample_ids(self, limit=10_000):
        rows = self._query("SELECT id FROM products ORDER BY random() LIMIT :n", n=limit)
        return [row[0] for row in rows]

    def ensure(self, at_least):
        present = self.count()
        if present >= at_least:
            print(f"  products present: {present:,} (>= {at_least:,}, nothing to seed)")
            return present
        missing = at_least - present
        print(f"  products present: {present:,}; seeding {missing:,} with scripts/seed.py ...")
        started = time.monotonic()
        for attempt in range(2):  # once more if the database went away meanwhile
            result = subprocess.run(
                [
                    sys.executable,
                    os.path.join(ROOT, "scripts", "manage.py"),
                    "seed",
                    "--customers",
                    "0",
                    "--products",
                    str(at_least - self.count()),
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=600,
            )
            if result.returncode == 0:
                break
            if attempt == 1:
                raise HarnessError(
                    f"seeding failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
                )
            time.sleep(3)
        present = self.count()
        print(f"  seeded in {time.monotonic() - started:.1f}s; products present: {present:,}")
        return present

    def close(self):
        self.engine.dispose()
