"""Backups and point-in-time restore of a local PostgreSQL primary with pgBackRest:
`make backup-up`, `make backup`, `make restore`, `make backup-status`, `make backup-down`,
and the test suite's private primaries. Standard library only.

The primary is a private cluster (scripts/pg_cluster.py: its own data directory, port,
socket directory and log, trust on 127.0.0.1, stopped by pid) holding the three
services' databases, with ``archive_mode = on``: every finished WAL segment is pushed to
the pgBackRest repository by ``archive_command`` (``pgbackrest archive-push``), and at
least every ``ARCHIVE_TIMEOUT`` seconds a segment is finished. pgBackRest runs as the
cluster's OS user with a configuration of its own (never ``/etc/pgbackrest``): every
command gets ``--config``/``--config-path`` and explicit ``--repo1-path``,
``--lock-path`` and ``--log-path``, stanza ``shop``. Retention: ``RETENTION_FULL`` full
backups, each with the differential and incremental backups and the WAL that depend on
it; pgBackRest expires the rest after every backup.

- ``backup``: the stanza is created if needed; a full backup the first time, incremental
  afterwards (or the type asked for); prints the backup's label.
- ``restore``: restores the primary to ``target_time`` (PostgreSQL's timestamptz syntax,
  e.g. ``2026-12-05 12:00:00+00``), or to the end of the archive without one. The
  archive is sealed first (a transaction committed, so that recovery finds a commit past
  any target in the past, then ``pgbackrest check``: a WAL switch, waited for until
  archived), the server stopped by pid, ``pgbackrest restore --delta`` run, the server
  started; it returns once the server accepts writes (promoted, on a new timeline) and
  prints where recovery stopped. The backup restored is the newest one finished before
  the target on the history of the archive's latest timeline (every restore starts a new
  timeline: a backup taken after the point it forked from cannot lead to it). A target in
  the future, or with no such backup, is refused before anything is stopped; so is a
  restore while the services are connected (`make down` first).

`make backup-up` runs the primary on 127.0.0.1:5442, data under ``.run/pg-backup/``,
pgBackRest's files under ``.run/pgbackrest/`` (``conf``, ``repo``, ``log``, ``lock``,
``spool``); it is idempotent and prints the environment to give `make up`. The
repository is on the same disk as the data here: elsewhere, point ``repo1-path`` at
another disk or an object store (docs/DEPLOY.md).

    python scripts/pg_backup.py up|down|status|backup [--type full|diff|incr]
                                |restore [--target-time T]
"""

import argparse
import contextlib
import datetime
import json
import os
import re
import shutil
import sys

if __package__ in (None, ""):  # `python3 scripts/pg_backup.py`: import from the repository
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.registry import SERVICES  # noqa: E402
from scripts.pg_cluster import (  # noqa: E402
    DB_USER,
    PgServer,
    check_reachable,
    give_to_server_user,
    prepare_dir,
    private_dir,
    run,
)
from scripts.processes import free_port, wait_for  # noqa: E402

PGBACKREST = os.environ.get("PGBACKREST", shutil.which("pgbackrest") or "/usr/bin/pgbackrest")
STANZA = "shop"
LOCKLESS = ("check", "repo-ls", "repo-get")
PORT = 5442
RETENTION_FULL = 2
ARCHIVE_TIMEOUT = 60  # seconds: at most this much committed work is not yet archived
BACKUP_TIMEOUT = 1800
RESTORE_TIMEOUT = 1800
RECOVERY_TIMEOUT = 600  # from the restored server's start to its promotion
# Lines of the server log saying where recovery stopped (PostgreSQL 15's wording).
RECOVERY_LINES = re.compile(
    r"(recovery stopping .*|last completed transaction was at log time .*"
    r"|selected new timeline ID: \d+|archive recovery complete)"
)


