"""Pure decoding of Airbyte destination-kafka messages carrying Yahoo Finance 1-minute charts.

One call decodes a whole Event Hubs batch: the envelope and chart are walked per event, the bar
arrays are converted by Arrow in C, and validation and the true-bar rule run vectorised over the
batch. A value of the wrong JSON type costs only its own bar: the chunk holding it is converted
element by element instead. Nothing raises out of :func:`decode_batch`, whatever the bytes: a
batch that raised would be retried for ever and stall its partition. Nothing here touches Azure,
so it is tested and benchmarked on its own.
"""

from __future__ import annotations

import base64
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from functions.shared.bars import (
    BAR_SCHEMA,
    MAX_EMITTED_AHEAD_MS,
    MAX_PRICE,
    MAX_TS_AHEAD_S,
    MAX_VOLUME,
    MIN_EMITTED_AT_MS,
    MIN_TS,
    empty_bars,
    normalise_symbol,
    true_bar_rows,
)

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
    # per-bar reasons, listed under "rejected" of an invalid_bars record (BAD_VALUE_TYPE too)
    PARTIAL_NULL = "partial_null"
    INVALID_TIMESTAMP = "invalid_timestamp"
    NON_FINITE_PRICE = "non_finite_price"
    NON_POSITIVE_PRICE = "non_positive_price"
    PRICE_OUT_OF_RANGE = "price_out_of_range"
    INCONSISTENT_OHLC = "inconsistent_ohlc"
    NEGATIVE_VOLUME = "negative_volume"
    FRACTIONAL_VOLUME = "fractional_volume"
    VOLUME_OUT_OF_RANGE = "volume_out_of_range"


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


class _BadTypeError(Exception):
    """A bar array holds a value that is neither a JSON number nor null."""


@dataclass(slots=True)
class _Chunk:
    """One chart result's arrays, still as the Python lists the JSON parser produced."""

    event_index: int
    symbol: str
    emitted_at: int
    ts: list[Any]
    values: tuple[list[Any], ...]

    def column(self, k: int) -> list[Any]:
        """Column ``k`` of the bar table being built: 0 is ts, then open, high, low, close, volume."""
        return self.ts if k == 0 else self.values[k - 1]


_CONVERT_GROUP = 16  # events parsed before their arrays are converted: keeps the objects in cache
_N_COLUMNS = 1 + len(_QUOTE_FIELDS)
# what the fast path may raise on a value that is not a JSON number; the slow path then decides
_FAST_PATH_ERRORS = (pa.ArrowException, TypeError, ValueError, OverflowError, _BadTypeError)
# bits of the mask of bars holding a non-number, apart: a no-trade minute with a bad timestamp is
# still a skipped no-trade minute, one with a bad value is a rejected bar
_BAD_TS, _BAD_VALUE = 1, 2


def _fast_column(flat: list[Any]) -> np.ndarray:
    """float64 values (NaN for null) of a list of JSON numbers and nulls; raise on anything else."""
    # Inference keeps an all-int list exact as int64 and makes a mixed one double; a str, dict,
    # list, a leading bool or an int beyond int64 raises or infers another type.
    arr = pa.array(flat)
    kind = arr.type
    if kind == pa.int64():
        # every bound is far below 2**53, so a value rounded here was out of bounds already
        return arr.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    if kind == pa.float64():
        out = arr.to_numpy(zero_copy_only=False)
        # Arrow turns a bool met after a float into 1.0 or 0.0: only those values can hide one
        suspects = np.flatnonzero((out == 0.0) | (out == 1.0))
        if len(suspects) and any(type(flat[i]) is bool for i in suspects.tolist()):
            raise _BadTypeError("a bool among numbers")
        return out
    if kind == pa.null():
        return np.full(len(flat), np.nan)
    raise _BadTypeError(f"values of type {kind}")


