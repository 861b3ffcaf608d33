"""The pieces of addons/app/workers/ that need no processes: summed metrics, forwarded admin flows."""

from __future__ import annotations

from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from addons.app.workers.admin import admin_flow
from addons.app.workers.prometheus import SummedMetrics
from addons.app.workers.supervisor import Supervisor
from addons.chain.admin import from_this_machine
from addons.chain.routing import is_gateway_request
from addons.sinks import metrics

USER = "unit-test-workers"  # a label value no other test uses, so the process-wide registry does not interfere
LABELS = {"provider": "anthropic", "model": "m", "status": "completed", "route": "/v1/messages", "method": "POST",
          "initiator_id": USER, "client": "c"}


def worker_snapshot(interceptions: float, breaker: float) -> Any:
    return [
        (metrics.PREFIX + "interceptions", "counter", "Interceptions by outcome.", "",
         [(metrics.PREFIX + "interceptions_total", LABELS, interceptions),
          (metrics.PREFIX + "interceptions_created", LABELS, 1000.0 + interceptions)]),
        (metrics.PREFIX + "circuit_breaker_state", "gauge", "state", "",
         [(metrics.PREFIX + "circuit_breaker_state", {"provider": USER, "endpoint": "e", "model": "m"}, breaker)]),
    ]


def served(summed: SummedMetrics) -> dict[tuple[str, str], float]:
    supervisor = Supervisor.__new__(Supervisor)
    supervisor.metrics = summed
    text = generate_latest(supervisor.registry()).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if USER in sample.labels.values():
                out[(sample.name, sample.labels.get("initiator_id", sample.labels.get("provider", "")))] = sample.value
    return out


def test_counters_summed_gauges_of_state_the_largest_and_creation_the_earliest() -> None:
    summed = SummedMetrics()
    metrics.INTERCEPTIONS.labels(**LABELS).inc(2)  # the primary's own
    summed.update(1, worker_snapshot(3, 0.5))
    summed.update(2, worker_snapshot(4, 1.0))
    values = served(summed)
    assert values[(metrics.PREFIX + "interceptions_total", USER)] == 9
    assert values[(metrics.PREFIX + "circuit_breaker_state", USER)] == 1.0
    assert values[(metrics.PREFIX + "interceptions_created", USER)] <= 1003.0


def test_a_retired_worker_leaves_its_counters_but_not_its_gauges() -> None:
    summed = SummedMetrics()
    summed.update(1, worker_snapshot(5, 1.0))
    before = served(summed)[(metrics.PREFIX + "interceptions_total", USER)]
    summed.retire(1)
    summed.update(1, worker_snapshot(1, 0.0))  # the restarted worker counts from zero
    after = served(summed)
    assert after[(metrics.PREFIX + "interceptions_total", USER)] == before + 1
    assert after[(metrics.PREFIX + "circuit_breaker_state", USER)] == 0.0


def test_forwarded_admin_flow_keeps_the_callers_machine_and_is_a_gateway_request() -> None:
    request = {"method": b"GET", "path": b"/api/v2/aibridge/keys?limit=5", "content": b"",
               "headers": ((b"authorization", b"Bearer x"),), "peer": ("127.0.0.1", 0)}
    local = admin_flow(request, 8888)
    assert is_gateway_request(local)
    assert local.request.path == "/api/v2/aibridge/keys?limit=5"
    assert local.request.query["limit"] == "5"
    assert local.request.headers["authorization"] == "Bearer x"
    assert from_this_machine(local)
    assert not from_this_machine(admin_flow({**request, "peer": ("192.0.2.1", 0)}, 8888))
