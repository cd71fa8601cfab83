"""The local MLflow store (SQLite): is it readable, and if not, what to do about it.

A damaged ``mlflow.db`` cannot heal itself: it holds the registry (every version, the champion)
and the runs, so devhost never discards it on its own. Every local duty that reads it checks it
first and, when it is damaged, fails with :class:`StoreDamagedError`, whose message names the
file, what is wrong and the one command that moves it aside (SQLAlchemy's traceback said none of that).
"""

from __future__ import annotations

import shlex
import sqlite3
from pathlib import Path

SQLITE_PREFIX = "sqlite:///"


class StoreDamagedError(RuntimeError):
    """The local MLflow store cannot be read; the message says which file and the command that fixes it."""


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (relative to the working directory), else None."""
    if not tracking_uri.startswith(SQLITE_PREFIX):
        return None
    path = tracking_uri[len(SQLITE_PREFIX) :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def damage(path: Path) -> str | None:
    """What is wrong with the SQLite file ``path``, or None if it reads (or is absent, or busy right now).

    ``PRAGMA quick_check`` reads every page (a few milliseconds for a local store); a file that is
    not a database, or one whose pages are broken, fails it. A store locked by a writer, or one
    that cannot be opened at all (a missing folder), is no proof of damage: MLflow reports those.
    """
    if not path.is_file():
        return None
    try:
        with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0) as db:
            rows = db.execute("PRAGMA quick_check").fetchall()
    except sqlite3.OperationalError:  # locked, or not openable: not a verdict on the file's content
        return None
    except sqlite3.DatabaseError as exc:
        return str(exc)
    problems = [str(row[0]) for row in rows if row and row[0] != "ok"]
    return "; ".join(problems[:3]) or None


def check_store(tracking_uri: str) -> None:
    """Raise :class:`StoreDamagedError` if the local SQLite store of ``tracking_uri`` is damaged."""
    path = sqlite_path(tracking_uri)
    if path is None:
        return
    why = damage(path)
    if why is None:
        return
    quoted = shlex.quote(str(path.resolve()))
    raise StoreDamagedError(
        f"the local MLflow store {path.resolve()} is damaged ({why}): its registry and runs cannot be read, "
        "so devhost can neither train nor serve. devhost does not discard a registry by itself. "
        "To start a new store (the next training registers persistence as v1 again), stop what reads it "
        f"and move the file aside:\n  python -m devhost stop && mv {quoted} {quoted}.corrupt"
    )
