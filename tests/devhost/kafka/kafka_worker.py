"""The Kafka trigger in its own process, for the tests that kill it: ``python -m tests.devhost.kafka.kafka_worker``.

It runs in ``$STOCKCAST_HOME`` (the test's private home) on the broker recorded there, prints one
line per batch (``checkpointed BATCH_ID EVENTS``), and exits 0 once the consumer group's lag is 0.
``--crash-before-checkpoint N`` kills the process with SIGKILL after the N-th invocation succeeded
and before its checkpoint; ``--fail-invocations N`` fails the first N invocations as a storage
outage that outlasted the retries would.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from typing import Any

from devhost.app.host import Host, Invocation
from devhost.app.runtime import prepare
from devhost.kafka import broker as kafka
from devhost.kafka.trigger import Batch, BatchDone, KafkaTrigger, TriggerOptions


class FlakyHost(Host):
    """A host whose first ``failures`` invocations fail after their retries."""

    def __init__(self, failures: int) -> None:
        super().__init__(retry_wait_cap=0.01)
        self.failures = failures

    def invoke(self, fn: Any, trigger_value: Any) -> Invocation:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("injected storage outage that outlasted the retries")
        return super().invoke(fn, trigger_value)


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--crash-before-checkpoint", type=int, default=0, metavar="N")
    parser.add_argument("--fail-invocations", type=int, default=0, metavar="N")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    runtime = prepare()
    broker = kafka.running(runtime.home)
    assert broker is not None, "the test starts the broker first"
    invoked = 0

    def before_commit(batch: Batch) -> None:
        nonlocal invoked
        invoked += 1
        if invoked == args.crash_before_checkpoint:
            say(f"crash {batch.batch_id} {batch.events}")
            os.kill(os.getpid(), signal.SIGKILL)

    def on_batch(done: BatchDone) -> None:
        say(f"{'checkpointed' if done.checkpointed else 'stored'} {done.batch.batch_id} {done.batch.events}")

    options = TriggerOptions.from_host_json(max_batch=args.max_batch, min_batch=args.max_batch, max_wait_s=0.2)
    trigger = KafkaTrigger(
        FlakyHost(args.fail_invocations),
        broker.bootstrap,
        broker.topic,
        broker.group,
        options,
        on_batch,
        before_commit,
        owner_lock=kafka.owner_lock(runtime.home),
    )
    stop = threading.Event()
    thread = threading.Thread(target=trigger.run, args=(stop,))
    thread.start()
    deadline = time.monotonic() + args.timeout
    lag = kafka.lag(broker.bootstrap, broker.topic, broker.group).total
    while lag and time.monotonic() < deadline:
        time.sleep(0.2)
        lag = kafka.lag(broker.bootstrap, broker.topic, broker.group).total
    stop.set()
    thread.join()
    say(f"lag {lag}")
    return 0 if lag == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
