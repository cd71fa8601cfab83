"""Compaction of raw/: the pure core pinned by tables, and on real Azurite lossless, idempotent and kill-safe."""

from __future__ import annotations

import io
import logging
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient

from functions.shared.bars import BAR_SCHEMA, to_parquet, true_bars
from functions.shared.compaction import (
    UNREADABLE_COUNT_METADATA,
    UNREADABLE_METADATA,
    Hour,
    compact,
    compact_hour,
    encode_compacted,
    group_hours,
    is_closed,
    next_covers,
    plan,
    unreadable_metadata,
)
from functions.shared.rebuild import (  # the reader's side of the layout: what readers skip
    COMPACTED_NAME,
    MANIFEST_KEY,
    CorruptBlobError,
    bar_blobs_to_read,
    covered_by,
    decode_bars,
    manifest,
    read_bar_blobs,
    rebuild_from_raw,
)
from training_job.data import read_bars

ROOT = Path(__file__).resolve().parents[3]
HOUR = 3600
MARGIN = 1800.0
DAY = "raw/date=2026-11-02"
H13, H14, H15, H16 = (f"{DAY}/hour={h}/" for h in (13, 14, 15, 16))
START = {H13: 1_793_624_400, H14: 1_793_628_000, H15: 1_793_631_600, H16: 1_793_635_200}
# 16:40 UTC: hours 13-15 ended more than 30 minutes ago (closed); hour 16 is still open
NOW = START[H16] + 40 * 60
T0 = START[H13]
BAD = b"PAR1\x00 a torn write"


# --- the pure core --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "margin", "closed"),
    [
        (START[H15] + HOUR + MARGIN, MARGIN, False),  # exactly the margin after its end: not yet
        (START[H15] + HOUR + MARGIN + 1, MARGIN, True),
        (START[H15] + HOUR, 0.0, False),  # no margin: the hour's last second still counts as open
        (START[H15] + HOUR + 1, 0.0, True),
        (START[H15] + 30 * 60, MARGIN, False),  # the hour itself
        (NOW, MARGIN, True),
    ],
)
def test_an_hour_is_closed_only_more_than_the_margin_after_its_end(now, margin, closed):
    """is_closed: strictly more than ``margin`` seconds after the hour's end."""
    assert is_closed(START[H15], now, margin) is closed


@pytest.mark.parametrize(
    ("names", "covers", "expected"),
    [
        (["d/a", "d/b", f"d/{COMPACTED_NAME}"], {"d": frozenset({"a"})}, ["d/b", f"d/{COMPACTED_NAME}"]),
        (["d/a", "e/a"], {"d": frozenset({"a"})}, ["e/a"]),  # a manifest covers its own folder only
        (["d/a", "d/x/a"], {"d": frozenset({"a"})}, ["d/x/a"]),  # nor a deeper one
        (["d/a", "d/b"], {}, ["d/a", "d/b"]),  # no compacted blob: everything is read
        (["d/a"], {"d": frozenset()}, ["d/a"]),  # a manifest that covers nothing
        ([f"d/{COMPACTED_NAME}"], {"d": frozenset({COMPACTED_NAME})}, [f"d/{COMPACTED_NAME}"]),
    ],
)
def test_the_manifest_rule_skips_exactly_the_covered_names(names, covers, expected):
    """A reader reads every name but those the compacted blob of the same folder covers."""
    assert bar_blobs_to_read(names, covers) == expected


@pytest.mark.parametrize(
    ("metadata", "covers", "unreadable"),
    [
        ({MANIFEST_KEY: b'{"version":1,"covers":["a","b"],"unreadable":["c"]}'}, {"a", "b"}, {"c"}),
        ({MANIFEST_KEY: b'{"covers":["a","x/y",7,"",' + b'"' + COMPACTED_NAME.encode() + b'"]}'}, {"a"}, set()),
        ({MANIFEST_KEY: b"not json"}, set(), set()),
        ({MANIFEST_KEY: b'{"covers":"a"}'}, set(), set()),
        ({MANIFEST_KEY: b"[1]"}, set(), set()),
        ({b"other": b"1"}, set(), set()),
        (None, set(), set()),
    ],
)
def test_a_manifest_names_plain_names_of_its_folder_or_nothing(metadata, covers, unreadable):
    """Garbled, absent or odd entries cover nothing (the safe failure: those blobs are read too)."""
    assert manifest(metadata) == {"covers": covers, "unreadable": unreadable}


