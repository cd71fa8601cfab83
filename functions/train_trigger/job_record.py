"""The last training job the timer submitted: its name, kept in one blob, so a tick asks Azure ML about one job.

The record is written *before* the job is submitted, under the name the job will have, with ETag
concurrency. A tick that dies between the two leaves a record naming a job Azure ML never saw:
the next tick gets a 404 for it and submits again. A record that names a job Azure ML has is
never lost, so single-flight holds across restarts without listing the workspace's jobs.

The same record carries the training mode of that job and when the last *full* retrain was
submitted (:func:`training_mode`): a tick submits ``full`` (from scratch, on a longer history)
when none was submitted within ``TRAINING_FULL_EVERY_HOURS``, else ``warm``. Being written before
the submission, under the same ETag, a full retrain is never submitted twice by racing ticks.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:  # the SDK loads when a record is read: devhost's status and stop never import it
    from azure.storage.blob import ContainerClient

log = logging.getLogger(__name__)

WARM = "warm"  # the job's --mode: its short history, from the champion's weights where it may
FULL = "full"  # from scratch on its longer history, on the slower schedule
MODES = (WARM, FULL)


class RecordConflictError(RuntimeError):
    """A conditional write lost: another tick wrote the record in between."""


@dataclass(frozen=True)
class JobRecord:
    """The job a tick submitted (or was about to): its name, the tick, when, its mode and the last full retrain."""

    job_name: str
    tick: str
    submitted_at: dt.datetime
    mode: str = WARM
    last_full_at: dt.datetime | None = None  # when the last full retrain was submitted; None: never (as far as known)


@dataclass(frozen=True)
class StoredRecord:
    """What the blob holds: the record (None if absent or unreadable) and the ETag to replace it with."""

    record: JobRecord | None
    etag: str | None


def encode_record(record: JobRecord) -> bytes:
    """The blob's bytes: a small JSON document."""
    return orjson.dumps(
        {
            "job_name": record.job_name,
            "tick": record.tick,
            "submitted_at": record.submitted_at.isoformat(),
            "mode": record.mode,
            "last_full_at": None if record.last_full_at is None else record.last_full_at.isoformat(),
        }
    )


def _aware_time(value: object) -> dt.datetime | None:
    """An ISO time with a time zone, or None for anything else."""
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def decode_record(data: bytes) -> JobRecord:
    """Parse the blob's bytes; raise ValueError naming what is wrong."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    name, tick, when = doc.get("job_name"), doc.get("tick"), doc.get("submitted_at")
    if not isinstance(name, str) or not name:
        raise ValueError("job_name missing")
    if not isinstance(when, str):
        raise ValueError("submitted_at missing")
    try:
        submitted_at = dt.datetime.fromisoformat(when)
    except ValueError:
        raise ValueError(f"submitted_at {when!r} is not an ISO time") from None
    if submitted_at.tzinfo is None:
        raise ValueError("submitted_at has no time zone")
    mode = doc.get("mode")
    # older records hold neither; an odd value reads as unknown: no full retrain known, so the next is due
    return JobRecord(
        name,
        tick if isinstance(tick, str) else "",
        submitted_at,
        mode if mode in MODES else WARM,
        _aware_time(doc.get("last_full_at")),
    )


def training_mode(last_full_at: dt.datetime | None, now: dt.datetime, every: dt.timedelta) -> tuple[str, str]:
    """The mode of the job a tick at ``now`` submits, and why: ``full`` when none was submitted within ``every``.

    No full retrain recorded (a new deployment, an older or unreadable record) makes one due; so
    does a recorded time after ``now``, which no tick could have written, so it cannot hold off a
    full retrain for good.
    """
    if last_full_at is None:
        return FULL, "no full retrain recorded"
    if last_full_at > now:
        return FULL, f"the last full retrain is recorded at {last_full_at:%Y-%m-%dT%H:%MZ}, after now"
    last, due = f"{last_full_at:%Y-%m-%dT%H:%MZ}", last_full_at + every
    if now >= due:
        return FULL, f"the last full retrain was submitted at {last}, {every.total_seconds() / 3600:g} h or more ago"
    return WARM, f"the last full retrain was submitted at {last}; the next is due at {due:%Y-%m-%dT%H:%MZ}"


def job_name(now: dt.datetime, tick_id: str) -> str:
    """The name a tick gives its job: when, and the tick, so two ticks never pick the same one."""
    return f"stockcast-train-{now:%Y%m%d-%H%M%S}-{tick_id.removeprefix('tick-')[:12]}"


class JobRecordStore:
    """Reads and conditionally replaces the record blob."""

    def __init__(self, container: ContainerClient, blob_name: str) -> None:
        self.blob = container.get_blob_client(blob_name)

    def read(self, tick_id: str) -> StoredRecord:
        """The record and its ETag; an unreadable record is reported and then replaced by the next write."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            downloader = self.blob.download_blob()
        except ResourceNotFoundError:
            return StoredRecord(None, None)
        data, etag = downloader.readall(), downloader.properties.etag
        try:
            return StoredRecord(decode_record(data), etag)
        except ValueError as exc:
            log.warning("tick=%s %s is unreadable (%s); it will be replaced", tick_id, self.blob.blob_name, exc)
            return StoredRecord(None, etag)

    def write(self, record: JobRecord, etag: str | None) -> None:
        """Create the record, or replace it only if it still has ``etag``; raises RecordConflictError if not."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError

        try:
            if etag is None:
                self.blob.upload_blob(encode_record(record), overwrite=False)
            else:
                self.blob.upload_blob(
                    encode_record(record), overwrite=True, etag=etag, match_condition=MatchConditions.IfNotModified
                )
        except (ResourceModifiedError, ResourceExistsError, ResourceNotFoundError) as exc:
            raise RecordConflictError(f"{self.blob.blob_name} changed since it was read") from exc
