"""Pure decoding of Airbyte destination-kafka messages carrying Yahoo Finance 1-minute charts.

One call decodes a whole Event Hubs batch: the envelope and chart are walked per event, the bar
arrays are converted by Arrow in C, and validation and the true-bar rule run vectorised over the
batch. Nothing here touches Azure, so it is tested and benchmarked on its own.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from functions.ingest.bars import BAR_SCHEMA, empty_bars, normalise_symbol, true_bar_rows

PRICE_STREAM = "price"
_QUOTE_FIELDS = ("open", "high", "low", "close", "volume")


class Reason:
    """Machine-readable reasons written to dead-letter records."""

    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_ENVELOPE = "missing_envelope"
    INVALID_EMITTED_AT = "invalid_emitted_at"
    MISSING_CHART = "missing_chart"
    YAHOO_ERROR = "yahoo_error"
    NO_RESULT = "no_result"
    INVALID_SYMBOL = "invalid_symbol"
    UNSUPPORTED_GRANULARITY = "unsupported_granularity"
    MISSING_QUOTE = "missing_quote"
    LENGTH_MISMATCH = "length_mismatch"
    BAD_VALUE_TYPE = "bad_value_type"
    INVALID_BARS = "invalid_bars"
    # per-bar reasons, listed under "rejected" of an invalid_bars record
    PARTIAL_NULL = "partial_null"
    INVALID_TIMESTAMP = "invalid_timestamp"
    NON_FINITE_PRICE = "non_finite_price"
    NON_POSITIVE_PRICE = "non_positive_price"
    INCONSISTENT_OHLC = "inconsistent_ohlc"
    NEGATIVE_VOLUME = "negative_volume"
    FRACTIONAL_VOLUME = "fractional_volume"


@dataclass(frozen=True, slots=True)
class RawEvent:
    """One Event Hubs event: its body and lineage."""

    body: bytes
    partition: str | None = None
    sequence_number: int | None = None
    enqueued_at_ms: int | None = None
    offset: str | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event that could not be (fully) decoded, with the reason and the rejected parts."""

    event: RawEvent
    reason: str
    detail: str
    rejected: tuple[dict[str, Any], ...] = ()

    def to_record(self, batch_id: str) -> dict[str, Any]:
        """Shape the dead-letter JSONL record: original body, reason and lineage."""
        try:
            body, encoding = self.event.body.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            body, encoding = base64.b64encode(self.event.body).decode("ascii"), "base64"
        return {
            "batch_id": batch_id,
            "reason": self.reason,
            "detail": self.detail,
            "rejected": list(self.rejected),
            "partition": self.event.partition,
            "sequence_number": self.event.sequence_number,
            "offset": self.event.offset,
            "enqueued_at": self.event.enqueued_at_ms,
            "body_encoding": encoding,
            "body": body,
        }


@dataclass(slots=True)
class DecodedBatch:
    """What a batch decodes to: its true bars, its dead letters and what was skipped."""

    bars: pa.Table
    dead_letters: list[DeadLetter] = field(default_factory=list)
    events: int = 0
    ignored: int = 0
    bars_received: int = 0
    null_minutes: int = 0

    def dead_letter_jsonl(self, batch_id: str) -> bytes:
        """Serialise the dead letters as JSON lines."""
        return b"".join(orjson.dumps(d.to_record(batch_id)) + b"\n" for d in self.dead_letters)


class _RejectError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class _Chunk:
    """One chart result's arrays, still as the Python lists the JSON parser produced."""

    event_index: int
    symbol: str
    emitted_at: int
    ts: list[Any]
    values: tuple[list[Any], ...]


_CONVERT_GROUP = 16  # events parsed before their arrays are converted: keeps the objects in cache
_COLUMN_TYPES = (pa.int64(), pa.float64(), pa.float64(), pa.float64(), pa.float64(), pa.float64())