class PgBackRest:
    """pgBackRest for the stanza of ``server``, everything under ``root``: ``conf/``
    (``pgbackrest.conf``; its ``conf.d`` stays empty), ``repo/``, ``log/``, ``lock/``,
    ``spool/``. ``backrest("backup", "--type=full")`` runs one command as the cluster's
    OS user and returns its output."""

    def __init__(self, root, server):
        self.root = os.path.abspath(root)
        self.server = server
        self.conf_dir = os.path.join(self.root, "conf")
        self.config = os.path.join(self.conf_dir, "pgbackrest.conf")
        self.paths = {name: os.path.join(self.root, name) for name in ("repo", "log", "lock")}
        self.spool = os.path.join(self.root, "spool")
        for path in (self.root, self.server.data_dir, self.server.socket_dir):
            if re.search(r"[\s'\"\\]", path):  # they go into archive_command unquoted
                raise ValueError(f"pgBackRest paths may not hold spaces or quotes: {path}")

    def options(self, command):
        """What every command gets: this configuration alone, and its paths explicitly
        (``check``, ``repo-ls`` and ``repo-get`` take no lock, and refuse ``--lock-path``)."""
        return [
            f"--config-path={self.conf_dir}",
            f"--config={self.config}",
            f"--repo1-path={self.paths['repo']}",
            *([] if command in LOCKLESS else [f"--lock-path={self.paths['lock']}"]),
            f"--log-path={self.paths['log']}",
            f"--stanza={STANZA}",
        ]

    def archive_command(self):
        return " ".join([PGBACKREST, *self.options("archive-push"), "archive-push", "%p"])

    def prepare(self):
        """The directories and the configuration file, the server user's."""
        for path in (self.conf_dir, os.path.join(self.conf_dir, "conf.d"), self.spool):
            os.makedirs(path, exist_ok=True)
        for path in self.paths.values():
            os.makedirs(path, exist_ok=True)
        settings = {
            "global": {
                "repo1-path": self.paths["repo"],
                "repo1-retention-full": str(RETENTION_FULL),
                "log-path": self.paths["log"],
                "lock-path": self.paths["lock"],
                "spool-path": self.spool,
                "log-level-console": "warn",
                "log-level-file": "info",
                "compress-type": "lz4",
                "start-fast": "y",
                "archive-timeout": str(ARCHIVE_TIMEOUT),
            },
            STANZA: {
                "pg1-path": self.server.data_dir,
                "pg1-port": str(self.server.port),
                "pg1-socket-path": self.server.socket_dir,
                "pg1-user": DB_USER,
            },
        }
        with open(self.config, "w") as stream:
            stream.write("# scripts/pg_backup.py: rewritten by every `make backup-up`\n")
            for section, values in settings.items():
                stream.write(f"\n[{section}]\n")
                stream.writelines(f"{key}={value}\n" for key, value in values.items())
        give_to_server_user(self.root)
        check_reachable(self.root)

    def __call__(self, command, *args, timeout=120):
        return run(PGBACKREST, *self.options(command), command, *args, timeout=timeout)

    def info(self):
        """The stanza's entry of ``pgbackrest info --output=json`` (``backup``: its
        backups, oldest first; ``archive``: the WAL range kept)."""
        found = json.loads(self("info", "--output=json"))
        return found[0] if found else {}

    def backups(self):
        return self.info().get("backup", [])