@pytest.mark.parametrize(
    ("old", "listed", "merged", "expected"),
    [
        ({"a", "b"}, {"b", "c"}, ["c"], {"b", "c"}),  # a was deleted: dropped; b not deleted yet: kept
        (set(), {"a"}, ["a"], {"a"}),
        ({"a"}, {"a"}, [], {"a"}),  # a rerun after a kill before the deletes keeps covering it
        ({"a"}, set(), [], set()),
    ],
)
def test_the_new_manifest_keeps_what_is_still_listed_and_adds_what_was_merged(old, listed, merged, expected):
    """next_covers: the old names still listed, plus those merged."""
    assert next_covers(frozenset(old), frozenset(listed), merged) == expected


def _hour(prefix: str, names: set[str], compacted: bool = False, unreadable: set[str] | None = None, count=0):
    return Hour(
        prefix, START[prefix], frozenset(names), compacted, None if unreadable is None else frozenset(unreadable), count
    )


@pytest.mark.parametrize(
    ("listing", "expected"),
    [
        ([(f"{H13}a.parquet", None), (f"{H13}b.parquet", None)], [_hour(H13, {"a.parquet", "b.parquet"})]),
        (
            [(f"{H14}{COMPACTED_NAME}", {UNREADABLE_METADATA: "x.parquet", UNREADABLE_COUNT_METADATA: "1"})],
            [_hour(H14, set(), True, {"x.parquet"}, 1)],
        ),
        ([(f"{H14}{COMPACTED_NAME}", {})], [_hour(H14, set(), True)]),  # no record: nothing known undecodable
        ([("raw/a.parquet", None), ("raw/date=2026-02-30/hour=01/a.parquet", None)], []),  # not a host's hour
        ([(f"{H13}deeper/a.parquet", None)], []),  # only blobs directly in the hour folder
        ([(f"{H15}a", None), (f"{H13}a", None)], [_hour(H13, {"a"}), _hour(H15, {"a"})]),  # oldest first
    ],
)
def test_a_listing_groups_into_hour_folders(listing, expected):
    """group_hours: blobs directly in host-named hour folders, the compacted blob's record of undecodable ones."""
    assert group_hours(listing) == expected


def test_the_plan_takes_closed_hours_with_work_oldest_first_and_bounded():
    """Open hours, done hours and hours of undecodable blobs only are left; an overflowing hour goes last."""
    hours = [
        _hour(H13, {"a"}, True, set(), 5),  # more undecodable blobs than recorded: busy on every run
        _hour(H14, {"bad"}, True, {"bad"}, 1),  # only a recorded undecodable blob: nothing to do
        _hour(H15, {"new"}, True, set()),
        _hour(H16, {"a"}),  # open
        Hour(f"{DAY}/hour=12/", START[H13] - HOUR, frozenset({"a"}), False),
        Hour(f"{DAY}/hour=11/", START[H13] - 2 * HOUR, frozenset(), True, frozenset()),  # compacted, nothing left
    ]
    chosen, left = plan(hours, NOW, MARGIN, 10)
    assert [h.prefix for h in chosen] == [f"{DAY}/hour=12/", H15, H13]
    assert left == 0
    chosen, left = plan(hours, NOW, MARGIN, 1)
    assert ([h.prefix for h in chosen], left) == ([f"{DAY}/hour=12/"], 2)


@pytest.mark.parametrize(
    ("names", "recorded"),
    [
        (["b.parquet", "a.parquet"], "a.parquet b.parquet"),
        ([], ""),
        ([f"{i:040d}.parquet" for i in range(200)], ""),  # past the metadata budget: the count alone
        (["naïve.parquet"], ""),  # not printable ASCII: cannot be a header value
    ],
)
def test_undecodable_blobs_are_named_in_metadata_when_they_fit(names, recorded):
    """unreadable_metadata names them space-separated within 4 KiB of ASCII, and always counts them."""
    assert unreadable_metadata(names) == {UNREADABLE_METADATA: recorded, UNREADABLE_COUNT_METADATA: str(len(names))}