def _columns(chunks: Sequence[_Chunk]) -> list[np.ndarray]:
    """Convert the chunks' lists to arrays in one pass per column; raise on a bad value type."""
    out = []
    for k, arrow_type in enumerate(_COLUMN_TYPES):
        lists = [c.ts for c in chunks] if k == 0 else [c.values[k - 1] for c in chunks]
        arr = pa.array(list(chain.from_iterable(lists)), type=arrow_type)
        if k == 0 and arr.null_count:
            raise TypeError("null timestamp")
        out.append(arr.to_numpy(zero_copy_only=False))
    return out


def _convert(chunks: list[_Chunk]) -> tuple[list[_Chunk], list[np.ndarray], dict[int, _RejectError]]:
    """Convert all chunks at once; only if that fails, find the chunks with bad values one by one."""
    try:
        return chunks, _columns(chunks), {}
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        pass
    good, bad = [], {}
    for chunk in chunks:
        try:
            _columns([chunk])
            good.append(chunk)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
            bad[chunk.event_index] = _RejectError(Reason.BAD_VALUE_TYPE, f"{chunk.symbol}: {exc}")
    return good, (_columns(good) if good else []), bad


def _require(mapping: Any, key: str, kind: type, reason: str, where: str) -> Any:
    value = mapping.get(key) if isinstance(mapping, dict) else None
    if not isinstance(value, kind):
        raise _RejectError(reason, f"{where}.{key} missing or not a {kind.__name__}")
    return value


def _decode_result(result: Any, event_index: int, emitted_at: int, where: str) -> _Chunk | None:
    if not isinstance(result, dict):
        raise _RejectError(Reason.MISSING_CHART, f"{where} is not an object")
    meta = _require(result, "meta", dict, Reason.MISSING_CHART, where)
    raw_symbol = meta.get("symbol")
    symbol = normalise_symbol(raw_symbol)
    if symbol is None:
        raise _RejectError(Reason.INVALID_SYMBOL, f"{where}.meta.symbol {raw_symbol!r} is not a valid symbol")
    granularity = meta.get("dataGranularity", "1m")
    if granularity != "1m":
        raise _RejectError(Reason.UNSUPPORTED_GRANULARITY, f"{symbol}: dataGranularity {granularity!r}, expected '1m'")
    timestamps = result.get("timestamp")
    if timestamps is None:
        return None  # Yahoo omits the arrays when the range holds no trades yet
    if not isinstance(timestamps, list):
        raise _RejectError(Reason.BAD_VALUE_TYPE, f"{symbol}: timestamp is not a list")
    indicators = _require(result, "indicators", dict, Reason.MISSING_QUOTE, where)
    quotes = indicators.get("quote")
    if not isinstance(quotes, list) or not quotes or not isinstance(quotes[0], dict):
        raise _RejectError(Reason.MISSING_QUOTE, f"{symbol}: indicators.quote[0] missing")
    quote = quotes[0]
    n = len(timestamps)
    columns = []
    for name in _QUOTE_FIELDS:
        values = quote.get(name)
        if not isinstance(values, list):
            raise _RejectError(Reason.MISSING_QUOTE, f"{symbol}: quote.{name} missing")
        if len(values) != n:
            raise _RejectError(
                Reason.LENGTH_MISMATCH, f"{symbol}: quote.{name} has {len(values)} values for {n} timestamps"
            )
        columns.append(values)
    return _Chunk(event_index, symbol, emitted_at, timestamps, tuple(columns))


