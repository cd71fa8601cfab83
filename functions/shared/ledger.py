"""The live skill ledger's storage contract, shared by predict (writes served/, reads skill.json) and the timer.

In the bars container:

- ``ledger/served/date=YYYY-MM-DD/hour=HH/<instance>-<seq>.parquet``: forecasts served, one blob per
  flush of a predict instance's buffer, append-only (:data:`SERVED_SCHEMA`); the hour is the flush's.
- ``ledger/state.json``: the timer's running sums per version, the records still waiting for their
  target bar, the keys already counted and which served blobs were folded, in one document
  replaced with ETag concurrency (:mod:`functions.train_trigger.live_skill`).
- ``ledger/skill.json``: the live figures per version, derived from the state after each write;
  what predict and ``devhost status`` read.

A record's key is (symbol, as_of, version): the same forecast served twice (GETs sharing a cached
forecast, two instances, a flush retried after a lost answer) is counted once.
"""

from __future__ import annotations

import datetime as dt
import io
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import ContainerClient

from functions.shared.bars import valid_symbol
from functions.shared.storage import download

SERVED_PREFIX = "ledger/served/"
STATE_BLOB = "ledger/state.json"
SKILL_BLOB = "ledger/skill.json"
SOURCES = ("get", "post", "stream")  # predict's GET and POST, and the forecast stream
_SERVED_NAME = re.compile(r"ledger/served/date=(\d{4}-\d{2}-\d{2})/hour=(\d{2})/[\w.-]+\.parquet")

SERVED_SCHEMA = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("version", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("as_of", pa.timestamp("s", tz="UTC"), nullable=False),
        pa.field("target_ts", pa.timestamp("s", tz="UTC"), nullable=False),
        pa.field("predicted_close", pa.float64(), nullable=False),
        pa.field("last_close", pa.float64(), nullable=False),
        pa.field("interval_level", pa.float64()),
        pa.field("interval_low", pa.float64()),
        pa.field("interval_high", pa.float64()),
        pa.field("served_at", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("request_id", pa.string()),
    ]
)


@dataclass(frozen=True, slots=True)
class ServedRecord:
    """One forecast as it was served: what the model said, from which close, for which minute."""

    symbol: str
    version: str
    kind: str
    as_of: int  # unix seconds of the newest bar used
    target_ts: int  # unix seconds of the minute forecast
    predicted_close: float
    last_close: float  # the close the forecast was made from (persistence's forecast)
    interval_level: float | None
    interval_low: float | None
    interval_high: float | None
    served_at_ms: int
    source: str  # get | post | stream
    request_id: str | None = None

    @property
    def key(self) -> tuple[str, int, str]:
        """What makes two served records the same forecast: symbol, as_of, version."""
        return self.symbol, self.as_of, self.version

    def check(self) -> ServedRecord:
        """The record itself if it keeps the contract; ValueError naming the first thing that does not."""
        if not valid_symbol(self.symbol):
            raise ValueError(f"symbol {self.symbol!r} is not a stored symbol")
        if not self.version:
            raise ValueError("version is empty")
        if self.target_ts <= self.as_of:
            raise ValueError(f"target_ts {self.target_ts} is not after as_of {self.as_of}")
        if not (self.predicted_close > 0 and self.last_close > 0):  # NaN fails too
            raise ValueError("predicted_close and last_close must be positive")
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, not {self.source!r}")
        return self

    def as_row(self) -> list[Any]:
        """The record as a JSON list (the timer keeps pending records so)."""
        return [
            self.symbol,
            self.version,
            self.kind,
            self.as_of,
            self.target_ts,
            self.predicted_close,
            self.last_close,
            self.interval_level,
            self.interval_low,
            self.interval_high,
            self.served_at_ms,
            self.source,
            self.request_id,
        ]

    @classmethod
    def from_row(cls, row: Any) -> ServedRecord:
        """A record from :meth:`as_row`; ValueError naming what is wrong."""
        if not isinstance(row, list) or len(row) != 13:
            raise ValueError("a served record is a list of 13 values")
        try:
            return cls(
                str(row[0]),
                str(row[1]),
                str(row[2]),
                int(row[3]),
                int(row[4]),
                float(row[5]),
                float(row[6]),
                *(None if v is None else float(v) for v in row[7:10]),
                int(row[10]),
                str(row[11]),
                None if row[12] is None else str(row[12]),
            ).check()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"served record {row!r}: {exc}") from None


def served_blob_name(at: dt.datetime, instance: str, seq: int) -> str:
    """Where one flush of ``instance`` goes: partitioned by the flush's UTC date and hour."""
    at = at.astimezone(dt.UTC)
    return f"{SERVED_PREFIX}date={at:%Y-%m-%d}/hour={at:%H}/{instance}-{seq:08d}.parquet"


def served_hour(name: str) -> str | None:
    """``YYYY-MM-DDTHH`` of a served blob's name (sorts as time), or None for a name off the pattern."""
    match = _SERVED_NAME.fullmatch(name)
    return f"{match.group(1)}T{match.group(2)}" if match else None


