"""devhost's process helpers, on real processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from devhost.shared.processes import alive, json_object, stop_group, terminate_group

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def _stopped_group() -> subprocess.Popen:
    """A process in a session of its own, stopped (SIGSTOP) as a ^Z'd or frozen server would be."""
    proc = subprocess.Popen(SLEEPER, start_new_session=True)
    proc.send_signal(signal.SIGSTOP)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with open(f"/proc/{proc.pid}/stat") as fh:
            if fh.read().rsplit(")", 1)[1].split()[0] == "T":
                return proc
        time.sleep(0.01)
    raise AssertionError("the process never stopped")


def test_terminate_group_ends_a_stopped_group_at_once():
    """SIGTERM alone waits on a stopped process; terminate_group continues it, so it ends at once."""
    proc = _stopped_group()
    terminate_group(proc.pid)
    assert proc.wait(5) == -signal.SIGTERM


def test_terminate_group_of_a_gone_group_raises_lookup_error():
    """A group that is gone raises ProcessLookupError, which callers treat as already stopped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    proc.wait(10)
    with pytest.raises(ProcessLookupError):
        terminate_group(proc.pid)


def test_stop_group_ends_a_stopped_group_well_before_its_kill_deadline():
    """stop_group ends a stopped group with SIGTERM, not by waiting out its timeout for SIGKILL."""
    proc = _stopped_group()
    stop_group(proc.pid, timeout=30)
    assert (proc.wait(5), alive(proc.pid)) == (-signal.SIGTERM, False)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, {}),
        (b"", {}),
        (b"{not json", {}),
        (b"[1, 2]", {}),
        (b"7", {}),
        (b'{"pid": 3, "port": 10000}', {"pid": 3, "port": 10000}),
    ],
    ids=["missing", "empty", "malformed", "a-list", "a-number", "an-object"],
)
def test_json_object_reads_an_object_or_nothing(tmp_path, content, expected):
    """A record file gives its JSON object; a missing, malformed or non-object file gives an empty one."""
    path = tmp_path / "record.json"
    if content is not None:
        path.write_bytes(content)
    assert json_object(path) == expected
