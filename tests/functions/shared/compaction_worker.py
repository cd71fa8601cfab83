"""One compaction run in a process of its own, for the tests that kill it with SIGKILL.

``python -m tests.functions.shared.compaction_worker CONNECTION CONTAINER NOW THREADS [PAUSE_AT]`` prints
``READY`` once imported and connected, then compacts ``raw/`` as of ``NOW`` (unix s, the default margin
and hour budget). With ``PAUSE_AT`` = ``<point>#<n>`` (``listed``, ``merged``, ``written`` or
``deleted``), it prints ``PAUSED <checkpoint>`` at the n-th checkpoint of that kind and sleeps there
until killed; otherwise it prints ``DONE <outcomes as JSON>`` and exits 0.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Sequence

from azure.storage.blob import BlobServiceClient

from functions.shared.compaction import compact

MARGIN_S = 1800.0
MAX_HOURS = 24


def main(argv: Sequence[str]) -> int:
    """Compact once, pausing for good at the checkpoint named, if any."""
    connection, container_name, now, threads, *pause = argv
    container = BlobServiceClient.from_connection_string(connection).get_container_client(container_name)
    kind, _, nth = (pause[0] if pause else "").partition("#")
    seen = 0
    lock = threading.Lock()

    def checkpoint(point: str) -> None:
        nonlocal seen
        if not kind or not point.startswith(kind + " "):
            return
        with lock:
            seen += 1
            hit = seen == int(nth or 1)
        if hit:
            sys.stdout.write(f"PAUSED {point}\n")
            sys.stdout.flush()
            while True:  # until SIGKILL: the state storage holds now is what a crash here leaves
                time.sleep(60)

    sys.stdout.write("READY\n")
    sys.stdout.flush()
    report = compact(container, float(now), MARGIN_S, MAX_HOURS, "worker", int(threads), checkpoint)
    sys.stdout.write(f"DONE {json.dumps(report.outcomes())}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
