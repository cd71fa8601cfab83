"""The workers of a training job that runs on several nodes: who leads, and what the chief shares.

Azure ML's TensorFlow distribution starts the job's command on every node of the job and gives
each one ``TF_CONFIG``: ``{"cluster": {"worker": [host:port, …]}, "task": {"type": "worker",
"index": i}}``. Worker 0 is the *chief*: it alone reads the bars, talks to MLflow (registry reads
included), registers, moves the roles and writes the summary. The others only help it fit.

Every worker fits on exactly the chief's windows: the chief shares them, with the fit's settings
and starting weights, through the strategy's own collective channel (an all-reduce to which only
the chief adds anything is a broadcast, exact to the bit). Reading the bars on each node would not
do: the bars folder is a mount that ingest and compaction keep changing, so two nodes reading it a
second apart can read different bars, then build different windows and splits.

One worker (no ``TF_CONFIG``, or one naming a single worker) creates no strategy at all: the job
runs exactly as it does on one machine.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

STOP = "stop"  # the header key that tells the other workers that the chief fits nothing (more)
# the dtypes arrays travel in, each as one flat buffer (float64 also carries integers exactly below 2**53)
_WIRE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


@dataclass(frozen=True)
class Role:
    """A process's place among the job's workers: how many there are and which one it is (0: the chief)."""

    count: int = 1
    index: int = 0

    @property
    def chief(self) -> bool:
        """Whether this worker leads: reads, logs, registers and writes the summary."""
        return self.index == 0

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def role_from(tf_config: str | None) -> Role:
    """The role ``TF_CONFIG`` gives this process; unset or empty: the only worker.

    A ``chief`` task, where the cluster names one, counts first; parameter servers and evaluators
    are refused, as the job submits none (``TensorFlowDistribution(parameter_server_count=0)``).
    """
    if not tf_config or not tf_config.strip():
        return Role()
    doc = json.loads(tf_config)
    cluster, task = doc.get("cluster") or {}, doc.get("task") or {}
    others = sorted(set(cluster) - {"chief", "worker"})
    if others:
        raise ValueError(f"TF_CONFIG names {others} tasks: the training job runs workers only")
    chiefs, workers = list(cluster.get("chief") or []), list(cluster.get("worker") or [])
    kind, index = task.get("type", "worker"), int(task.get("index", 0))
    if kind not in ("chief", "worker"):
        raise ValueError(f"TF_CONFIG's task type {kind!r} is not chief or worker")
    position = index if kind == "chief" else len(chiefs) + index
    count = len(chiefs) + len(workers)
    if not 0 <= position < max(count, 1):
        raise ValueError(f"TF_CONFIG's task {kind} {index} is not in its cluster of {count}")
    return Role(max(count, 1), position)


class Workers:
    """The job's workers as this process sees them: its role, and the strategy that joins them (None alone)."""

    def __init__(self, role: Role = Role(), strategy: Any = None) -> None:
        self.role = role
        self.strategy = strategy
        # on the chief: whether the others are waiting for a header (they are until a fit is shared)
        self.awaiting = role.count > 1
        self._sum: Any = None  # the traced all-reduce, made on first use

    @classmethod
    def join(cls, tf_config: str | None) -> Workers:
        """Join the workers ``TF_CONFIG`` names: MultiWorkerMirroredStrategy where there are several.

        Must run before any other TensorFlow operation of the process (the strategy configures the
        runtime's collectives); blocks until every worker has started.
        """
        role = role_from(tf_config)
        if role.count == 1:
            return cls(role)
        import tensorflow as tf

        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        if strategy.num_replicas_in_sync != role.count:  # a node with several devices: batches shard by worker
            raise RuntimeError(f"{strategy.num_replicas_in_sync} replicas for {role.count} workers: one a worker only")
        log.info("worker=%s joined %d workers (MultiWorkerMirroredStrategy)", role, role.count)
        return cls(role, strategy)

    @property
    def single(self) -> bool:
        """Whether this is the job's only worker (no strategy, no collectives)."""
        return self.strategy is None

    @property
    def chief(self) -> bool:
        """Whether this worker leads."""
        return self.role.chief

    def scope(self) -> contextlib.AbstractContextManager:
        """The strategy's scope: variables created in it are mirrored on every worker."""
        return contextlib.nullcontext() if self.single else self.strategy.scope()

    def shard(self, n: int) -> slice:
        """The contiguous part of ``n`` items that is this worker's; parts differ by one item at most."""
        base, extra = divmod(n, self.role.count)
        start = self.role.index * base + min(self.role.index, extra)
        return slice(start, start + base + (self.role.index < extra))

    def all_sum(self, values: np.ndarray) -> np.ndarray:
        """The sum of ``values`` over the workers (the same shape and dtype on each); alone: ``values``."""
        if self.single:
            return np.asarray(values)
        if self._sum is None:
            self._sum = _all_sum_function(self.strategy)
        return self.strategy.experimental_local_results(self._sum(np.ascontiguousarray(values)))[0].numpy()

    def from_chief(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The chief's ``arrays``, on every worker; each worker passes arrays of the same shapes and dtypes."""
        if self.single:
            return [np.asarray(a) for a in arrays]
        return self._broadcast([np.asarray(a) for a in arrays], [(np.shape(a), np.asarray(a).dtype) for a in arrays])

    def share(
        self, header: dict[str, Any] | None = None, arrays: Sequence[np.ndarray] = ()
    ) -> tuple[dict[str, Any], list[np.ndarray]]:
        """Send ``header`` (JSON) and ``arrays`` from the chief; the others pass nothing and receive them.

        A header without :data:`STOP` means a fit follows on every worker; one with it, that the chief
        fits nothing (more). Two all-reduces carry the header, one more each dtype the arrays hold.
        """
        if self.single:
            return dict(header or {}), list(arrays)
        if self.chief:
            specs = [(list(np.shape(a)), np.asarray(a).dtype.str) for a in arrays]
            payload = json.dumps({**(header or {}), "_arrays": specs}).encode()
            self.awaiting = False  # they fit now, or stop
        else:
            payload = b""
        size = int(self._broadcast([np.array([len(payload)], np.float64)], [((1,), np.dtype(np.float64))])[0][0])
        raw = np.frombuffer(payload, np.uint8).astype(np.float32) if self.chief else None
        raw = self._broadcast([raw], [((size,), np.dtype(np.float32))])[0]
        received = json.loads(raw.astype(np.uint8).tobytes())
        specs = [(tuple(shape), np.dtype(kind)) for shape, kind in received.pop("_arrays")]
        values = self._broadcast([np.asarray(a) for a in arrays] if self.chief else [None] * len(specs), specs)
        return received, values

    def stop(self, reason: str) -> None:
        """On the chief, where the others wait for a header: tell them that nothing (more) is fitted, and why."""
        if self.chief and self.awaiting and not self.single:
            log.info("worker=%s telling the other workers to stop: %s", self.role, reason)
            self.share({STOP: True, "reason": reason})

    @contextlib.contextmanager
    def leading(self) -> Iterator[Workers]:
        """The chief's whole run: however it ends, workers still waiting for a header are told to stop."""
        try:
            yield self
        except BaseException as exc:
            try:
                self.stop(f"the chief failed before fitting: {type(exc).__name__}: {exc}")
            except Exception:  # the original error is the one to report; the others fail when the chief exits
                log.exception("worker=%s could not tell the other workers to stop", self.role)
            raise
        self.stop("the chief has nothing to fit")

    def _broadcast(self, arrays: Sequence[np.ndarray | None], specs: Sequence[tuple[tuple, np.dtype]]) -> list:
        """The chief's ``arrays`` (None elsewhere) of the shapes and dtypes ``specs``: one all-reduce per wire dtype."""
        out: list[np.ndarray | None] = [None] * len(specs)
        for wire in _WIRE_DTYPES:
            picked = [i for i, (_, dtype) in enumerate(specs) if _wire_dtype(dtype) == wire]
            sizes = [int(np.prod(specs[i][0], dtype=np.int64)) for i in picked]
            if not sum(sizes):
                for i in picked:
                    out[i] = np.zeros(specs[i][0], specs[i][1])
                continue
            if self.chief:
                flat = np.concatenate([np.asarray(arrays[i], dtype=wire).reshape(-1) for i in picked])
            else:  # adding zeros leaves the chief's values exactly as they are
                flat = np.zeros(sum(sizes), wire)
            total = self.all_sum(flat)
            for i, part in zip(picked, np.split(total, np.cumsum(sizes)[:-1]), strict=True):
                out[i] = part.reshape(specs[i][0]).astype(specs[i][1], copy=False)
        return out


def _wire_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype an array of ``dtype`` travels in: float32 stays float32; everything else goes as float64."""
    return _WIRE_DTYPES[0] if np.dtype(dtype) == _WIRE_DTYPES[0] else _WIRE_DTYPES[1]


def _all_sum_function(strategy: Any) -> Any:
    """A traced all-reduce (sum) of one tensor over the workers of ``strategy`` (eager collectives are slow)."""
    import tensorflow as tf

    def add(tensor: Any) -> Any:
        # tf.identity places the value on this worker's device: a traced input has none to reduce from
        return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(tensor))

    return tf.function(lambda tensor: strategy.run(add, args=(tensor,)), reduce_retracing=True)
