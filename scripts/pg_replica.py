"""A local PostgreSQL primary and streaming read replica from the installed server:
`make replica-up`, `make replica-down`, `make replica-status`, and the test suite's
private pairs. Standard library only.

Each server is a cluster of its own (``initdb``), never the default one on 5432: its own
data directory, port, Unix socket directory and log, listening on 127.0.0.1 only, with
``trust`` authentication there (as the default cluster the services use). The replica is
``pg_basebackup -R -X stream`` of the primary, streaming through a physical replication
slot (``shop_replica``: the primary keeps the WAL a stopped replica still needs, capped
by ``max_slot_wal_keep_size``), a hot standby with ``hot_standby_feedback`` (its reads
are not cancelled by the primary's vacuum).

PostgreSQL refuses to run as root: as root, every server binary runs as the ``postgres``
OS user (``runuser``), and the pair's directory is given to that user. Servers are
stopped by the pid in their ``postmaster.pid`` (checked to be that data directory's
postmaster): SIGINT (fast shutdown), SIGQUIT after ``STOP_TIMEOUT``, then SIGKILL.

`make replica-up` runs the pair on 127.0.0.1:5440 (primary) and 5441 (replica), files
under ``.run/pg-replica/``; it is idempotent (a stopped server is started again, the
replica catches up) and prints the environment to give `make up`.

    python scripts/pg_replica.py up|down|status
"""

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile

if __package__ in (None, ""):  # `python3 scripts/pg_replica.py`: import from the repository
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts.processes import free_port, process_alive, wait_for  # noqa: E402

PG_BIN = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")
OS_USER = "postgres"  # the server's OS user when run as root
DB_USER = "postgres"
SLOT = "shop_replica"
START_TIMEOUT = 60
STOP_TIMEOUT = 30
PRIMARY_PORT, REPLICA_PORT = 5440, 5441
DATABASE = "shop_products"
# Lean servers: they share the machine with the default cluster and the stack.
COMMON_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "100",
    "shared_buffers": "'64MB'",
    "max_wal_senders": "5",
    "max_replication_slots": "5",
    "wal_level": "replica",
    "max_slot_wal_keep_size": "'1GB'",
    "hot_standby": "on",
    "hot_standby_feedback": "on",
    "logging_collector": "off",
}


def as_root():
    return os.geteuid() == 0


def give_to_server_user(path):
    """Make ``path`` (a directory, recursively) the server user's when running as root."""
    if not as_root():
        return
    entry = pwd.getpwnam(OS_USER)
    for root, dirs, files in os.walk(path):
        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
            os.chown(name, entry.pw_uid, entry.pw_gid)


def check_reachable(path):
    """Fail clearly if the server user cannot reach ``path`` (a parent not searchable)."""
    if not as_root():
        return
    probe = subprocess.run(
        ["runuser", "-u", OS_USER, "--", "test", "-w", path], capture_output=True
    )
    if probe.returncode:
        raise RuntimeError(
            f"the {OS_USER} OS user cannot write {path}: every parent "
            f"directory must be searchable by it"
        )


def server_command(*args):
    """``args`` as the server user (runuser when root)."""
    return ["runuser", "-u", OS_USER, "--", *args] if as_root() else list(args)