def test_the_compacted_blob_is_a_bars_blob_carrying_its_manifest():
    """encode_compacted decodes as bars, and covered_by reads back exactly the names given."""
    table = table_of([("AAA", T0, 10.0, 1, 5)])
    data = encode_compacted(table, ["b", "a"], ["c"])
    assert values(decode_bars(data)) == values(table)
    assert covered_by(data) == {"a", "b"}
    assert manifest(pq.ParquetFile(io.BytesIO(data)).metadata.metadata)["unreadable"] == {"c"}
    assert covered_by(BAD) == frozenset()


# --- storage: fixtures and the oracle --------------------------------------------------------------

Row = tuple[str, int, float, int, int]  # symbol, ts, close, volume, emitted_at


def table_of(rows: list[Row]) -> pa.Table:
    """Bars from (symbol, ts, close, volume, emitted_at); open = close, high/low one either side."""
    return pa.Table.from_pylist(
        [
            {"symbol": s, "ts": t, "open": c, "high": c + 1, "low": c - 1, "close": c, "volume": v, "emitted_at": e}
            for s, t, c, v, e in rows
        ],
        schema=pa.schema([f.with_type(pa.int64()) if f.name == "ts" else f for f in BAR_SCHEMA]),
    ).cast(BAR_SCHEMA)


def values(table: pa.Table) -> dict[tuple[str, int], tuple]:
    """(symbol, ts) -> (open, high, low, close, volume, emitted_at) of each row."""
    return {
        (r["symbol"], int(r["ts"].timestamp())): (
            r["open"],
            r["high"],
            r["low"],
            r["close"],
            r["volume"],
            r["emitted_at"],
        )
        for r in table.to_pylist()
    }


def oracle(batches: list[list[Row]]) -> dict[tuple[str, int], tuple]:
    """The true bars by the rule as the contract states it, computed without the code under test."""
    best: dict[tuple[str, int], tuple] = {}
    for rows in batches:
        for s, t, c, v, e in rows:
            bar = (c, c + 1, c - 1, c, v, e)
            # greatest emitted_at, then volume, close, high, low, open (bars.TIE_BREAK)
            rank = lambda b: (b[5], b[4], b[3], b[1], b[2], b[0])  # noqa: E731
            if (s, t) not in best or rank(bar) > rank(best[(s, t)]):
                best[(s, t)] = bar
    return best


def seed() -> dict[str, list[list[Row]]]:
    """Batches per hour folder: overlapping revisions within and across hours, an exact tie, a stale replay."""
    out: dict[str, list[list[Row]]] = {}
    for h, prefix in enumerate((H13, H14, H15, H16)):
        batches = []
        for j in range(6):
            emitted = (START[prefix] + 60 * j) * 1000
            minutes = range(10 * h + j, 10 * h + j + 8)  # every batch re-sends the last minutes, revised
            batches.append(
                [
                    (s, T0 + 60 * m, 100.0 + m + j / 10 + k, 10 + j, emitted)
                    for m in minutes
                    for k, s in enumerate(("AAA", "BBB"))
                ]
            )
        out[prefix] = batches
    # an exact emitted_at tie in one hour: the greater volume wins, whichever blob holds it
    out[H14].append([("AAA", T0 + 60 * 12, 500.0, 99, (START[H14] + 60 * 5) * 1000)])
    # a replay written later (hour 15) of an hour-13 minute, emitted earlier: the older folder's bar stays true
    out[H15].append([("AAA", T0 + 60 * 3, 1.5, 1, (START[H13] - 60) * 1000)])
    return out