def _decode_event(event: RawEvent, index: int) -> tuple[list[_Chunk], list[_RejectError], bool]:
    """Return (chunks, problems, ignored) for one event."""
    try:
        doc = orjson.loads(event.body)
    except orjson.JSONDecodeError as exc:
        try:
            event.body.decode("utf-8")
        except UnicodeDecodeError:
            return [], [_RejectError(Reason.INVALID_UTF8, f"body is not UTF-8: {exc}")], False
        return [], [_RejectError(Reason.INVALID_JSON, str(exc))], False
    if not isinstance(doc, dict):
        return [], [_RejectError(Reason.NOT_AN_OBJECT, f"body is a JSON {type(doc).__name__}")], False
    stream = doc.get("_airbyte_stream")
    if not isinstance(stream, str) or "_airbyte_data" not in doc:
        return (
            [],
            [_RejectError(Reason.MISSING_ENVELOPE, "not an Airbyte record (_airbyte_stream/_airbyte_data)")],
            False,
        )
    if stream != PRICE_STREAM:
        return [], [], True
    emitted_at = doc.get("_airbyte_emitted_at")
    if not isinstance(emitted_at, int) or isinstance(emitted_at, bool) or emitted_at <= 0:
        return [], [_RejectError(Reason.INVALID_EMITTED_AT, f"_airbyte_emitted_at {emitted_at!r}")], False
    try:
        data = _require(doc, "_airbyte_data", dict, Reason.MISSING_CHART, "record")
        chart = _require(data, "chart", dict, Reason.MISSING_CHART, "_airbyte_data")
        if chart.get("error") is not None:
            raise _RejectError(Reason.YAHOO_ERROR, f"chart.error: {orjson.dumps(chart['error']).decode()}")
        results = chart.get("result")
        if not isinstance(results, list) or not results:
            raise _RejectError(Reason.NO_RESULT, "chart.result is empty")
    except _RejectError as reject:
        return [], [reject], False
    chunks: list[_Chunk] = []
    problems: list[_RejectError] = []
    for i, result in enumerate(results):
        try:
            chunk = _decode_result(result, index, emitted_at, f"chart.result[{i}]")
        except _RejectError as reject:
            problems.append(reject)
            continue
        if chunk is not None:
            chunks.append(chunk)
    return chunks, problems, False


