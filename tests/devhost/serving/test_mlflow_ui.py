"""The MLflow UI starts in the background; waiting for it ends on an answer, an exit, a timeout or a stop."""

from __future__ import annotations

import subprocess
import threading

import orjson
import pytest

from devhost.serving.mlflow_ui import mlflow_ui_state_file, wait_for_mlflow_ui
from devhost.shared.processes import free_port


def _record(home, pid: int) -> dict:
    """The record start_mlflow_ui writes, for ``pid`` on a free port nobody answers on."""
    port = free_port()
    state = {"pid": pid, "port": port, "url": f"http://127.0.0.1:{port}"}
    mlflow_ui_state_file(home).parent.mkdir(parents=True, exist_ok=True)
    mlflow_ui_state_file(home).write_bytes(orjson.dumps(state))
    return state


def test_a_ui_that_exited_raises_naming_its_log_and_drops_its_record(tmp_path):
    """A UI process that is gone raises at once with the log path, and its record is removed."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    state = _record(tmp_path, gone.pid)
    with pytest.raises(RuntimeError, match=r"mlflow ui exited; see .*mlflow-ui\.log"):
        wait_for_mlflow_ui(tmp_path, state, timeout=5)
    assert not mlflow_ui_state_file(tmp_path).exists()


def test_a_ui_that_never_answers_is_stopped_after_the_timeout(tmp_path):
    """A live process that never answers on its port is stopped and the wait raises TimeoutError."""
    silent = subprocess.Popen(["sleep", "60"], start_new_session=True)
    state = _record(tmp_path, silent.pid)
    with pytest.raises(TimeoutError, match="did not answer"):
        wait_for_mlflow_ui(tmp_path, state, timeout=0.5)
    assert silent.wait(timeout=10) != 0 and not mlflow_ui_state_file(tmp_path).exists()


def test_a_stop_ends_the_wait_without_touching_the_ui(tmp_path):
    """With stop set, the wait returns False and leaves the process and its record alone."""
    silent = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        state = _record(tmp_path, silent.pid)
        stop = threading.Event()
        stop.set()
        assert wait_for_mlflow_ui(tmp_path, state, timeout=30, stop=stop) is False
        assert silent.poll() is None and mlflow_ui_state_file(tmp_path).exists()
    finally:
        silent.kill()
        silent.wait()