def upload(container: ContainerClient, batches: dict[str, list[list[Row]]]) -> dict[str, list[str]]:
    """Write each batch as its own raw blob, named as the host names them; return the names per hour."""
    names: dict[str, list[str]] = {}
    for prefix, rows in batches.items():
        for i, batch in enumerate(rows):
            name = f"{prefix}{i:02d}-{random.Random(f'{prefix}{i}').getrandbits(64):016x}.parquet"
            container.upload_blob(name, _parquet(batch))
            names.setdefault(prefix, []).append(name)
    return names


def _parquet(rows: list[Row]) -> bytes:
    """A raw blob as ingest writes it."""
    return to_parquet(table_of(rows))


def read_all(container: ContainerClient) -> dict[tuple[str, int], tuple]:
    """The true bars a reader of raw/ sees (the manifest rule, undecodable blobs skipped)."""
    tables = []
    for _, data in read_bar_blobs(container):
        try:
            tables.append(decode_bars(data))
        except CorruptBlobError:
            continue
    return values(true_bars(pa.concat_tables(tables))) if tables else {}


def listing(container: ContainerClient, prefix: str = "raw/") -> dict[str, str]:
    """Blob name -> ETag under ``prefix``."""
    return {b.name: b.etag for b in container.list_blobs(name_starts_with=prefix)}


def everything(batches: dict[str, list[list[Row]]]) -> list[list[Row]]:
    return [rows for hour in batches.values() for rows in hour]


@pytest.fixture
def seeded(container) -> Iterator[tuple[ContainerClient, dict[str, list[list[Row]]]]]:
    """The bars container holding the seed's raw blobs."""
    batches = seed()
    upload(container, batches)
    yield container, batches


# --- storage: what a run does ----------------------------------------------------------------------


@pytest.mark.integration
def test_compaction_is_lossless_and_leaves_one_blob_per_closed_hour(seeded):
    """Bars read before == after == the oracle; each closed hour is one blob; the open hour is untouched."""
    container, batches = seeded
    truth = oracle(everything(batches))
    assert read_all(container) == truth
    assert truth[("AAA", T0 + 60 * 12)][4] == 99  # the exact tie went to the greater volume
    assert truth[("AAA", T0 + 60 * 3)][3] != 1.5  # the stale replay lost to the older folder's bar
    open_before = listing(container, H16)

    report = compact(container, NOW, MARGIN, 24, "t-lossless")

    assert read_all(container) == truth
    assert report.outcomes() == {"compacted": 3, "cleaned": 0, "unchanged": 0, "conflict": 0, "failed": 0}
    assert (report.total("merged"), report.total("deleted"), report.left_over) == (6 + 7 + 7, 6 + 7 + 7, 0)
    for prefix in (H13, H14, H15):
        assert list(listing(container, prefix)) == [f"{prefix}{COMPACTED_NAME}"]
        compacted = container.download_blob(f"{prefix}{COMPACTED_NAME}").readall()
        assert values(decode_bars(compacted)) == {k: v for k, v in oracle(batches[prefix]).items()}
    assert listing(container, H16) == open_before
    sizes = sum(len(container.download_blob(f"{p}{COMPACTED_NAME}").readall()) for p in (H13, H14, H15))
    assert report.total("bytes_written") == sizes


@pytest.mark.integration
def test_a_second_run_changes_nothing(seeded):
    """Idempotent: the run after a complete one chooses no hour and no blob changes."""
    container, batches = seeded
    compact(container, NOW, MARGIN, 24, "t-first")
    before = listing(container)
    again = compact(container, NOW, MARGIN, 24, "t-again")
    assert (again.hours, again.left_over) == ((), 0)
    assert listing(container) == before
    assert read_all(container) == oracle(everything(batches))


