"""Private PostgreSQL clusters from the installed server, for the tooling and the tests
(scripts/pg_replica.py's primary and replica, scripts/pg_backup.py's archived primary).
Standard library only.

Each server is a cluster of its own (``initdb``), never the default one on 5432: its own
data directory, port, Unix socket directory and log, listening on 127.0.0.1 only, with
``trust`` authentication there (as the default cluster the services use).

PostgreSQL refuses to run as root: as root, every server binary (and any tool that must
act as the cluster's owner, such as pgBackRest) runs as the ``postgres`` OS user
(``runuser``), and the server's directory is given to that user. Servers are stopped by
the pid in their ``postmaster.pid`` (checked to be that data directory's postmaster):
SIGINT (fast shutdown), SIGQUIT after ``STOP_TIMEOUT``, then SIGKILL.
"""

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile

from scripts.processes import children, process_alive, wait_for

PG_BIN = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")
OS_USER = "postgres"  # the server's OS user when run as root
DB_USER = "postgres"
START_TIMEOUT = 60
STOP_TIMEOUT = 30
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
    ``start()`` (idempotent), ``stop()`` by pid, ``query()`` through psql. ``extra``
    settings are written to its ``postgresql.conf`` after :data:`COMMON_SETTINGS`."""

    def __init__(self, base_dir, name, port, extra=None):
        self.base_dir = os.path.abspath(base_dir)
        self.name = name
        self.port = port
        self.extra = dict(extra or {})
        self.data_dir = os.path.join(self.base_dir, name)
        self.socket_dir = os.path.join(self.base_dir, "sockets")
        self.log_file = os.path.join(self.base_dir, f"{name}.log")

    def uri(self, database="postgres", driver="postgresql+psycopg2"):
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
            stream.write("\n# scripts/pg_cluster.py\n" + "\n".join(lines) + "\n")

    def settings(self):
        return {
            **COMMON_SETTINGS,
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            **self.extra,
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

    def start(self, timeout=START_TIMEOUT):
        """Start the server unless it runs; return once it accepts connections (within
        ``timeout`` s: a server replaying WAL first may need longer)."""
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
                str(timeout),
                "-s",
                timeout=timeout + 30,
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


def prepare_dir(base_dir):
    """``base_dir`` and its ``sockets`` directory, the server user's, checked reachable."""
    os.makedirs(os.path.join(base_dir, "sockets"), exist_ok=True)
    give_to_server_user(base_dir)
    check_reachable(base_dir)


@contextlib.contextmanager
def private_dir(prefix):
    """A new directory of the system's temporary directory (reachable by the server user,
    unlike a root-only pytest tmp dir), removed on the way out."""
    base_dir = tempfile.mkdtemp(prefix=prefix)
    os.chmod(base_dir, 0o755)
    try:
        yield base_dir
    finally:
        shutil.rmtree(base_dir, ignore_errors=True)
