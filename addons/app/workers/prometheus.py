"""`/metrics` of a gateway with workers: the primary's metrics plus every worker's last snapshot, summed."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from prometheus_client.metrics_core import Metric

from addons.sinks import metrics

# Gauges where the sum of the workers' values means nothing: the largest one is served.
_MAX_FAMILIES = {metrics.PREFIX + "circuit_breaker_state", metrics.PREFIX + "build_info"}

type Snapshot = list[tuple[str, str, str, str, list[tuple[str, dict[str, str], float]]]]


def snapshot(registry: Any = metrics.REGISTRY) -> Snapshot:
    """The gateway's own metric families (not the process collectors: those are per process)."""
    return _as_snapshot(f for f in registry.collect() if f.name.startswith(metrics.PREFIX))


def _as_snapshot(families: Iterable[Metric]) -> Snapshot:
    return [(f.name, f.type, f.documentation, f.unit, [(s.name, s.labels, s.value) for s in f.samples])
            for f in families]


class SummedMetrics:
    """A collector serving the primary's metrics plus every worker's last snapshot, summed per series.

    A worker that ended leaves its counters behind (`retired`), so a restart never makes a counter
    of the whole gateway go down."""

    def __init__(self) -> None:
        self.workers: dict[int, Snapshot] = {}
        self.retired: Snapshot = []
        self.lock = threading.Lock()

    def update(self, worker: int, snap: Snapshot) -> None:
        with self.lock:
            self.workers[worker] = snap

    def retire(self, worker: int) -> None:
        with self.lock:
            snap = self.workers.pop(worker, None)
            if snap:
                kept = [(n, t, d, u, [s for s in samples if not s[0].endswith("_created")])
                        for n, t, d, u, samples in snap if t in ("counter", "histogram", "summary")]
                self.retired = _merged([self.retired, kept])

    def collect(self) -> Any:
        with self.lock:
            own = list(metrics.REGISTRY.collect())
            workers = [*self.workers.values(), self.retired]
        for name, kind, doc, unit, samples in _merged([_as_snapshot(own), *workers]):
            metric = Metric(name, doc, kind, unit)
            for sample_name, labels, value in samples:
                metric.add_sample(sample_name, labels, value)
            yield metric


def _merged(snapshots: list[Snapshot]) -> Snapshot:
    families: dict[str, tuple[str, str, str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}
    for snap in snapshots:
        for name, kind, doc, unit, samples in snap:
            values = families.setdefault(name, (kind, doc, unit, {}))[3]
            for sample_name, labels, value in samples:
                key = (sample_name, tuple(sorted(labels.items())))
                old = values.get(key)
                if old is None:
                    values[key] = value
                elif sample_name.endswith("_created"):
                    values[key] = min(old, value)
                elif name in _MAX_FAMILIES:
                    values[key] = max(old, value)
                else:
                    values[key] = old + value
    return [(name, kind, doc, unit, [(s, dict(labels), v) for (s, labels), v in values.items()])
            for name, (kind, doc, unit, values) in families.items()]