class ArchivedPrimary:
    """A primary under ``base_dir`` (data in ``primary/``) archiving its WAL to the
    pgBackRest repository under ``backrest_dir``."""

    def __init__(self, base_dir, port, backrest_dir):
        self.base_dir = os.path.abspath(base_dir)
        self.server = PgServer(self.base_dir, "primary", port)
        self.backrest = PgBackRest(backrest_dir, self.server)
        self.server.extra = {
            "archive_mode": "on",
            "archive_command": f"'{self.backrest.archive_command()}'",
            "archive_timeout": str(ARCHIVE_TIMEOUT),
        }

    def up(self):
        """Start the primary (creating it the first time) and the stanza; idempotent."""
        prepare_dir(self.base_dir)
        self.backrest.prepare()
        if not self.server.initialized:
            self.server.init()
        self.server.start()
        self.backrest("stanza-create")  # a no-op once it exists
        return self

    def down(self):
        self.server.stop()

    def uris(self):
        """``{service: URI}`` of each service's database on this server, as its own role
        (`make setup` creates the roles and databases with ``DB_ADMIN_URI``)."""
        return {
            service: self.server.uri(f"shop_{service}").replace(
                f"//{DB_USER}@", f"//shop_{service}@"
            )
            for service in SERVICES
        }

    def env(self):
        """The environment lines for `make up`."""
        lines = [f"DB_ADMIN_URI={self.server.uri('postgres')}"]
        lines += [f"{service.upper()}_DB_URI={uri}" for service, uri in self.uris().items()]
        return " ".join(lines)

    def backup(self, kind=None):
        """A backup, taken while the primary runs (it must): ``kind`` full, diff or incr;
        by default full when the repository has none, incremental after. Returns its
        label."""
        if not self.server.is_running():
            raise RuntimeError("the primary is not running: `make backup-up` first")
        self.backrest("stanza-create")
        kind = kind or ("incr" if self.backrest.backups() else "full")
        self.backrest("backup", f"--type={kind}", timeout=BACKUP_TIMEOUT)
        return self.backrest.backups()[-1]["label"]

    def seal_archive(self):
        """Make everything committed so far restorable: commit one transaction (an xid,
        so a commit record stamped now: recovery to an earlier time meets a commit past
        its target and stops there, instead of running out of WAL), then ``pgbackrest
        check`` switches the WAL and waits until that segment is archived."""
        self.server.query("SELECT pg_current_xact_id()")
        self.backrest("check", timeout=ARCHIVE_TIMEOUT + 60)

    def choose_backup(self, target_time=None):
        """The label of the backup to restore from: the newest one on the history of the
        archive's latest timeline (a backup taken on an older timeline after the point
        where a restore forked from it cannot reach the new timeline) and, with
        ``target_time``, finished before it. ValueError if there is none, or the target
        is in the future; asked before anything is stopped."""
        epoch = None
        if target_time:
            epoch = target_epoch(target_time)
            if epoch > datetime.datetime.now(datetime.UTC).timestamp():
                raise ValueError(f"TARGET_TIME {target_time!r} is in the future")
        timeline, forks = self.latest_timeline()
        usable = [
            backup
            for backup in self.backrest.backups()
            if on_history(backup, timeline, forks)
            # pgBackRest's stop times are whole seconds, and so are its comparisons
            and (epoch is None or backup["timestamp"]["stop"] < int(epoch))
        ]
        if not usable:
            raise ValueError(
                "no backup in the repository finished before TARGET_TIME on the current "
                f"history (timeline {timeline})"
                if epoch
                else "no backup in the repository"
            )
        return usable[-1]["label"]

    def latest_timeline(self):
        """``(timeline, {parent timeline: LSN where the history left it})`` of the latest
        timeline in the archive (its history file, read with ``repo-get``)."""
        archives = self.backrest.info().get("archive") or [{}]
        directory = f"archive/{STANZA}/{archives[-1].get('id', '')}"
        names = self.backrest("repo-ls", directory).split()
        histories = [int(n[:8], 16) for n in names if re.fullmatch(r"[0-9A-F]{8}\.history", n)]
        if not histories:
            return 1, {}
        timeline = max(histories)
        forks = {}
        for line in self.backrest("repo-get", f"{directory}/{timeline:08X}.history").splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[0].isdigit():
                forks[int(fields[0])] = lsn(fields[1])
        return timeline, forks

    def connected_clients(self):
        return int(
            self.server.scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                f"AND usename <> '{DB_USER}'"
            )
        )

    def restore(self, target_time=None, force=False):
        """Restore the primary to ``target_time`` (or the end of the archive) and start
        it; returns once it accepts writes, with the recovery's log lines (where it
        stopped, the new timeline). ``force``: even with clients connected."""
        backup_set = self.choose_backup(target_time)
        positions = {}
        if self.server.is_running():
            clients = self.connected_clients()
            if clients and not force:
                raise RuntimeError(
                    f"{clients} client connection(s) to the primary: stop the stack "
                    "(`make down`) first, or RESTORE_FORCE=1"
                )
            positions = self.sequence_positions()
            self.seal_archive()
            self.server.stop()
        target = (
            ["--type=time", f"--target={target_time}", "--target-action=promote"]
            if target_time
            else ["--type=default"]
        )
        log_start = log_size(self.server.log_file)
        self.backrest("restore", "--delta", f"--set={backup_set}", *target, timeout=RESTORE_TIMEOUT)
        self.server.start(timeout=RECOVERY_TIMEOUT)
        wait_for(
            lambda: self.server.scalar("SELECT pg_is_in_recovery()") == "f",
            f"the restored primary is still in recovery: {self.server.log_file}",
            RECOVERY_TIMEOUT,
            0.5,
        )
        lines = [f"restored from backup {backup_set}"]
        lines += recovery_lines(self.server.log_file, log_start)
        carried = self.carry_sequences(positions)
        if carried:
            lines.append(f"sequences carried past the ids handed out before the restore: {carried}")
        return lines

    def databases(self):
        return [
            row[0]
            for row in self.server.query(
                "SELECT datname FROM pg_database WHERE NOT datistemplate AND datallowconn "
                "AND datname <> 'postgres'"
            )
        ]

    def sequence_positions(self):
        """``{(database, sequence): last value}`` of every sequence of every database."""
        return {
            (database, name): int(value)
            for database in self.databases()
            for name, value in self.server.query(
                "SELECT format('%I.%I', schemaname, sequencename), last_value "
                "FROM pg_sequences WHERE last_value IS NOT NULL",
                database,
            )
        }

    def carry_sequences(self, positions):
        """Move each restored sequence to at least where it was before the restore, so an
        id handed out after the target time (a client may hold it) is never given to
        another row. Returns how many moved."""
        moved = 0
        for (database, name), value in positions.items():
            with contextlib.suppress(RuntimeError):  # a sequence the target predates
                if (
                    self.server.scalar(
                        f"SELECT last_value < {value} OR NOT is_called FROM {name}", database
                    )
                    == "t"
                ):
                    self.server.query(f"SELECT setval('{name}', {value})", database)
                    moved += 1
        return moved

    def status(self):
        pid = self.server.pid
        state = f"running (pid {pid})" if pid else "stopped"
        lines = [
            f"primary 127.0.0.1:{self.server.port}  {state}  data {self.server.data_dir}",
            f"pgBackRest stanza {STANZA}, repository {self.backrest.paths['repo']}",
        ]
        if pid:
            archived, last, at, failed, last_failed = self.server.query(
                "SELECT archived_count, coalesce(last_archived_wal, '-'), "
                "coalesce(last_archived_time::text, '-'), failed_count, "
                "coalesce(last_failed_wal, '-') FROM pg_stat_archiver"
            )[0]
            lines.append(
                f"WAL archiving: {archived} segments archived, the last {last} at {at}; "
                f"{failed} failed (last {last_failed})"
            )
        with contextlib.suppress(RuntimeError):  # no stanza yet
            lines.append(self.backrest("info").rstrip())
        return "\n".join(lines)


