"""The shop's releases (deploy/RELEASES) and their code, as git has it.

deploy/RELEASES lists every release, oldest first, as ``<tag> <full commit hash>``, and
one ``upgrade-from <tag>`` line: the release the deployed shop runs, which this code
upgrades from (the rolling-upgrade test runs it; the expand/contract checks read it).
A release is found by its tag when the clone has it (and must then be the recorded
commit), else by the recorded hash: a CI clone may carry no tags, but every release
commit is in the history.
"""

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from common.config import ROOT

RELEASES_FILE = os.path.join(ROOT, "deploy", "RELEASES")
GIT_TIMEOUT = 120  # seconds: a worktree of the whole tree on a busy disk


@dataclass(frozen=True)
class Releases:
    """``tags``: tag -> recorded commit, oldest first; ``upgrade_from``: a tag of them."""

    tags: dict[str, str]
    upgrade_from: str


def read_releases(path: str = RELEASES_FILE) -> Releases:
    """deploy/RELEASES parsed; ValueError on a malformed line or an unknown upgrade-from."""
    tags: dict[str, str] = {}
    upgrade_from = None
    with open(path) as stream:
        for number, raw in enumerate(stream, 1):
            fields = raw.split("#", 1)[0].split()
            if not fields:
                continue
            if len(fields) != 2:
                raise ValueError(f"{path}:{number}: expected two fields, got {raw.strip()!r}")
            name, value = fields
            if name == "upgrade-from":
                upgrade_from = value
            elif len(value) == 40 and all(c in "0123456789abcdef" for c in value):
                tags[name] = value
            else:
                raise ValueError(f"{path}:{number}: {value!r} is not a full commit hash")
    if upgrade_from not in tags:
        raise ValueError(f"{path}: upgrade-from {upgrade_from!r} is not a listed release")
    return Releases(tags, upgrade_from)


def git(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["git", "-C", ROOT, *args],
        capture_output=True,
        text=True,
        timeout=GIT_TIMEOUT,
        check=check,
    )


def resolve(tag: str, releases: Releases) -> str:
    """The full commit of release ``tag``: its git tag's if the clone has the tag (which
    must be the recorded commit), else the recorded hash (which must be in the history)."""
    recorded = releases.tags[tag]
    tagged = git("rev-parse", "--verify", "--quiet", f"refs/tags/{tag}^{{commit}}", check=False)
    if tagged.returncode == 0:
        commit = tagged.stdout.strip()
        if commit != recorded:
            raise ValueError(f"tag {tag} is {commit}, deploy/RELEASES says {recorded}")
        return commit
    git("cat-file", "-e", f"{recorded}^{{commit}}")  # CalledProcessError: not in the history
    return recorded


def file_at(commit: str, path: str) -> str | None:
    """The text of ``path`` (relative to the repository root) at ``commit``, or None if
    the file did not exist there."""
    shown = git("show", f"{commit}:{path}", check=False)
    return shown.stdout if shown.returncode == 0 else None


@contextlib.contextmanager
def worktree(commit: str, path: str) -> Iterator[str]:
    """The code of ``commit`` checked out at ``path`` (``git worktree add --detach``),
    removed afterwards (``git worktree remove --force`` and ``prune``) even on failure."""
    git("worktree", "add", "--detach", path, commit)
    try:
        yield path
    finally:
        git("worktree", "remove", "--force", path, check=False)
        git("worktree", "prune", check=False)