@pytest.mark.integration
def test_a_late_blob_in_a_compacted_hour_is_read_meanwhile_and_merged_next_run(seeded):
    """A batch landing in a compacted hour is uncovered, so read at once; the next run merges and deletes it."""
    container, batches = seeded
    compact(container, NOW, MARGIN, 24, "t-first")
    late = [("AAA", T0 + 60 * 14, 777.0, 5, (START[H14] + 3 * HOUR) * 1000), ("CCC", T0, 9.0, 1, T0 * 1000)]
    container.upload_blob(f"{H14}late.parquet", _parquet(late))
    truth = oracle([*everything(batches), late])
    assert read_all(container) == truth
    assert truth[("AAA", T0 + 60 * 14)][3] == 777.0

    report = compact(container, NOW, MARGIN, 24, "t-late")

    assert [(h.hour, h.outcome, h.merged, h.deleted) for h in report.hours] == [(H14, "compacted", 1, 1)]
    assert list(listing(container, H14)) == [f"{H14}{COMPACTED_NAME}"]
    assert covered_by(container.download_blob(f"{H14}{COMPACTED_NAME}").readall()) == {"late.parquet"}
    assert read_all(container) == truth


@pytest.mark.integration
def test_an_unreadable_blob_is_never_covered_nor_deleted_and_stops_no_run(seeded, caplog):
    """The torn blob stays, uncovered, named in a warning and in the metadata; later runs leave the hour be."""
    container, batches = seeded
    container.upload_blob(f"{H13}torn.parquet", BAD)
    with caplog.at_level(logging.WARNING, logger="functions.shared.compaction"):
        report = compact(container, NOW, MARGIN, 24, "t-torn")
    assert f"run=t-torn leaving unreadable {H13}torn.parquet uncompacted" in caplog.text
    assert report.hours[0].unreadable == ("torn.parquet",)
    assert container.download_blob(f"{H13}torn.parquet").readall() == BAD
    compacted = container.get_blob_client(f"{H13}{COMPACTED_NAME}")
    assert "torn.parquet" not in covered_by(compacted.download_blob().readall())
    assert compacted.get_blob_properties().metadata == {
        UNREADABLE_METADATA: "torn.parquet",
        UNREADABLE_COUNT_METADATA: "1",
    }
    assert sorted(listing(container, H13)) == [f"{H13}{COMPACTED_NAME}", f"{H13}torn.parquet"]
    assert read_all(container) == oracle(everything(batches))
    assert compact(container, NOW, MARGIN, 24, "t-torn-again").hours == ()


@pytest.mark.integration
def test_an_hour_of_only_an_unreadable_blob_gets_an_empty_compacted_blob_recording_it(container):
    """So the listing shows the hour has nothing left: the next run does not download the torn blob again."""
    container.upload_blob(f"{H13}torn.parquet", BAD)
    report = compact(container, NOW, MARGIN, 24, "t-only-torn")
    assert [(h.outcome, h.unreadable, h.rows) for h in report.hours] == [("compacted", ("torn.parquet",), 0)]
    assert sorted(listing(container)) == [f"{H13}{COMPACTED_NAME}", f"{H13}torn.parquet"]
    assert compact(container, NOW, MARGIN, 24, "t-only-torn-again").hours == ()


@pytest.mark.integration
def test_a_compacted_blob_that_does_not_decode_is_never_overwritten(seeded):
    """It is the only copy of the bars it covered: the hour is reported failed and left exactly as it is."""
    container, _ = seeded
    container.upload_blob(f"{H13}{COMPACTED_NAME}", BAD)
    before = listing(container, H13)
    report = compact(container, NOW, MARGIN, 24, "t-bad-compacted")
    assert report.outcomes()["failed"] == 1 and report.outcomes()["compacted"] == 2
    assert listing(container, H13) == before
    assert container.download_blob(f"{H13}{COMPACTED_NAME}").readall() == BAD


@pytest.mark.integration
def test_the_budget_takes_the_oldest_hours_and_the_next_run_the_rest(seeded):
    """max_hours=2: hours 13 and 14 first, one left over; then hour 15."""
    container, batches = seeded
    first = compact(container, NOW, MARGIN, 2, "t-budget-1")
    assert ([h.hour for h in first.hours], first.left_over) == ([H13, H14], 1)
    second = compact(container, NOW, MARGIN, 2, "t-budget-2")
    assert ([h.hour for h in second.hours], second.left_over) == ([H15], 0)
    assert read_all(container) == oracle(everything(batches))


