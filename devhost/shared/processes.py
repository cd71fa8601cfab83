"""Small helpers for the background processes devhost starts: least environments, liveness, process groups, ports."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import orjson

# what a child of the local backend (the training job, the scoring server) takes from this environment:
# the basics a process needs and the thread knobs, never a connection string or a key
PASSTHROUGH = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "LD_LIBRARY_PATH",
    "XDG_CACHE_HOME",
    "OMP_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
)


def child_environment(overrides: Mapping[str, str]) -> dict[str, str]:
    """The environment for a child process of the local backend: :data:`PASSTHROUGH` and ``overrides``, no more."""
    return least_environment(PASSTHROUGH, overrides)


def least_environment(passthrough: Iterable[str], overrides: Mapping[str, str]) -> dict[str, str]:
    """The environment of a child that gets only what it needs: ``passthrough`` (those set here) and ``overrides``."""
    return {**{name: os.environ[name] for name in passthrough if name in os.environ}, **overrides}


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not count)."""
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def started(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot, from /proc), or None where that cannot be read.

    With the pid it names one process for good: a recorded pid that the kernel has since given to
    another process shows a different start.
    """
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def json_object(path: Path) -> dict:
    """The JSON object a record file holds; empty when the file is missing, unreadable or not an object."""
    try:
        value = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def live_record(path: Path) -> dict | None:
    """The JSON record of a background process (``{"pid", ...}``), if it exists and that process runs.

    A record that also holds ``pid_started`` (see :func:`started`) names a process that is gone once
    its pid shows another start: the kernel gave the pid to a new process.
    """
    record = json_object(path)
    pid = record.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or not alive(pid):
        return None
    recorded, now = record.get("pid_started"), started(pid)
    return None if isinstance(recorded, int) and now is not None and now != recorded else record


def groups_with(variable: str, value: str) -> dict[int, list[int]]:
    """Process groups holding a live process of this user whose environment has ``variable=value``: {group: those pids}.

    Read from /proc. A child started with ``start_new_session`` leads its own group, which its forks
    join; they inherit its environment. Other users' processes cannot be read and are skipped;
    where there is no /proc, nothing is found.
    """
    wanted = f"{variable}={value}".encode()
    found: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return {}
    for entry in entries:
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                environ = fh.read().split(b"\0")
            group = os.getpgid(pid)
        except OSError:  # gone, or another user's
            continue
        if wanted in environ and alive(pid):
            found.setdefault(group, []).append(pid)
    return {group: sorted(pids) for group, pids in sorted(found.items())}


def group_leaders_with(variable: str, value: str) -> list[int]:
    """Live group leaders whose environment has ``variable=value``: each such child started in a session of its own."""
    return [group for group, pids in groups_with(variable, value).items() if group in pids]


def command_line(pid: int) -> list[str]:
    """The arguments ``pid`` was started with (empty if it is gone or cannot be read)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [arg.decode(errors="replace") for arg in fh.read().split(b"\0")[:-1]]
    except OSError:
        return []


def environment_of(pid: int) -> dict[str, str]:
    """The environment ``pid`` was started with (empty if it is gone or cannot be read)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            raw = fh.read()
    except OSError:
        return {}
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {name: value for name, _, value in pairs}


def terminate_group(group: int) -> None:
    """Send SIGTERM to process group ``group``, then SIGCONT: a stopped member acts on SIGTERM only once continued.

    Raises ProcessLookupError when the group is gone.
    """
    os.killpg(group, signal.SIGTERM)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGCONT)


def stop_group(pid: int, timeout: float = 15.0) -> None:
    """Terminate a process group started with ``start_new_session``; kill it if it lingers."""
    try:
        terminate_group(pid)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive(pid):
        os.killpg(pid, signal.SIGKILL)


def listening(port: int) -> bool:
    """Whether something accepts TCP connections on loopback ``port``."""
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def command_path(program: str = "python") -> str:
    """``program`` beside this interpreter (``python``: this one), as a shell runs it from here: relative if below."""
    path = Path(sys.executable).with_name(program) if program != "python" else Path(sys.executable)
    try:
        shown = str(path.relative_to(Path.cwd()))
    except ValueError:
        shown = str(path)
    return shlex.quote(shown)


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could not bind ``host:port`` now (0 asks for any port: never taken)."""
    if not port:
        return False
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the HTTP host binds: TIME_WAIT is no obstacle
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def preferred_or_free(preferred: int) -> int:
    """``preferred`` if nothing listens there, else any free loopback port (0 asks for any)."""
    return preferred if preferred and not listening(preferred) else free_port()