def _slow_column(values: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """float64 values (NaN for null) and the mask of non-numbers, element by element."""
    out = np.full(len(values), np.nan)
    bad = np.zeros(len(values), dtype=bool)
    for i, x in enumerate(values):
        kind = type(x)  # exact types: bool is a subclass of int but not a JSON number
        if kind is float:
            out[i] = x
        elif kind is int:
            try:
                out[i] = float(x)
            except OverflowError:  # beyond float64: out of every bound, and named so
                out[i] = math.inf if x > 0 else -math.inf
        elif x is not None:
            bad[i] = True
    return out, bad


def _columns(chunks: Sequence[_Chunk]) -> list[np.ndarray]:
    """Convert the chunks' lists in one pass per column; raise on a value that is not a number."""
    return [_fast_column(list(chain.from_iterable(c.column(k) for c in chunks))) for k in range(_N_COLUMNS)]


def _convert(chunks: Sequence[_Chunk]) -> tuple[list[np.ndarray], np.ndarray | None]:
    """The chunks' columns and the mask of bars holding a non-number (None when there is none).

    All chunks are converted at once; only if that raises, one by one, and a chunk that still
    raises element by element, so a bad value costs its own bar and clean data stays fast. The
    mask holds ``_BAD_TS`` and ``_BAD_VALUE`` bits.
    """
    try:
        return _columns(chunks), None
    except _FAST_PATH_ERRORS:
        pass
    parts: list[list[np.ndarray]] = []
    masks: list[np.ndarray] = []
    for chunk in chunks:
        try:
            parts.append(_columns([chunk]))
            masks.append(np.zeros(len(chunk.ts), dtype=np.uint8))
        except _FAST_PATH_ERRORS:
            converted = [_slow_column(chunk.column(k)) for k in range(_N_COLUMNS)]
            parts.append([values for values, _ in converted])
            bad_value = np.logical_or.reduce([mask for _, mask in converted[1:]])
            masks.append(np.where(converted[0][1], _BAD_TS, 0).astype(np.uint8) | np.where(bad_value, _BAD_VALUE, 0))
    return [np.concatenate(col) for col in zip(*parts, strict=True)], np.concatenate(masks)


def _require(mapping: Any, key: str, kind: type, reason: str, where: str) -> Any:
    value = mapping.get(key) if isinstance(mapping, dict) else None
    if not isinstance(value, kind):
        raise _RejectError(reason, f"{where}.{key} missing or not a {kind.__name__}")
    return value


def _as_json(value: Any) -> str:
    """``value`` as JSON text for a detail line; never raises."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:  # orjson reads 1024 levels deep but writes only 255
        return f"<{type(value).__name__} nested too deep to show>"


def _json_number(value: Any) -> int | float | None:
    """``value`` if it is a JSON number (the parser's int or float), else None."""
    return value if type(value) in (int, float) else None


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


def _decode_event(event: RawEvent, index: int, max_emitted_at: int) -> tuple[list[_Chunk], list[_RejectError], bool]:
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
    # exact int (orjson gives a float beyond u64, and bool is an int subclass) of plausible ms:
    # a bar's timestamp is bounded by it, and it decides which bar is true
    if type(emitted_at) is not int or not MIN_EMITTED_AT_MS <= emitted_at <= max_emitted_at:
        detail = f"_airbyte_emitted_at {_as_json(emitted_at)} is not an int of ms in [2000-01-01, now + 1 day]"
        return [], [_RejectError(Reason.INVALID_EMITTED_AT, detail)], False
    try:
        data = _require(doc, "_airbyte_data", dict, Reason.MISSING_CHART, "record")
        chart = _require(data, "chart", dict, Reason.MISSING_CHART, "_airbyte_data")
        if chart.get("error") is not None:
            raise _RejectError(Reason.YAHOO_ERROR, f"chart.error: {_as_json(chart['error'])}")
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
    o: np.ndarray,
    h: np.ndarray,
    lo: np.ndarray,
    c: np.ndarray,
    v: np.ndarray,
    ts: np.ndarray,
    emitted_at: np.ndarray,
    bad: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised validation: (is_null_minute, reason code per bar; 0 = valid).

    ``ts`` is in seconds and ``emitted_at`` (per bar) in ms; ``bad`` marks (``_BAD_TS``,
    ``_BAD_VALUE`` bits) bars holding a value that is not a JSON number (converted to NaN).
    """
    nulls = np.isnan(o).astype(np.int8) + np.isnan(h) + np.isnan(lo) + np.isnan(c) + np.isnan(v)
    null_minute = nulls == 5
    if bad is not None:
        null_minute &= (bad & _BAD_VALUE) == 0  # a non-number is not a null: its bar is rejected
    code = np.zeros(len(o), dtype=np.int8)
    with np.errstate(invalid="ignore"):
        prices = np.stack([o, h, lo, c])
        # NaN fails every comparison, so a null timestamp is invalid here too
        ts_ok = (ts >= MIN_TS) & (ts <= emitted_at / 1000 + MAX_TS_AHEAD_S) & (ts % 1 == 0)
        checks = [
            ((v % 1) != 0, 5),
            (v > MAX_VOLUME, 9),
            (v < 0, 4),
            ((lo > np.minimum(o, c)) | (np.maximum(o, c) > h), 3),
            ((prices > MAX_PRICE).any(axis=0), 8),
            ((prices <= 0).any(axis=0), 2),
            (~np.isfinite(prices).all(axis=0), 1),
            (~ts_ok, 6),
            ((nulls > 0) & ~null_minute, 7),
        ]
    if bad is not None:
        checks.append((bad != 0, 10))
    for mask, value in checks:  # later checks win, so the most basic fault is the one named
        code[mask] = value
    code[null_minute] = 0  # a minute without trades is skipped, whatever its timestamp
    return null_minute, code


_CODE_REASON = {
    1: Reason.NON_FINITE_PRICE,
    2: Reason.NON_POSITIVE_PRICE,
    3: Reason.INCONSISTENT_OHLC,
    4: Reason.NEGATIVE_VOLUME,
    5: Reason.FRACTIONAL_VOLUME,
    6: Reason.INVALID_TIMESTAMP,
    7: Reason.PARTIAL_NULL,
    8: Reason.PRICE_OUT_OF_RANGE,
    9: Reason.VOLUME_OUT_OF_RANGE,
    10: Reason.BAD_VALUE_TYPE,
}


def decode_batch(events: Sequence[RawEvent], now: float | None = None) -> DecodedBatch:
    """Decode a batch of events into its true bars (with lineage) and its dead letters.

    ``now`` is the batch's clock in unix seconds (default: the wall clock); an event emitted more
    than a day after it is dead-lettered. Nothing raises, whatever the bytes: every event is
    ignored (another stream), dead-lettered once, or decoded, and an event with some bad bars is
    both decoded (its valid bars) and dead-lettered (naming the rejected ones).
    """
    now_s = time.time() if now is None else now
    max_emitted_at = int(now_s * 1000) + MAX_EMITTED_AHEAD_MS
    chunks: list[_Chunk] = []
    parts: list[list[np.ndarray]] = []
    bad_parts: list[np.ndarray | None] = []
    problems: dict[int, list[_RejectError]] = {}
    ignored = 0
    for start in range(0, len(events), _CONVERT_GROUP):
        pending: list[_Chunk] = []
        for index in range(start, min(start + _CONVERT_GROUP, len(events))):
            event_chunks, event_problems, is_ignored = _decode_event(events[index], index, max_emitted_at)
            ignored += is_ignored
            pending.extend(event_chunks)
            if event_problems:
                problems[index] = event_problems
        if pending:
            # converting while the parsed objects are still in cache is ~2x faster than at the end
            group_columns, group_bad = _convert(pending)
            chunks.extend(pending)
            parts.append(group_columns)
            bad_parts.append(group_bad)
    batch = DecodedBatch(bars=empty_bars(), events=len(events), ignored=ignored)
    rejected: dict[int, list[dict[str, Any]]] = {}
    if chunks:
        columns = [np.concatenate(col) for col in zip(*parts, strict=True)]
        bad = None
        if any(mask is not None for mask in bad_parts):
            bad = np.concatenate(
                [
                    np.zeros(len(cols[0]), dtype=np.uint8) if mask is None else mask
                    for cols, mask in zip(parts, bad_parts, strict=True)
                ]
            )
        batch.bars, batch.bars_received, batch.null_minutes, rejected = _assemble(chunks, columns, bad, events)
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
    chunks: list[_Chunk], columns: list[np.ndarray], bad: np.ndarray | None, events: Sequence[RawEvent]
) -> tuple[pa.Table, int, int, dict[int, list[dict[str, Any]]]]:
    """Validate the batch's rows, name its rejected bars and build the table of its true bars."""
    lengths = np.fromiter((len(c.ts) for c in chunks), dtype=np.int64, count=len(chunks))
    ts_raw, o, h, lo, c, v = columns
    chunk_of_row = np.repeat(np.arange(len(chunks)), lengths)
    emitted_of_chunk = np.fromiter((ch.emitted_at for ch in chunks), dtype=np.int64, count=len(chunks))
    emitted_of_row = emitted_of_chunk[chunk_of_row]
    null_minute, code = _bar_reasons(o, h, lo, c, v, ts_raw, emitted_of_row, bad)
    rejected = _rejected_bars(chunks, lengths, chunk_of_row, code)
    received, null_minutes = int((~null_minute).sum()), int(null_minute.sum())
    rows = np.flatnonzero((code == 0) & ~null_minute)
    if len(rows) == 0:
        return empty_bars(), received, null_minutes, rejected
    table = _true_bars(chunks, columns, rows, chunk_of_row[rows], emitted_of_row[rows], events)
    return table, received, null_minutes, rejected


def _rejected_bars(
    chunks: list[_Chunk], lengths: np.ndarray, chunk_of_row: np.ndarray, code: np.ndarray
) -> dict[int, list[dict[str, Any]]]:
    """The rejected bars of each event (by event index), each named by symbol, index, ts and reason."""
    rejected: dict[int, list[dict[str, Any]]] = {}
    bad_rows = np.flatnonzero(code)
    if len(bad_rows) == 0:
        return rejected
    # a loop over the rejected rows only: they are rare, and the valid ones never pay for it
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    for row in bad_rows.tolist():
        chunk = chunks[chunk_of_row[row]]
        index = int(row - starts[chunk_of_row[row]])
        rejected.setdefault(chunk.event_index, []).append(
            {
                "symbol": chunk.symbol,
                "index": index,
                "ts": _json_number(chunk.ts[index]),  # as received: it may be no integer at all
                "reason": _CODE_REASON[int(code[row])],
            }
        )
    return rejected


def _true_bars(
    chunks: list[_Chunk],
    columns: list[np.ndarray],
    rows: np.ndarray,
    chunk_rows: np.ndarray,
    emitted: np.ndarray,
    events: Sequence[RawEvent],
) -> pa.Table:
    """The table (``BAR_SCHEMA``) of the true bars among the valid ``rows``, with their lineage."""
    ts_raw, o, h, lo, c, v = columns
    symbols = sorted({ch.symbol for ch in chunks})
    symbol_code = {s: i for i, s in enumerate(symbols)}
    sym_idx = np.fromiter((symbol_code[ch.symbol] for ch in chunks), dtype=np.int32, count=len(chunks))[chunk_rows]
    ts = ts_raw[rows].astype(np.int64)  # exact: validated as whole seconds in bounds
    ts -= ts % 60  # Yahoo stamps a live last bar mid-minute
    volume = v[rows].astype(np.int64)  # exact: validated as a whole number <= 1e15
    prices = [x[rows] for x in (o, h, lo, c)]
    winners = true_bar_rows(sym_idx, ts, emitted, [volume, prices[3], prices[1], prices[2], prices[0]])
    event_idx = np.fromiter((ch.event_index for ch in chunks), dtype=np.int64, count=len(chunks))[chunk_rows[winners]]
    return pa.Table.from_arrays(
        [
            pa.DictionaryArray.from_arrays(pa.array(sym_idx[winners]), pa.array(symbols, type=pa.string())).cast(
                pa.string()
            ),
            pa.array(ts[winners]).cast(BAR_SCHEMA.field("ts").type),
            *(pa.array(x[winners]) for x in prices),
            pa.array(volume[winners]),
            pa.array(emitted[winners]),
            *_lineage(events, event_idx),
        ],
        schema=BAR_SCHEMA,
    )


def _lineage(events: Sequence[RawEvent], event_idx: np.ndarray) -> list[pa.Array]:
    """The partition, sequence number and enqueued time of the event of each bar."""
    # built once per event and taken per bar: the per-bar Python work stays at zero
    partition = pa.array([e.partition for e in events], type=pa.string())
    sequence = pa.array([e.sequence_number for e in events], type=pa.int64())
    enqueued = pa.array([e.enqueued_at_ms for e in events], type=pa.int64())
    return [
        partition.take(event_idx),
        sequence.take(event_idx),
        enqueued.take(event_idx).cast(BAR_SCHEMA.field("enqueued_at").type),
    ]


def events_from_bodies(bodies: Iterable[bytes]) -> list[RawEvent]:
    """Wrap bare bodies as events without lineage (benchmarks, tests)."""
    return [RawEvent(body=b) for b in bodies]
