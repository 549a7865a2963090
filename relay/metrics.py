"""Prometheus metrics (DESIGN §7): prefix ``relay_``, base units, bounded labels only.

Labels are model, status, outcome, code class and operation; never a key, task id or URL. The two
labels whose values come from outside the relay are folded into known sets by the metrics
themselves, so no call site can forget: ``model`` (a producer's string) and a rejection's
``code`` (MindVideo's, which can be anything). Everything else is ``other``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from relay import __version__
from relay.schemas import known_models

# Generation tasks run from seconds to an hour; the default buckets stop at 10 s.
TASK_DURATION_BUCKETS_S = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)
HTTP_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Webhook deliveries take milliseconds when healthy and up to a day over the retry schedule.
WEBHOOK_LATENCY_BUCKETS_S = (
    *(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    *(300, 1800, 7200, 21600, 43200, 86400, 172800),
)
# Event-loop lag (relay/loopmonitor.py): from the timer resolution (1 ms) to a loop stuck for
# seconds.
EVENT_LOOP_LAG_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST

OTHER_LABEL = "other"
UNKNOWN_MODEL_LABEL = "unknown"  # a result that names no model
# ``error.code`` values with a label of their own: the relay's (README, "What happens to each
# record"; a test keeps the two in step) and the codes MindVideo is known to send. MindVideo's
# unnamed 4xx answers are ``mindvideo_http_<status>``.
RELAY_ERROR_CODES = frozenset(
    {
        *("empty_value", "record_too_large", "not_utf8", "not_json", "json_too_deep"),
        *("invalid_number", "duplicate_key", "lone_surrogate", "not_object"),
        *("invalid_record_key", "no_idempotency_key", "invalid_request"),
        "idempotency_key_mismatch",
        *("metadata_too_large", "invalid_input", "idempotency_conflict", "key_in_use"),
        *("expired", "budget_exceeded", "internal_error", "relay_follow_timeout", "task_lost"),
        *("undecodable_record", "result_too_large"),
    }
)
MINDVIDEO_ERROR_CODES = frozenset(
    {
        *("invalid_request", "invalid_input", "model_not_found", "idempotency_conflict"),
        *("insufficient_credit", "unauthorized", "forbidden", "rate_limited", "not_found"),
        *("task_not_found", "task_not_cancellable", "generation_failed", "task_failed"),
    }
)
_MINDVIDEO_HTTP_CODE = re.compile(r"mindvideo_http_[1-5][0-9][0-9]")
M = TypeVar("M", Counter, Gauge, Histogram)


def error_code_label(code: str) -> str:
    """``code`` as a label value: a code the relay or MindVideo is known to use, else ``other``."""
    if code in RELAY_ERROR_CODES or code in MINDVIDEO_ERROR_CODES:
        return code
    return code if _MINDVIDEO_HTTP_CODE.fullmatch(code) else OTHER_LABEL


class BoundedLabels(Generic[M]):
    """A labelled metric whose label values from outside the relay pass through a bound (one per
    label, ``None`` for labels the relay sets itself) before they reach the registry."""

    def __init__(self, metric: M, *bounds: Callable[[str], str] | None) -> None:
        self.metric: M = metric
        self._bounds = bounds

    def labels(self, *values: str) -> M:
        bounded = (v if b is None else b(v) for b, v in zip(self._bounds, values, strict=True))
        child: M = self.metric.labels(*bounded)
        return child


class RelayMetrics:
    """Every metric the relay exports, on its own registry (no process-global state)."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, model_labels: Iterable[str] = ()
    ) -> None:
        """``model_labels``: models the operator wants counted apart (``RELAY_METRICS_MODELS``),
        besides those the relay validates; any other model is counted as ``other``."""
        self.registry = registry or CollectorRegistry()
        self._models = known_models() | set(model_labels) | {UNKNOWN_MODEL_LABEL}
        r = self.registry
        by_model = self.model_label
        self.records_consumed = Counter(
            "relay_records_consumed_total", "Request records read from Kafka.", registry=r
        )
        self.tasks_submitted = BoundedLabels(
            Counter(
                "relay_tasks_submitted_total", "Tasks created on MindVideo.", ["model"], registry=r
            ),
            by_model,
        )
        self.tasks_terminal = BoundedLabels(
            Counter(
                "relay_tasks_terminal_total",
                "Requests that reached a terminal result, by result status.",
                ["model", "status"],
                registry=r,
            ),
            by_model,
            None,
        )
        self.requests_rejected = BoundedLabels(
            Counter(
                "relay_requests_rejected_total",
                "Requests refused by the relay or by MindVideo, by error code.",
                ["code"],
                registry=r,
            ),
            error_code_label,
        )
        self.dead_lettered = Counter(
            "relay_records_dead_lettered_total",
            "Records copied to the dead-letter topic, by reason.",
            ["reason"],
            registry=r,
        )
        # Hostile records (issue 10): what the relay dropped or dead-lettered to keep going.
        self.trace_context_invalid = Counter(
            "relay_trace_context_invalid_total",
            "Malformed W3C traceparent/tracestate headers dropped (from request or result "
            "records), by header.",
            ["header"],
            registry=r,
        )
        self.undecodable_records = Counter(
            "relay_undecodable_records_total",
            "Request records the Kafka client could not parse (a header key that is not UTF-8), "
            "dead-lettered as undecodable_record and skipped.",
            registry=r,
        )
        self.publish_too_large = Counter(
            "relay_publish_too_large_total",
            "Records refused as too large (by the broker, or before sending over a topic's "
            "max.message.bytes), by topic (result, dead_letter) and what was done: without_trace "
            "(the result sent without its trace headers), truncated, dropped. A result too large "
            'even so is in relay_records_dead_lettered_total{reason="result_too_large"}.',
            ["topic", "action"],
            registry=r,
        )
        self.cost_estimated = BoundedLabels(
            Counter(
                "relay_cost_estimated_usd_total",
                "Estimated cost of submitted tasks in USD.",
                ["model"],
                registry=r,
            ),
            by_model,
        )
        self.cost_actual = BoundedLabels(
            Counter(
                "relay_cost_actual_usd_total",
                "Actual cost of terminal tasks in USD.",
                ["model"],
                registry=r,
            ),
            by_model,
        )
        self.submit_latency = Histogram(
            "relay_submit_latency_seconds",
            "Time to create a task on MindVideo, retries included.",
            buckets=HTTP_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.task_duration = BoundedLabels(
            Histogram(
                "relay_task_duration_seconds",
                "Submit to terminal status.",
                ["model"],
                buckets=TASK_DURATION_BUCKETS_S,
                registry=r,
            ),
            by_model,
        )
        self.end_to_end_latency = Histogram(
            "relay_end_to_end_latency_seconds",
            "Request record timestamp to result published.",
            buckets=TASK_DURATION_BUCKETS_S,
            registry=r,
        )
        self.in_flight = Gauge(
            "relay_tasks_in_flight", "Requests being worked on by this process.", registry=r
        )
        self.dedupe_hits = Counter(
            "relay_dedupe_hits_total",
            "Requests whose key was already known, by what was reused.",
            ["outcome"],
            registry=r,
        )
        self.results_published = Counter(
            "relay_results_published_total", "Result records published.", ["type"], registry=r
        )
        self.mindvideo_responses = Counter(
            "relay_mindvideo_responses_total",
            "MindVideo HTTP responses by operation and code class (or 'error' for no response).",
            ["operation", "code_class"],
            registry=r,
        )
        self.mindvideo_retries = Counter(
            "relay_mindvideo_retries_total",
            "Retried MindVideo calls by operation.",
            ["operation"],
            registry=r,
        )
        self.retries = Counter(
            "relay_retries_total",
            "Retries made, by where (scope: mindvideo, lifecycle, consumer) and why (reason: "
            "mindvideo_network, mindvideo_connect, mindvideo_http_5xx, mindvideo_http_429, "
            "redis, kafka, credentials, internal, ...).",
            ["scope", "reason"],
            registry=r,
        )
        self.stream_fallbacks = Counter(
            "relay_event_stream_fallbacks_total",
            "Times following a task fell back from the event stream to polling.",
            registry=r,
        )
        self.offsets_committed = Counter(
            "relay_offset_commits_total", "Offset commits made to Kafka.", registry=r
        )
        self.consumer_lag = Gauge(
            "relay_consumer_lag_records",
            "Request records not yet finished, by partition owned by this process.",
            ["partition"],
            registry=r,
        )
        self.dependency_up = Gauge(
            "relay_dependency_up",
            "Whether a dependency is usable (1) or not (0), as /readyz reports it.",
            ["dependency"],
            registry=r,
        )
        self.event_streams_open = Gauge(
            "relay_event_streams_open",
            "MindVideo event streams held now (bounded by RELAY_MINDVIDEO_MAX_STREAMS); "
            "the other tasks in flight poll.",
            registry=r,
        )
        self.partitions_paused = Gauge(
            "relay_partitions_paused", "Partitions paused because their work is full.", registry=r
        )
        self.event_loop_lag = Histogram(
            "relay_event_loop_lag_seconds",
            "How late a periodic timer woke on the event loop: the delay the loop adds to "
            "everything waiting on it.",
            buckets=EVENT_LOOP_LAG_BUCKETS_S,
            registry=r,
        )
        self.redis_eviction_allowed = Gauge(
            "relay_redis_eviction_allowed",
            "1 when the relay runs against a Redis whose maxmemory-policy may evict its state "
            "(accepted with RELAY_REDIS_ALLOW_EVICTION=true).",
            registry=r,
        )

        # Webhooks (docs/webhooks.md); a dashboard depends on these names and label values.
        # ``origin`` is a configured origin (RELAY_WEBHOOK_DEFAULT_URL, RELAY_WEBHOOK_RATE_LIMITS)
        # or "other": bounded by the operator, never taken from a request.
        self.webhook_attempts = Counter(
            "relay_webhook_attempts_total",
            "Webhook delivery attempts by origin and outcome: success, http_4xx, http_5xx, "
            "timeout, connection_error, refused, gone, error (failed in the relay), "
            "circuit_open (deferred, not attempted).",
            ["origin", "outcome"],
            registry=r,
        )
        self.webhook_delivery_latency = Histogram(
            "relay_webhook_delivery_latency_seconds",
            "Result published (Kafka record timestamp) to a 2xx from the endpoint.",
            buckets=WEBHOOK_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.webhook_pending_retries = Gauge(
            "relay_webhook_pending_retries",
            "Webhook deliveries not finished yet (scheduled or being attempted), all processes.",
            registry=r,
        )
        self.webhook_dead_lettered = Counter(
            "relay_webhook_dead_lettered_total",
            "Webhook deliveries written to the webhook dead-letter topic.",
            registry=r,
        )
        self.webhook_circuit_open_endpoints = Gauge(
            "relay_webhook_circuit_open_endpoints",
            "Endpoints whose circuit breaker is open or half-open in this process.",
            registry=r,
        )
        self.webhook_endpoint_circuit_open = Gauge(
            "relay_webhook_endpoint_circuit_open",
            "Origins whose breaker is open or half-open in this process, by origin label.",
            ["origin"],
            registry=r,
        )
        self.webhook_circuit_transitions = Counter(
            "relay_webhook_circuit_transitions_total",
            "Breaker state changes in this process, by origin label and new state "
            "(open, half_open, closed).",
            ["origin", "state"],
            registry=r,
        )
        self.webhook_rate_limited = Counter(
            "relay_webhook_rate_limited_total",
            "Attempts held by RELAY_WEBHOOK_RATE_LIMITS: waited (slept under a second) or "
            "deferred (given back to Redis, not an attempt).",
            ["origin", "action"],
            registry=r,
        )
        self.webhook_pending_deliveries = Gauge(
            "relay_webhook_pending_deliveries",
            "Webhook deliveries not finished yet, all processes, by origin label.",
            ["origin"],
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "relay_webhook_deliveries_total",
            "Finished webhook deliveries by outcome: delivered, dead_lettered, no_endpoint, gone.",
            ["outcome"],
            registry=r,
        )
        self.webhook_undecodable_results = Counter(
            "relay_webhook_undecodable_results_total",
            "Result records the Kafka client could not parse (a header key that is not UTF-8): "
            "skipped by the webhook intake, not delivered.",
            registry=r,
        )
        self.webhook_unproven_in_flight = Gauge(
            "relay_webhook_unproven_in_flight",
            "Deliveries this process holds for origins without a recent success (capped by "
            "RELAY_WEBHOOK_MAX_UNPROVEN_IN_FLIGHT).",
            registry=r,
        )
        self.webhook_unproven_deferred = Counter(
            "relay_webhook_unproven_deferred_total",
            "Deliveries to origins without a recent success deferred (not attempted) because "
            "RELAY_WEBHOOK_MAX_UNPROVEN_IN_FLIGHT deliveries of such origins were under way.",
            registry=r,
        )
        self.webhook_scheduled = Counter(
            "relay_webhook_scheduled_total",
            "Webhook deliveries scheduled, by path: publish (by the process that published the "
            "result, attempted at once) or intake (from the results topic: results of other "
            "processes, or left unscheduled by a crash or a Redis error).",
            ["path"],
            registry=r,
        )
        self.webhook_internal_errors = Counter(
            "relay_webhook_internal_errors_total",
            "Redis or Kafka errors in the webhook pipeline, by operation (each is retried; "
            "a failed operational event is dropped).",
            ["operation"],
            registry=r,
        )

        # Which version runs where (``relay_build_info{version}``, Python's ``python_info``) and
        # what the process costs its host (``process_cpu_seconds_total``, resident memory, open
        # file descriptors), on this registry like everything else: dashboards and alerts join
        # on the same job and instance labels.
        self.build_info = Info("relay_build", "The running relay's version.", registry=r)
        self.build_info.info({"version": __version__})
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        # --- Spend budgets and reconciliation (issue 13; README "Spend budgets") ---
        # Labels: budget = the rule's name (RELAY_BUDGETS, the operator's), window; never a
        # metadata value. A rule scoped per model or tenant shows its fullest instance.
        by_budget = ["budget", "window"]
        self.budget_limit = Gauge(
            "relay_budget_limit_usd",
            "Spend limit of a budget rule per window.",
            by_budget,
            registry=r,
        )
        self.budget_spent = Gauge(
            "relay_budget_spent_usd",
            "Spend charged to a budget in its current window (estimates of running tasks, "
            "actual costs of ended ones), all relays; the fullest instance of a scoped rule.",
            by_budget,
            registry=r,
        )
        self.budget_reserved = Gauge(
            "relay_budget_reserved_usd",
            "Room reserved in a budget by submits in flight, all relays; the fullest instance.",
            by_budget,
            registry=r,
        )
        self.budget_instances = Gauge(
            "relay_budget_instances",
            "Instances of a budget rule with spend in its current window (models, tenants).",
            by_budget,
            registry=r,
        )
        self.budget_held = Gauge(
            "relay_budget_held_requests",
            "Requests this process holds unsubmitted because a budget has no room.",
            by_budget,
            registry=r,
        )
        self.budget_held_oldest = Gauge(
            "relay_budget_held_oldest_seconds",
            "How long the longest-held request of this process has waited for a budget.",
            by_budget,
            registry=r,
        )
        self.budget_exhausted = Counter(
            "relay_budget_exhausted_total",
            "Requests that found a budget without room (held from then on, or rejected).",
            by_budget,
            registry=r,
        )
        self.budget_lapsed = Counter(
            "relay_budget_reservations_lapsed_total",
            "Reservations whose holder stopped refreshing them (a crash before the submit); "
            "their room went back to the budgets.",
            registry=r,
        )
        self.reconcile_drift = BoundedLabels(
            Gauge(
                "relay_reconcile_drift_usd",
                "Last `relay reconcile`: MindVideo's cost minus the relay's records, by model.",
                ["model"],
                registry=r,
            ),
            by_model,
        )
        self.reconcile_mismatched = BoundedLabels(
            Gauge(
                "relay_reconcile_mismatched_tasks",
                "Last `relay reconcile`: tasks whose status or cost disagree, by model.",
                ["model"],
                registry=r,
            ),
            by_model,
        )
        self.reconcile_last_run = Gauge(
            "relay_reconcile_last_run_timestamp_seconds",
            "When `relay reconcile` last reported (unix seconds; 0 never).",
            registry=r,
        )
        # --- end of the spend block ---

    def model_label(self, model: str | None) -> str:
        """``model`` as a label value: a model the relay validates or the operator listed in
        ``RELAY_METRICS_MODELS``, ``unknown`` when there is none, else ``other``."""
        if not model:
            return UNKNOWN_MODEL_LABEL
        return model if model in self._models else OTHER_LABEL

    def error_code_label(self, code: str) -> str:
        """``code`` as a label value (see ``error_code_label``)."""
        return error_code_label(code)

    def render(self) -> bytes:
        return generate_latest(self.registry)