@pytest.mark.integration
def test_a_run_that_loses_the_race_for_an_hour_deletes_nothing(seeded, runtime):
    """Another run writes the hour between our read and our write: ours fails on the ETag and deletes nothing."""
    container, batches = seeded
    extra = [("AAA", T0 + 60 * 5, 42.0, 1, (START[H13] + 2 * HOUR) * 1000)]
    raced = False

    def rival(point: str) -> None:
        nonlocal raced
        if point == f"merged {H13}" and not raced:
            raced = True
            container.upload_blob(f"{H13}rival-saw.parquet", _parquet(extra))
            compact(container, NOW, MARGIN, 24, "t-rival")

    with ThreadPoolExecutor(max_workers=4) as pool:
        outcome = compact_hour(container, H13, "t-ours", pool, rival)
    assert raced and outcome.outcome == "conflict" and outcome.deleted == 0
    assert list(listing(container, H13)) == [f"{H13}{COMPACTED_NAME}"]
    assert read_all(container) == oracle([*everything(batches), extra])


@pytest.mark.integration
def test_a_reader_that_lists_before_a_compaction_and_downloads_after_reads_again(seeded, runtime):
    """A raw blob gone between the reader's listing and its download (compacted) makes it list again: no bar lost."""
    container, batches = seeded
    fired = []

    def compact_first(request) -> None:
        url = request.http_request.url
        in_hour = "hour%3D13/" in url or "hour=13/" in url
        if request.http_request.method == "GET" and "comp=list" not in url and in_hour and not fired:
            fired.append(url)
            compact(container, NOW, MARGIN, 24, "t-under-reader")  # deletes the blob about to be downloaded

    reader = BlobServiceClient.from_connection_string(
        runtime.azurite.connection_string, raw_request_hook=compact_first
    ).get_container_client(container.container_name)
    tables = [decode_bars(data) for _, data in read_bar_blobs(reader)]
    assert fired
    assert values(true_bars(pa.concat_tables(tables))) == oracle(everything(batches))


@pytest.mark.integration
def test_readers_read_compacted_blobs_and_the_uncovered_raw_tail(seeded):
    """What devhost reads: one compacted blob per compacted hour, the raw blobs none covers, nothing covered."""
    container, _ = seeded
    compact(container, NOW, MARGIN, 2, "t-list")  # hours 13 and 14
    container.upload_blob(f"{H13}late.parquet", _parquet([("AAA", T0, 1.0, 1, 1_000 * T0)]))
    # a kill between the write and the deletes leaves covered raw blobs behind: still never listed
    container.upload_blob(f"{H14}covered-leftover.parquet", b"never read")
    data = container.download_blob(f"{H14}{COMPACTED_NAME}").readall()
    names = sorted(covered_by(data) | {"covered-leftover.parquet"})
    table = decode_bars(data)
    container.upload_blob(f"{H14}{COMPACTED_NAME}", encode_compacted(table, names, []), overwrite=True)
    expected = [f"{H13}{COMPACTED_NAME}", f"{H13}late.parquet", f"{H14}{COMPACTED_NAME}"]
    expected += sorted(n for n in listing(container) if n.startswith((H15, H16)))
    assert [name for name, _ in read_bar_blobs(container)] == expected


@pytest.mark.integration
def test_latest_rebuilds_from_compacted_hours_as_from_raw_blobs(seeded):
    """rebuild_from_raw gives the same window before and after compaction."""
    container, _ = seeded
    before = values(rebuild_from_raw(container, "AAA", 20, "t-rebuild-1"))
    compact(container, NOW, MARGIN, 24, "t-rebuild")
    assert values(rebuild_from_raw(container, "AAA", 20, "t-rebuild-2")) == before
    assert len(before) == 20


# --- kill -9 mid-way -------------------------------------------------------------------------------


