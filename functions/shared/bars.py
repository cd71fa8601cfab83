"""The bar table: its Arrow schema, the true-bar rule, and Parquet encoding.

Every reader of bars applies :func:`true_bars`: for one (symbol, ts) the bar with the greatest
``emitted_at`` wins. Ties (the same sync delivered twice) are broken on the bar's own values so
that the outcome never depends on delivery order.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

SYMBOL_PATTERN = re.compile(r"[A-Z0-9^][A-Z0-9.^=-]{0,15}")


def valid_symbol(value: object) -> bool:
    r"""A symbol as the bar contract stores it: an ASCII string that the pattern matches whole.

    ``fullmatch``, because ``$`` also matches before a trailing newline (``GOOG\n`` would pass).
    """
    return isinstance(value, str) and value.isascii() and SYMBOL_PATTERN.fullmatch(value) is not None


def normalise_symbol(value: object) -> str | None:
    """The upper-cased symbol if ``value`` is a valid one in any ASCII case, else None.

    ASCII is checked before upper-casing: Unicode case mapping turns ``straße`` into ``STRASSE``.
    """
    if not isinstance(value, str) or not value.isascii():
        return None
    upper = value.upper()
    return upper if valid_symbol(upper) else None


# Bounds of a valid bar, beyond what the contract's prose states: they keep a corrupt value from
# being stored as plausible (a millisecond timestamp, a year-2100 bar, a wrapped int64 volume).
MIN_TS = 946_684_800  # 2000-01-01T00:00:00Z in seconds: no earlier minute bar is served
MAX_TS_AHEAD_S = 86_400  # a bar may be stamped at most a day after its event was emitted
MIN_EMITTED_AT_MS = MIN_TS * 1000
MAX_EMITTED_AHEAD_MS = 86_400_000  # an event may be emitted at most a day after the batch's clock
MAX_PRICE = 1e9  # above any listed price; 1e308 is a corrupt value, not a quote
MAX_VOLUME = 1e15  # far above any minute's volume, and exact in float64 (< 2**53) and int64


PRICE_COLUMNS = ("open", "high", "low", "close")
# Columns that break exact emitted_at ties, most significant first.
TIE_BREAK = ("volume", "close", "high", "low", "open")

BAR_SCHEMA = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("s", tz="UTC"), nullable=False),
        pa.field("open", pa.float64(), nullable=False),
        pa.field("high", pa.float64(), nullable=False),
        pa.field("low", pa.float64(), nullable=False),
        pa.field("close", pa.float64(), nullable=False),
        pa.field("volume", pa.int64(), nullable=False),
        pa.field("emitted_at", pa.int64(), nullable=False),
        pa.field("partition", pa.string()),
        pa.field("sequence_number", pa.int64()),
        pa.field("enqueued_at", pa.timestamp("ms", tz="UTC")),
    ]
)


def empty_bars() -> pa.Table:
    """Return an empty table with the bar schema."""
    return BAR_SCHEMA.empty_table()


def true_bar_rows(
    symbol_code: np.ndarray,
    ts: np.ndarray,
    emitted_at: np.ndarray,
    ties: Sequence[np.ndarray],
) -> np.ndarray:
    """Row indices of the true bars, ordered by (symbol, ts).

    ``symbol_code`` must follow the symbols' sort order. Per (symbol, ts) the greatest
    ``emitted_at`` wins; exact ties (the same sync delivered twice) go to the greatest values in
    ``ties``, so the outcome never depends on delivery order. Minutes are grouped through a dense
    index where the batch spans a sane range (no sort of the whole batch), else through a sort.
    """
    n = len(ts)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    minute = ts // 60
    first = int(minute.min())
    span = int(minute.max()) - first + 1
    groups = (int(symbol_code.max()) + 1) * span
    if groups > 8 * n + 1_000_000:
        order = np.lexsort((*tuple(-t for t in reversed(ties)), -emitted_at, ts, symbol_code))
        key = symbol_code[order].astype(np.int64) * (1 << 40) + minute[order]
        return order[np.concatenate([[True], key[1:] != key[:-1]])]
    gid = symbol_code.astype(np.int64) * span + (minute - first)
    best = np.full(groups, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(best, gid, emitted_at)
    candidates = np.flatnonzero(emitted_at == best[gid])
    cand_gid = gid[candidates]
    tied = np.bincount(cand_gid, minlength=groups)[cand_gid] > 1
    winners = candidates[~tied]
    if tied.any():
        rows = candidates[tied]
        order = rows[np.lexsort((*tuple(-t[rows] for t in reversed(ties)), gid[rows]))]
        keys = gid[order]
        winners = np.concatenate([winners, order[np.concatenate([[True], keys[1:] != keys[:-1]])]])
    return winners[np.argsort(gid[winners], kind="stable")]


def true_bars(table: pa.Table) -> pa.Table:
    """Keep one bar per (symbol, ts): the one with the greatest ``emitted_at``, sorted by symbol, ts."""
    if table.num_rows == 0:
        return table
    symbol = table.column("symbol")
    symbols = pa.array(sorted(pc.unique(symbol).to_pylist()), type=pa.string())
    codes = pc.index_in(symbol, value_set=symbols).to_numpy()

    def col(name: str) -> np.ndarray:
        return table.column(name).to_numpy()

    rows = true_bar_rows(
        codes,
        table.column("ts").cast(pa.int64()).to_numpy(),
        col("emitted_at"),
        [col(name) for name in TIE_BREAK],
    )
    return table.take(rows)


def to_parquet(table: pa.Table) -> bytes:
    """Encode bars as a zstd-compressed Parquet file."""
    sink = io.BytesIO()
    pq.write_table(table.cast(BAR_SCHEMA), sink, compression="zstd")
    return sink.getvalue()


def from_parquet(data: bytes) -> pa.Table:
    """Decode a Parquet file written by :func:`to_parquet` into the bar schema."""
    return pq.read_table(io.BytesIO(data)).select(BAR_SCHEMA.names).cast(BAR_SCHEMA)


def last_bars(table: pa.Table, window: int) -> pa.Table:
    """Return the newest ``window`` true bars of each symbol in ``table``."""
    truth = true_bars(table)
    if truth.num_rows == 0:
        return truth
    keep = []
    for symbol in pc.unique(truth.column("symbol")).to_pylist():
        rows = truth.filter(pc.equal(truth.column("symbol"), symbol))
        keep.append(rows.slice(max(0, rows.num_rows - window)))
    return pa.concat_tables(keep)