def _bar_reasons(
    o: np.ndarray, h: np.ndarray, lo: np.ndarray, c: np.ndarray, v: np.ndarray, ts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised validation: (is_null_minute, reason code per bar; 0 = valid)."""
    nulls = np.isnan(o).astype(np.int8) + np.isnan(h) + np.isnan(lo) + np.isnan(c) + np.isnan(v)
    null_minute = nulls == 5
    code = np.zeros(len(o), dtype=np.int8)
    with np.errstate(invalid="ignore"):
        prices = np.stack([o, h, lo, c])
        checks = [
            (ts <= 0, 6),
            ((v % 1) != 0, 5),
            (v < 0, 4),
            ((lo > np.minimum(o, c)) | (np.maximum(o, c) > h), 3),
            ((prices <= 0).any(axis=0), 2),
            (~np.isfinite(prices).all(axis=0), 1),
            ((nulls > 0) & ~null_minute, 7),
        ]
    for mask, value in checks:  # later checks win, so the most basic fault is the one named
        code[mask] = value
    code[null_minute] = 0
    return null_minute, code


_CODE_REASON = {
    1: Reason.NON_FINITE_PRICE,
    2: Reason.NON_POSITIVE_PRICE,
    3: Reason.INCONSISTENT_OHLC,
    4: Reason.NEGATIVE_VOLUME,
    5: Reason.FRACTIONAL_VOLUME,
    6: Reason.INVALID_TIMESTAMP,
    7: Reason.PARTIAL_NULL,
}


def decode_batch(events: Sequence[RawEvent]) -> DecodedBatch:
    """Decode a batch of events into its true bars (with lineage) and its dead letters."""
    chunks: list[_Chunk] = []
    parts: list[list[np.ndarray]] = []
    problems: dict[int, list[_RejectError]] = {}
    ignored = 0
    for start in range(0, len(events), _CONVERT_GROUP):
        pending: list[_Chunk] = []
        for index in range(start, min(start + _CONVERT_GROUP, len(events))):
            event_chunks, event_problems, is_ignored = _decode_event(events[index], index)
            ignored += is_ignored
            pending.extend(event_chunks)
            if event_problems:
                problems[index] = event_problems
        # converting while the parsed objects are still in cache is ~2x faster than at the end
        pending, group_columns, bad_values = _convert(pending)
        for index, reject in bad_values.items():
            problems.setdefault(index, []).append(reject)
        if pending:
            chunks.extend(pending)
            parts.append(group_columns)
    batch = DecodedBatch(bars=empty_bars(), events=len(events), ignored=ignored)
    rejected: dict[int, list[dict[str, Any]]] = {}
    columns = [np.concatenate(col) for col in zip(*parts, strict=True)] if parts else []
    if chunks:
        batch.bars, batch.bars_received, batch.null_minutes, rejected = _assemble(chunks, columns, events)
    for index in sorted(set(problems) | set(rejected)):
        batch.dead_letters.append(_dead_letter(events[index], problems.get(index, []), rejected.get(index, [])))
    return batch


def _dead_letter(event: RawEvent, problems: list[_RejectError], rejected: list[dict[str, Any]]) -> DeadLetter:
    if problems:
        first = problems[0]
        extra = [{"reason": p.reason, "detail": p.detail} for p in problems[1:]]
        return DeadLetter(event, first.reason, first.detail, tuple(extra + rejected))
    return DeadLetter(event, Reason.INVALID_BARS, f"{len(rejected)} bar(s) rejected", tuple(rejected))


def _assemble(
    chunks: list[_Chunk], columns: list[np.ndarray], events: Sequence[RawEvent]
) -> tuple[pa.Table, int, int, dict[int, list[dict[str, Any]]]]:
    lengths = np.fromiter((len(c.ts) for c in chunks), dtype=np.int64, count=len(chunks))
    symbols = sorted({c.symbol for c in chunks})
    symbol_code = {s: i for i, s in enumerate(symbols)}
    ts_raw, o, h, lo, c, v = columns
    chunk_of_row = np.repeat(np.arange(len(chunks)), lengths)
    null_minute, code = _bar_reasons(o, h, lo, c, v, ts_raw)

    rejected: dict[int, list[dict[str, Any]]] = {}
    bad_rows = np.flatnonzero(code)
    if len(bad_rows):
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        for row in bad_rows.tolist():
            chunk = chunks[chunk_of_row[row]]
            rejected.setdefault(chunk.event_index, []).append(
                {
                    "symbol": chunk.symbol,
                    "index": int(row - starts[chunk_of_row[row]]),
                    "ts": int(ts_raw[row]),
                    "reason": _CODE_REASON[int(code[row])],
                }
            )
    keep = (code == 0) & ~null_minute
    rows = np.flatnonzero(keep)
    if len(rows) == 0:
        return empty_bars(), int((~null_minute).sum()), int(null_minute.sum()), rejected

    chunk_rows = chunk_of_row[rows]
    emitted = np.fromiter((ch.emitted_at for ch in chunks), dtype=np.int64, count=len(chunks))[chunk_rows]
    sym_idx = np.fromiter((symbol_code[ch.symbol] for ch in chunks), dtype=np.int32, count=len(chunks))[chunk_rows]
    ts = ts_raw[rows] - ts_raw[rows] % 60  # Yahoo stamps a live last bar mid-minute
    volume = v[rows].astype(np.int64)
    prices = [x[rows] for x in (o, h, lo, c)]
    winners = true_bar_rows(sym_idx, ts, emitted, [volume, prices[3], prices[1], prices[2], prices[0]])
    event_idx = np.fromiter((ch.event_index for ch in chunks), dtype=np.int64, count=len(chunks))[chunk_rows[winners]]
    lineage = [
        pa.array([e.partition for e in events], type=pa.string()),
        pa.array([e.sequence_number for e in events], type=pa.int64()),
        pa.array([e.enqueued_at_ms for e in events], type=pa.int64()),
    ]
    table = pa.Table.from_arrays(
        [
            pa.DictionaryArray.from_arrays(pa.array(sym_idx[winners]), pa.array(symbols, type=pa.string())).cast(
                pa.string()
            ),
            pa.array(ts[winners]).cast(BAR_SCHEMA.field("ts").type),
            *(pa.array(x[winners]) for x in prices),
            pa.array(volume[winners]),
            pa.array(emitted[winners]),
            lineage[0].take(event_idx),
            lineage[1].take(event_idx),
            lineage[2].take(event_idx).cast(BAR_SCHEMA.field("enqueued_at").type),
        ],
        schema=BAR_SCHEMA,
    )
    return table, int((~null_minute).sum()), int(null_minute.sum()), rejected


def events_from_bodies(bodies: Iterable[bytes]) -> list[RawEvent]:
    """Wrap bare bodies as events without lineage (benchmarks, tests)."""
    return [RawEvent(body=b) for b in bodies]
