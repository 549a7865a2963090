"""Prometheus metrics (DESIGN §7): prefix ``relay_``, base units, bounded labels only.

Labels are model, status, outcome, code class and operation; never a key, task id or URL.
"""

from __future__ import annotations

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

# Generation tasks run from seconds to an hour; the default buckets stop at 10 s.
TASK_DURATION_BUCKETS_S = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)
HTTP_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Webhook deliveries take milliseconds when healthy and up to a day over the retry schedule.
WEBHOOK_LATENCY_BUCKETS_S = (
    *(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    *(300, 1800, 7200, 21600, 43200, 86400, 172800),
)
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST


class RelayMetrics:
    """Every metric the relay exports, on its own registry (no process-global state)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.records_consumed = Counter(
            "relay_records_consumed_total", "Request records read from Kafka.", registry=r
        )
        self.tasks_submitted = Counter(
            "relay_tasks_submitted_total", "Tasks created on MindVideo.", ["model"], registry=r
        )
        self.tasks_terminal = Counter(
            "relay_tasks_terminal_total",
            "Requests that reached a terminal result, by result status.",
            ["model", "status"],
            registry=r,
        )
        self.requests_rejected = Counter(
            "relay_requests_rejected_total",
            "Requests refused by the relay or by MindVideo, by error code.",
            ["code"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "relay_records_dead_lettered_total",
            "Records copied to the dead-letter topic, by reason.",
            ["reason"],
            registry=r,
        )
        self.cost_estimated = Counter(
            "relay_cost_estimated_usd_total",
            "Estimated cost of submitted tasks in USD.",
            ["model"],
            registry=r,
        )
        self.cost_actual = Counter(
            "relay_cost_actual_usd_total",
            "Actual cost of terminal tasks in USD.",
            ["model"],
            registry=r,
        )
        self.submit_latency = Histogram(
            "relay_submit_latency_seconds",
            "Time to create a task on MindVideo, retries included.",
            buckets=HTTP_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.task_duration = Histogram(
            "relay_task_duration_seconds",
            "Submit to terminal status.",
            ["model"],
            buckets=TASK_DURATION_BUCKETS_S,
            registry=r,
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

        # Webhooks (docs/webhooks.md); a dashboard depends on these names and label values.
        self.webhook_attempts = Counter(
            "relay_webhook_attempts_total",
            "Webhook delivery attempts by outcome: success, http_4xx, http_5xx, timeout, "
            "connection_error, refused, gone, circuit_open (deferred, not attempted).",
            ["outcome"],
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
        self.webhook_deliveries = Counter(
            "relay_webhook_deliveries_total",
            "Finished webhook deliveries by outcome: delivered, dead_lettered, no_endpoint, gone.",
            ["outcome"],
            registry=r,
        )
        self.webhook_internal_errors = Counter(
            "relay_webhook_internal_errors_total",
            "Redis or Kafka errors in the webhook pipeline, by operation (each is retried).",
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

    def render(self) -> bytes:
        return generate_latest(self.registry)