def target_epoch(target_time):
    """``target_time`` (ISO 8601 with its offset: ``2026-12-05 12:00:00+00``) in seconds
    since the epoch; ValueError if it is not one."""
    try:
        moment = datetime.datetime.fromisoformat(target_time)
    except ValueError:
        raise ValueError(
            f"TARGET_TIME {target_time!r} is not a time such as '2026-12-05 12:00:00+00'"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(f"TARGET_TIME {target_time!r} has no UTC offset (+00, +01:00...)")
    return moment.timestamp()


def lsn(text):
    """A WAL location ``X/Y`` as an integer."""
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def on_history(backup, timeline, forks):
    """True if recovery from ``backup`` can follow ``timeline``, whose history left each
    ``forks`` timeline at the LSN given: the backup is on ``timeline``, or on an ancestor
    and finished before the history left it."""
    backup_timeline = int(backup["archive"]["start"][:8], 16)
    if backup_timeline == timeline:
        return True
    return backup_timeline in forks and lsn(backup["lsn"]["stop"]) <= forks[backup_timeline]


def log_size(path):
    with contextlib.suppress(OSError):
        return os.path.getsize(path)
    return 0


def recovery_lines(log_file, start):
    """The recovery lines the server logged from byte ``start`` of ``log_file`` on."""
    with open(log_file, errors="replace") as stream:
        stream.seek(start)
        return [match.group(1) for match in map(RECOVERY_LINES.search, stream) if match]


@contextlib.contextmanager
def private_archived_primary(prefix="shop-pitr-"):
    """A running archived primary on a free port, pgBackRest's files beside it, in a new
    directory of the system's temporary directory; the server stopped by pid and the
    directory removed on the way out."""
    with private_dir(prefix) as base_dir:
        primary = ArchivedPrimary(base_dir, free_port(), os.path.join(base_dir, "pgbackrest"))
        try:
            yield primary.up()
        finally:
            primary.down()


def make_primary(run_dir):
    """The `make backup-up` primary: 5442, data under ``<run_dir>/pg-backup``,
    pgBackRest under ``<run_dir>/pgbackrest``."""
    return ArchivedPrimary(
        os.path.join(run_dir, "pg-backup"), PORT, os.path.join(run_dir, "pgbackrest")
    )


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status", "backup", "restore"])
    parser.add_argument("--type", choices=["full", "diff", "incr"], help="backup type")
    parser.add_argument("--target-time", help="restore to this time (timestamptz)")
    parser.add_argument("--force", action="store_true", help="restore with clients connected")
    args = parser.parse_args(argv[1:])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    primary = make_primary(os.path.join(root, ".run"))
    try:
        if args.command == "up":
            primary.up()
            print(primary.status())
            print(
                "\nThe stack on it (`make up` creates the roles and databases on it and "
                "migrates them; `make down` first if the stack runs):"
            )
            print(f"  export {primary.env()}")
            print("  make up")
        elif args.command == "down":
            primary.down()
            print("backup primary stopped")
        elif args.command == "status":
            print(primary.status())
        elif args.command == "backup":
            print(f"backup {primary.backup(args.type)}")
        else:
            for line in primary.restore(args.target_time, force=args.force):
                print(line)
            print(f"primary 127.0.0.1:{primary.server.port} accepts writes")
    except (RuntimeError, ValueError, TimeoutError) as exc:
        print(f"{args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