class Worker:
    """``tests.functions.shared.compaction_worker`` in a process of its own, its lines read by a thread."""

    def __init__(self, runtime, container: ContainerClient, threads: int, pause: str | None = None) -> None:
        args = [runtime.azurite.connection_string, container.container_name, str(NOW), str(threads)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.functions.shared.compaction_worker", *args, *([pause] if pause else [])],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout or ():
            self.lines.put(line.strip())

    def line(self, timeout: float = 60.0) -> str:
        """The worker's next line."""
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"worker said nothing in {timeout}s (exit {self.proc.poll()})") from None

    def kill(self, may_have_finished: bool = False) -> None:
        """SIGKILL it, and reap it (a run at full speed may finish between the check and the signal)."""
        os.kill(self.proc.pid, signal.SIGKILL)  # not reaped yet: the pid is still this child's
        assert self.proc.wait(timeout=30) in ((-signal.SIGKILL, 0) if may_have_finished else (-signal.SIGKILL,))

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


def _mirror_to(container: ContainerClient, folder: Path) -> None:
    """Every blob as a file, covered leftovers included: what a mount of raw/ shows the training job."""
    for blob in container.list_blobs(name_starts_with="raw/"):
        path = folder / blob.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(container.download_blob(blob.name).readall())


def _finished(container: ContainerClient, truth: dict) -> None:
    """A rerun completes the work: one blob per closed hour, the oracle's bars, and then nothing left to do."""
    rerun = compact(container, NOW, MARGIN, 24, "t-rerun")
    assert rerun.outcomes()["failed"] == rerun.outcomes()["conflict"] == 0
    for prefix in (H13, H14, H15):
        assert list(listing(container, prefix)) == [f"{prefix}{COMPACTED_NAME}"]
    assert read_all(container) == truth
    assert compact(container, NOW, MARGIN, 24, "t-after").hours == ()


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize(
    "pause",
    [
        "listed#1",  # first hour listed, nothing written
        "merged#1",  # first hour merged in memory, not written
        "written#1",  # first hour's compacted blob written, no raw blob deleted
        "deleted#1",  # mid-deletes: one raw blob of the first hour deleted
        "deleted#4",  # mid-deletes, further on
        "written#2",  # second hour written, its deletes not begun (the first hour done)
        "deleted#9",  # the second hour's deletes under way
    ],
)
def test_a_run_killed_at_any_point_leaves_the_true_bars_and_a_rerun_finishes(seeded, runtime, tmp_path, pause):
    """SIGKILL a compaction paused at a checkpoint: raw/ and a mount of it read the oracle; a rerun completes."""
    container, batches = seeded
    truth = oracle(everything(batches))
    with Worker(runtime, container, threads=1, pause=pause) as worker:
        assert worker.line() == "READY"
        assert worker.line().startswith(f"PAUSED {pause.split('#')[0]} ")
        assert read_all(container) == truth  # while paused
        worker.kill()
    assert read_all(container) == truth
    _mirror_to(container, tmp_path)
    df = read_bars(tmp_path / "raw", now=NOW)
    got = {
        (r.symbol, int(r.ts.timestamp())): (r.open, r.high, r.low, r.close, r.volume, r.emitted_at)
        for r in df.itertuples()
    }
    assert got == truth
    _finished(container, truth)


@pytest.mark.integration
@pytest.mark.slow
def test_runs_killed_at_random_moments_never_lose_or_double_a_bar(container, runtime):
    """SIGKILL at random times (seeded) during full-speed runs: after each, the oracle; then a rerun completes."""
    rng = random.Random(20261102)
    batches = seed()
    for prefix in (H13, H14, H15):  # more blobs per hour: a run lasts long enough to be hit mid-way
        batches[prefix] += [[("DDD", T0 + 60 * (i % 15), float(i + 1), i, 1000 * (T0 + i))] for i in range(20)]
    upload(container, batches)
    truth = oracle(everything(batches))
    with Worker(runtime, container, threads=8) as worker:
        assert worker.line() == "READY"
        started = time.monotonic()
        assert worker.line().startswith("DONE")
        full = time.monotonic() - started
    for _ in range(4):
        for blob in container.list_blobs():
            container.delete_blob(blob.name)
        upload(container, batches)
        with Worker(runtime, container, threads=8) as worker:
            assert worker.line() == "READY"
            time.sleep(rng.uniform(0, full))
            if worker.proc.poll() is None:
                worker.kill(may_have_finished=True)
        assert read_all(container) == truth
    _finished(container, truth)
