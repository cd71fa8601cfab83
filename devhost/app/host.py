"""Drive the functions registered on ``function_app.app`` the way the Functions host does.

Binding metadata (paths, connections, retry policy) is read from the registered functions, never
declared again here. Output bindings are collected after the call returns and written to Azurite;
a failure anywhere fails the invocation, and the registered retry policy re-runs it.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Generic, TypeVar

import azure.functions as func
from azure.functions.decorators.core import BindingDirection
from azure.functions.decorators.function_app import Function
from azure.storage.blob import BlobServiceClient

log = logging.getLogger("devhost")
T = TypeVar("T")


class BindingError(RuntimeError):
    """A binding expression could not be resolved."""


class Out(func.Out, Generic[T]):
    """The value an output binding receives during one invocation."""

    def __init__(self) -> None:
        self._value: T | None = None
        self.is_set = False

    def set(self, val: T) -> None:
        """Set the output value."""
        self._value, self.is_set = val, True

    def get(self) -> T | None:
        """Return the output value."""
        return self._value


_NET_DATETIME = re.compile(r"yyyy|MM|dd|HH|mm|ss|fff")
_NET_TO_STRFTIME = {"yyyy": "%Y", "MM": "%m", "dd": "%d", "HH": "%H", "mm": "%M", "ss": "%S"}


def _format_datetime(now: dt.datetime, fmt: str | None) -> str:
    if fmt is None:
        return now.strftime("%Y-%m-%dT%H-%M-%SZ")
    return _NET_DATETIME.sub(
        lambda m: f"{now.microsecond // 1000:03d}" if m.group() == "fff" else now.strftime(_NET_TO_STRFTIME[m.group()]),
        fmt,
    )


def resolve_path(expression: str, settings: Mapping[str, str], now: dt.datetime) -> str:
    """Resolve ``%AppSetting%``, ``{DateTime[:format]}`` and ``{rand-guid}`` as the host does."""

    def app_setting(m: re.Match[str]) -> str:
        if m.group(1) not in settings:
            raise BindingError(f"binding expression %{m.group(1)}% names a missing app setting")
        return settings[m.group(1)]

    def system(m: re.Match[str]) -> str:
        name, _, fmt = m.group(1).partition(":")
        if name.lower() in ("datetime", "sys.utcnow"):
            return _format_datetime(now, fmt or None)
        if name.lower() in ("rand-guid", "sys.randguid"):
            return str(uuid.uuid4())
        raise BindingError(f"devhost cannot resolve {{{m.group(1)}}} in {expression!r}")

    return re.sub(r"\{([^}]+)\}", system, re.sub(r"%([^%]+)%", app_setting, expression))


def timespan_seconds(value: str | None) -> float:
    """A .NET TimeSpan as host.json and retry policies write it (``hh:mm:ss[.fff]``), in seconds."""
    if not value:
        return 0.0
    h, m, s = value.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


@dataclass(frozen=True)
class RetryPolicy:
    """The function's retry policy; devhost caps the count and the waits to stay interactive."""

    strategy: str = "none"
    max_retry_count: int = 0
    delay: float = 0.0
    minimum: float = 0.0
    maximum: float = 0.0

    @staticmethod
    def _seconds(value: str | None) -> float:
        return timespan_seconds(value)

    @classmethod
    def of(cls, fn: Function) -> RetryPolicy:
        """Read the policy registered with ``@retry``."""
        raw = fn.get_settings_dict("retry_policy")
        if not raw:
            return cls()
        return cls(
            raw["strategy"],
            int(raw["max_retry_count"]),
            cls._seconds(raw.get("delay_interval")),
            cls._seconds(raw.get("minimum_interval")),
            cls._seconds(raw.get("maximum_interval")),
        )

    def waits(self, cap_count: int, cap_wait: float) -> list[float]:
        """Waits before each retry, at most ``cap_count`` (the host's -1 means unbounded)."""
        count = cap_count if self.max_retry_count < 0 else min(self.max_retry_count, cap_count)
        if self.strategy == "fixed_delay":
            return [min(self.delay, cap_wait)] * count
        if self.strategy == "exponential_backoff":
            return [min(self.minimum * 2**i, self.maximum, cap_wait) for i in range(count)]
        return []


@dataclass
class Invocation:
    """What one invocation produced."""

    function: str
    attempts: int
    blobs: list[str] = field(default_factory=list)


@cache
def _blob_service(connection_string: str) -> BlobServiceClient:
    """The output bindings' client, with the app's bounded timeouts and retries (not the SDK's 80 s)."""
    from functions.settings import get_settings
    from functions.shared.storage import connection_string_client

    return connection_string_client(connection_string, get_settings())


@cache
def registered_functions() -> list[Function]:
    """The functions registered on ``function_app.app`` (the SDK indexes an app only once)."""
    import function_app  # deferred: nothing is imported before devhost exported the app settings
    from devhost.jobs.backend import provide_local

    provide_local()  # the timer's ML_BACKEND=local backend lives here, not in the app package
    return function_app.app.get_functions()


class Host:
    """Loads ``function_app.app`` and invokes its functions with devhost's bindings."""

    def __init__(
        self, retry_cap: int = 5, retry_wait_cap: float = 0.5, clock: Callable[[], dt.datetime] | None = None
    ) -> None:
        self.registered = registered_functions()
        self.retry_cap = retry_cap
        self.retry_wait_cap = retry_wait_cap
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))

    def functions(self, trigger_type: str) -> list[Function]:
        """Registered functions whose trigger is of ``trigger_type`` (e.g. ``eventHubTrigger``)."""
        return [f for f in self.registered if f.get_trigger().type == trigger_type]

    def function(self, trigger_type: str, name: str | None = None) -> Function:
        """The single registered function with this trigger type (and ``name``, where several have it)."""
        found = [f for f in self.functions(trigger_type) if name is None or f.get_function_name() == name]
        if len(found) != 1:
            raise LookupError(f"expected one {trigger_type} function, found {[f.get_function_name() for f in found]}")
        return found[0]

    def invoke(self, fn: Function, trigger_value: Any) -> Invocation:
        """Call ``fn`` with its trigger value, write its outputs, and retry per its policy."""
        name = fn.get_function_name()
        waits = RetryPolicy.of(fn).waits(self.retry_cap, self.retry_wait_cap)
        for attempt in range(1, len(waits) + 2):
            try:
                return Invocation(name, attempt, self._invoke_once(fn, trigger_value))
            except Exception as exc:
                if attempt > len(waits):
                    raise
                log.warning("function=%s attempt=%d failed (%s: %s); retrying", name, attempt, type(exc).__name__, exc)
                time.sleep(waits[attempt - 1])
        raise AssertionError("unreachable")

    def _invoke_once(self, fn: Function, trigger_value: Any) -> list[str]:
        outputs = {b.name: (b, Out()) for b in fn.get_bindings() if b.direction == BindingDirection.OUT.value}
        kwargs = {fn.get_trigger().name: trigger_value, **{k: out for k, (_, out) in outputs.items()}}
        fn.get_user_function()(**kwargs)
        now = self.clock()
        written = []
        for binding, out in outputs.values():
            if not out.is_set or out.get() is None:
                continue
            if binding.type != "blob":
                raise BindingError(f"devhost does not emulate {binding.type} output bindings")
            path = resolve_path(binding.path, os.environ, now)
            container, _, blob = path.partition("/")
            service = _blob_service(os.environ[binding.connection])
            service.get_blob_client(container, blob).upload_blob(out.get(), overwrite=True)
            written.append(path)
        return written