def run(*args, timeout=120):
    result = subprocess.run(
        server_command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode:
        raise RuntimeError(f"{' '.join(args)}: {(result.stderr or result.stdout).strip()}")
    return result.stdout


def tool(name):
    return os.path.join(PG_BIN, name)


class PgServer:
    """One cluster: ``data_dir`` (created by :meth:`init` or a base backup), ``port``;
    ``start()`` (idempotent), ``stop()`` by pid, ``query()`` through psql."""

    def __init__(self, base_dir, name, port):
        self.base_dir = os.path.abspath(base_dir)
        self.name = name
        self.port = port
        self.data_dir = os.path.join(self.base_dir, name)
        self.socket_dir = os.path.join(self.base_dir, "sockets")
        self.log_file = os.path.join(self.base_dir, f"{name}.log")

    def uri(self, database=DATABASE, driver="postgresql+psycopg2"):
        return f"{driver}://{DB_USER}@127.0.0.1:{self.port}/{database}"

    @property
    def initialized(self):
        return os.path.exists(os.path.join(self.data_dir, "PG_VERSION"))

    @property
    def pid(self):
        """The postmaster's pid, if ``postmaster.pid`` names a live postmaster of this
        data directory (a stale file, or a pid reused by another process, gives None)."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(os.path.join(self.data_dir, "postmaster.pid")) as stream:
                pid = int(stream.readline().strip())
            with open(f"/proc/{pid}/cmdline", "rb") as stream:
                argv = stream.read().split(b"\0")
            if (
                os.path.basename(argv[0]) in (b"postgres", b"postmaster")
                and self.data_dir.encode() in argv
                and process_alive(pid)
            ):
                return pid
        return None

    def is_running(self):
        return self.pid is not None

    def configure(self, settings):
        """Append ``settings`` to ``postgresql.conf`` (later lines win)."""
        lines = [f"{key} = {value}" for key, value in settings.items()]
        with open(os.path.join(self.data_dir, "postgresql.conf"), "a") as stream:
            stream.write("\n# scripts/pg_replica.py\n" + "\n".join(lines) + "\n")

    def settings(self):
        return {
            **COMMON_SETTINGS,
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
        }

    def init(self):
        """A new cluster, trust on 127.0.0.1 and the local socket (replication too)."""
        run(
            tool("initdb"),
            "-D",
            self.data_dir,
            "-U",
            DB_USER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        )
        self.configure(self.settings())

    def start(self):
        """Start the server unless it runs; return once it accepts connections."""
        if self.is_running():
            return
        with contextlib.suppress(FileNotFoundError):  # stale (a kill -9, a reused pid)
            os.remove(os.path.join(self.data_dir, "postmaster.pid"))
        try:
            run(
                tool("pg_ctl"),
                "start",
                "-D",
                self.data_dir,
                "-l",
                self.log_file,
                "-w",
                "-t",
                str(START_TIMEOUT),
                "-s",
                timeout=START_TIMEOUT + 30,
            )
        except RuntimeError as exc:
            raise RuntimeError(
                f"{self.name} on port {self.port} did not start: {exc}\n{self.log_tail()}"
            ) from None
        wait_for(lambda: self.pid is not None, f"{self.name}: no postmaster.pid")

    def log_tail(self, lines=10):
        with contextlib.suppress(OSError):
            with open(self.log_file, errors="replace") as stream:
                return "".join(stream.readlines()[-lines:])
        return ""

    def stop(self, sig=signal.SIGINT, timeout=STOP_TIMEOUT):
        """Stop the server by its own pid: ``sig`` (SIGINT: fast shutdown, connections
        ended, then a clean checkpoint), SIGQUIT (immediate) if it is still running after
        ``timeout``, then SIGKILL of the postmaster and its children."""
        pid = self.pid
        if pid is None:
            return
        for signal_, wait in ((sig, timeout), (signal.SIGQUIT, 10)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal_)
            with contextlib.suppress(TimeoutError):
                wait_for(lambda: not process_alive(pid), "", wait)
                return
        for child in [pid, *children(pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        wait_for(lambda: not process_alive(pid), f"{self.name} ({pid}) survived SIGKILL")

    def kill(self):
        """kill -9 of the postmaster and its children, as a crash."""
        pid = self.pid
        if pid is None:
            return
        for child in [pid, *children(pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        wait_for(lambda: not process_alive(pid), f"{self.name} ({pid}) survived SIGKILL")

    def query(self, sql, database="postgres"):
        """Rows of ``sql`` (lists of strings) through psql over 127.0.0.1."""
        result = subprocess.run(
            [
                tool("psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                DB_USER,
                "-d",
                database,
                "-X",
                "-A",
                "-t",
                "-F",
                "\t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode:
            raise RuntimeError(f"{self.name}: {sql}: {result.stderr.strip()}")
        return [line.split("\t") for line in result.stdout.splitlines() if line]

    def scalar(self, sql, database="postgres"):
        rows = self.query(sql, database)
        return rows[0][0] if rows else None


def children(pid):
    """Pids whose parent is ``pid`` (a postmaster's backends and auxiliary processes)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                with open(f"/proc/{entry}/stat") as stream:
                    if int(stream.read().split(") ", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
    return found


class ReplicaPair:
    """A primary and its streaming replica under ``base_dir``."""

    def __init__(self, base_dir, primary_port=PRIMARY_PORT, replica_port=REPLICA_PORT):
        self.base_dir = os.path.abspath(base_dir)
        self.primary = PgServer(self.base_dir, "primary", primary_port)
        self.replica = PgServer(self.base_dir, "replica", replica_port)

    def up(self):
        """Start both (creating them the first time); idempotent. Returns self."""
        os.makedirs(os.path.join(self.base_dir, "sockets"), exist_ok=True)
        give_to_server_user(self.base_dir)
        check_reachable(self.base_dir)
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
    base_dir = tempfile.mkdtemp(prefix=prefix)
    os.chmod(base_dir, 0o755)
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
