"""A local PostgreSQL primary and streaming read replica from the installed server:
`make replica-up`, `make replica-down`, `make replica-status`, and the test suite's
private pairs. Standard library only.

Each server is a private cluster (scripts/pg_cluster.py: its own data directory, port,
socket directory and log, trust on 127.0.0.1, stopped by pid). The replica is
``pg_basebackup -R -X stream`` of the primary, streaming through a physical replication
slot (``shop_replica``: the primary keeps the WAL a stopped replica still needs, capped
by ``max_slot_wal_keep_size``), a hot standby with ``hot_standby_feedback`` (its reads
are not cancelled by the primary's vacuum).

`make replica-up` runs the pair on 127.0.0.1:5440 (primary) and 5441 (replica), files
under ``.run/pg-replica/``; it is idempotent (a stopped server is started again, the
replica catches up) and prints the environment to give `make up`.

    python scripts/pg_replica.py up|down|status
"""

import contextlib
import os
import shutil
import sys

if __package__ in (None, ""):  # `python3 scripts/pg_replica.py`: import from the repository
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts.pg_cluster import (  # noqa: E402
    DB_USER,
    START_TIMEOUT,
    PgServer,
    prepare_dir,
    private_dir,
    run,
    tool,
)
from scripts.processes import free_port, wait_for  # noqa: E402

SLOT = "shop_replica"
PRIMARY_PORT, REPLICA_PORT = 5440, 5441
DATABASE = "shop_products"


class ReplicaPair:
    """A primary and its streaming replica under ``base_dir``."""

    def __init__(self, base_dir, primary_port=PRIMARY_PORT, replica_port=REPLICA_PORT):
        self.base_dir = os.path.abspath(base_dir)
        self.primary = PgServer(self.base_dir, "primary", primary_port)
        self.replica = PgServer(self.base_dir, "replica", replica_port)

    def up(self):
        """Start both (creating them the first time); idempotent. Returns self."""
        prepare_dir(self.base_dir)
        if not self.primary.initialized:
            self.primary.init()
        self.primary.start()
        if not self.replica.initialized:
            self._base_backup()
        self.replica.start()
        self.wait_streaming()
        return self

    def _base_backup(self):
        """The replica's data directory: a base backup of the primary, with the WAL
        streamed alongside (``-X stream``), ``standby.signal`` and ``primary_conninfo``
        written (``-R``) and the replication slot created (``-C -S``)."""
        with contextlib.suppress(RuntimeError):  # a slot left from an earlier replica
            self.primary.query(
                f"SELECT pg_drop_replication_slot('{SLOT}') "
                f"FROM pg_replication_slots WHERE slot_name = '{SLOT}'"
            )
        shutil.rmtree(self.replica.data_dir, ignore_errors=True)
        run(
            tool("pg_basebackup"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.primary.port),
            "-U",
            DB_USER,
            "-D",
            self.replica.data_dir,
            "-R",
            "-X",
            "stream",
            "-C",
            "-S",
            SLOT,
            "--no-sync",
            "-c",
            "fast",
        )
        self.replica.configure(self.replica.settings())

    def down(self):
        """Stop the replica, then the primary, by pid (their files are kept)."""
        self.replica.stop()
        self.primary.stop()

    def destroy(self):
        """Stop both and remove ``base_dir``."""
        self.down()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def streaming(self):
        """True once the primary has a streaming replication connection."""
        return (
            self.primary.scalar(
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
            )
            != "0"
        )

    def wait_streaming(self, timeout=START_TIMEOUT):
        wait_for(self.streaming, "the replica is not streaming from the primary", timeout, 0.2)

    def lsn_lag(self):
        """Bytes of WAL the primary wrote that the replica has not replayed yet."""
        current = self.primary.scalar("SELECT pg_current_wal_lsn()")
        return int(
            self.replica.scalar(f"SELECT pg_wal_lsn_diff('{current}', pg_last_wal_replay_lsn())")
        )

    def wait_caught_up(self, timeout=30):
        """Return once the replica replayed everything the primary wrote before the call."""
        target = self.primary.scalar("SELECT pg_current_wal_lsn()")
        wait_for(
            lambda: (
                int(
                    self.replica.scalar(
                        f"SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '{target}')"
                    )
                )
                >= 0
            ),
            "the replica did not catch up",
            timeout,
        )

    def env(self, database=DATABASE):
        """The environment lines for `make up`."""
        return (
            f"PRODUCTS_DB_URI={self.primary.uri(database)} "
            f"PRODUCTS_READ_DB_URI={self.replica.uri(database)}"
        )

    def status(self):
        lines = []
        for server in (self.primary, self.replica):
            pid = server.pid
            state = f"running (pid {pid})" if pid else "stopped"
            lines.append(
                f"{server.name:8} 127.0.0.1:{server.port}  {state}  data {server.data_dir}"
            )
        if self.primary.is_running():
            for row in self.primary.query(
                "SELECT application_name, state, sent_lsn, coalesce(replay_lsn::text, '-'), "
                "coalesce(replay_lag::text, '-') FROM pg_stat_replication"
            ):
                lines.append("replication: {} {} sent {} replayed {} replay lag {}".format(*row))
        if self.replica.is_running():
            recovery, lag = self.replica.query(
                "SELECT pg_is_in_recovery(), coalesce((now() - "
                "pg_last_xact_replay_timestamp())::text, '-')"
            )[0]
            lines.append(
                f"replica in recovery (read-only): {recovery == 't'}; last replayed "
                f"transaction {lag} ago"
            )
        return "\n".join(lines)


@contextlib.contextmanager
def private_replica_pair(prefix="shop-pg-"):
    """A running pair on free ports in a new directory of the system's temporary
    directory (reachable by the server user, unlike a root-only pytest tmp dir); both
    servers stopped by pid and the directory removed on the way out."""
    with private_dir(prefix) as base_dir:
        pair = ReplicaPair(base_dir, free_port(), free_port())
        try:
            yield pair.up()
        finally:
            pair.destroy()


def make_pair(run_dir):
    """The `make replica-up` pair: 5440 / 5441 under ``<run_dir>/pg-replica``."""
    return ReplicaPair(os.path.join(run_dir, "pg-replica"), PRIMARY_PORT, REPLICA_PORT)


def main(argv):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    pair = make_pair(os.path.join(root, ".run"))
    command = argv[1] if len(argv) > 1 else "status"
    if command == "up":
        pair.up()
        print(pair.status())
        print(
            "\nThe products service on it (`make up` creates and migrates the database "
            "on the primary; `make down` first if the stack runs):"
        )
        print(f"  export {pair.env()}")
        print("  make up")
    elif command == "down":
        pair.down()
        print("primary and replica stopped")
    elif command == "status":
        print(pair.status())
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
