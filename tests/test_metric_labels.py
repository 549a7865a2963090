"""Metric labels stay bounded whatever producers and MindVideo send (issue 10): a model is a label
only when the relay knows it or the operator listed it, an error code only when it is known."""

from __future__ import annotations

from relay.metrics import OTHER_LABEL, RelayMetrics, error_code_label
from relay.models import MAX_ERROR_MESSAGE_CHARS, rejection
from relay.schemas import SEEDANCE_4_0
from relay.service import Relay
from relay.settings import RelaySettings


def test_producer_models_fold_into_other_and_metrics_stay_small() -> None:
    metrics = RelayMetrics()
    for i in range(2_000):
        model = f"model-{i}-" + "x" * 190
        metrics.tasks_submitted.labels(model).inc()
        metrics.tasks_terminal.labels(model, "rejected").inc()
        metrics.cost_estimated.labels(model).inc(0.01)
        metrics.cost_actual.labels(model).inc(0.01)
        metrics.task_duration.labels(model).observe(1.0)
        metrics.requests_rejected.labels(f"code-{i}").inc()
    text = metrics.render().decode()
    assert len(text) < 32 * 1024
    assert 'model="other"' in text
    assert "x" * 100 not in text
    assert 'relay_requests_rejected_total{code="other"} 2000.0' in text


def test_known_and_listed_models_keep_their_label() -> None:
    metrics = RelayMetrics(model_labels=["acme-video-2"])
    assert metrics.model_label(SEEDANCE_4_0) == SEEDANCE_4_0
    assert metrics.model_label("acme-video-2") == "acme-video-2"
    assert metrics.model_label("acme-video-3") == OTHER_LABEL
    assert metrics.model_label(None) == "unknown"
    metrics.tasks_submitted.labels("acme-video-2").inc()
    assert 'relay_tasks_submitted_total{model="acme-video-2"} 1.0' in metrics.render().decode()


def test_error_codes_are_the_known_ones_or_other() -> None:
    for code in ("invalid_input", "idempotency_conflict", "model_not_found", "key_in_use"):
        assert error_code_label(code) == code
    assert error_code_label("mindvideo_http_418") == "mindvideo_http_418"
    assert error_code_label("mindvideo_http_4180") == OTHER_LABEL
    assert error_code_label("Quota exceeded for tenant 12345") == OTHER_LABEL


def test_the_operator_list_comes_from_relay_metrics_models() -> None:
    settings = RelaySettings(metrics_models="acme-video-2, acme-video-3")
    assert settings.metrics_models == ["acme-video-2", "acme-video-3"]
    assert Relay(settings).metrics.model_label("acme-video-3") == "acme-video-3"


def test_a_rejection_echoes_bounded_fields_only() -> None:
    result = rejection(
        "k",
        "c" * 500,
        "m" * 100_000,
        model="x" * 200_000 + "\ud800",
        metadata={"pad": "y" * 5_000},
        max_metadata_bytes=4096,
    )
    assert result.model is not None
    assert len(result.model) == 200
    assert result.error is not None
    assert len(result.error.code) == 100
    assert len(result.error.message) == MAX_ERROR_MESSAGE_CHARS
    assert result.metadata is None, "metadata over its cap is not echoed"
    assert len(result.to_json_bytes()) < 4 * 1024


def test_a_rejection_escapes_lone_surrogates_and_drops_unencodable_metadata() -> None:
    result = rejection(
        "k", "invalid_request", "bad \udc00", model="m\ud800", metadata={"a": "\ud800"}
    )
    assert result.model == "m\\ud800"
    assert result.error is not None
    assert result.error.message == "bad \\udc00"
    assert result.metadata is None
    result.to_json_bytes().decode("utf-8")
    kept = rejection(
        "k", "invalid_request", "bad", metadata={"order": "8812"}, max_metadata_bytes=64
    )
    assert kept.metadata == {"order": "8812"}