def encode_served(records: Iterable[ServedRecord]) -> bytes:
    """A flush's records as one zstd Parquet file."""
    rows = list(records)
    # a column holds the record's field of the same name, but served_at, which the record keeps in ms
    columns = {
        field.name: [getattr(r, "served_at_ms" if field.name == "served_at" else field.name) for r in rows]
        for field in SERVED_SCHEMA
    }
    table = pa.table({name: pa.array(values, type=SERVED_SCHEMA.field(name).type) for name, values in columns.items()})
    sink = io.BytesIO()
    pq.write_table(table.cast(SERVED_SCHEMA), sink, compression="zstd")
    return sink.getvalue()


def decode_served(data: bytes) -> list[ServedRecord]:
    """The records of a served blob; ValueError when it is not one (each row is checked too)."""
    try:
        table = pq.read_table(io.BytesIO(data)).select(SERVED_SCHEMA.names).cast(SERVED_SCHEMA)
    except (pa.ArrowException, OSError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a served ledger blob: {exc}") from None
    cols = {name: table.column(name).to_pylist() for name in SERVED_SCHEMA.names}
    for name in ("as_of", "target_ts", "served_at"):
        cols[name] = pc.cast(table.column(name), pa.int64()).to_pylist()
    return [ServedRecord(*values).check() for values in zip(*(cols[name] for name in SERVED_SCHEMA.names), strict=True)]


@dataclass(frozen=True)
class LiveFigures:
    """A version's live figures as ``ledger/skill.json`` holds them."""

    version: str
    kind: str
    n: int
    ratio_to_persistence: float | None
    p_value: float | None  # one-sided DM: the model beats persistence (None for persistence itself)
    p_worse: float | None  # one-sided DM: the model is worse than persistence (the alert's test)
    coverage: float | None
    interval_n: int
    first_target: int | None
    last_target: int | None
    last_served_at_ms: int | None

    def as_json(self) -> dict[str, Any]:
        """The figures as ``ledger/skill.json`` holds them under their version."""
        return {
            "kind": self.kind,
            "n": self.n,
            "ratio_to_persistence": self.ratio_to_persistence,
            "p_value": self.p_value,
            "p_worse": self.p_worse,
            "coverage": self.coverage,
            "interval_n": self.interval_n,
            "first_target": self.first_target,
            "last_target": self.last_target,
            "last_served_at_ms": self.last_served_at_ms,
        }

    def api(self, updated_at: str) -> dict[str, Any]:
        """The ``skill.live`` object of the predict API."""
        return {
            "ratio_to_persistence": self.ratio_to_persistence,
            "p_value": self.p_value,
            "n": self.n,
            "coverage": self.coverage,
            "updated_at": updated_at,
        }


@dataclass(frozen=True)
class SkillDocument:
    """``ledger/skill.json``: when the timer wrote it and the figures of every version scored."""

    updated_at: str
    versions: Mapping[str, LiveFigures]


def _optional_float(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number or null")
    return float(value)


def _optional_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer or null")
    return value


def encode_skill(document: SkillDocument) -> bytes:
    """The bytes of ``ledger/skill.json``."""
    return orjson.dumps(
        {
            "updated_at": document.updated_at,
            "versions": {version: f.as_json() for version, f in sorted(document.versions.items())},
        }
    )


def decode_skill(data: bytes) -> SkillDocument:
    """Parse ``ledger/skill.json``; ValueError naming what is wrong."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("updated_at"), str):
        raise ValueError("not a skill document (updated_at missing)")
    versions = doc.get("versions")
    if not isinstance(versions, dict):
        raise ValueError("versions must be an object")
    figures = {}
    for version, f in versions.items():
        if not isinstance(f, dict) or not isinstance(f.get("kind"), str):
            raise ValueError(f"version {version!r}: not an object with a kind")
        n, interval_n = f.get("n"), f.get("interval_n")
        if not (isinstance(n, int) and isinstance(interval_n, int)) or n < 0 or interval_n < 0:
            raise ValueError(f"version {version!r}: n and interval_n must be whole numbers")
        figures[version] = LiveFigures(
            version,
            f["kind"],
            n,
            _optional_float(f.get("ratio_to_persistence"), "ratio_to_persistence"),
            _optional_float(f.get("p_value"), "p_value"),
            _optional_float(f.get("p_worse"), "p_worse"),
            _optional_float(f.get("coverage"), "coverage"),
            interval_n,
            _optional_int(f.get("first_target"), "first_target"),
            _optional_int(f.get("last_target"), "last_target"),
            _optional_int(f.get("last_served_at_ms"), "last_served_at_ms"),
        )
    return SkillDocument(doc["updated_at"], figures)


@dataclass(frozen=True)
class StoredSkill:
    """A read of ``ledger/skill.json``: the document (None when absent) and its ETag."""

    document: SkillDocument | None
    etag: str | None
    unchanged: bool = False  # it still had the ETag the reader knew: nothing was downloaded


def read_skill(container: ContainerClient, known_etag: str | None = None) -> StoredSkill:
    """Read the live figures; with ``known_etag``, an unchanged blob is not downloaded (HTTP 304).

    Raises ValueError for a blob that is not a skill document, and storage errors as they come.
    """
    blob = container.get_blob_client(SKILL_BLOB)
    try:
        downloader = download(blob, known_etag)
    except ResourceNotFoundError:
        return StoredSkill(None, None)
    except ResourceModifiedError as exc:  # the SDK's type for a 304
        if known_etag is None or exc.status_code != 304:
            raise
        return StoredSkill(None, known_etag, unchanged=True)
    return StoredSkill(decode_skill(downloader.readall()), downloader.properties.etag)
