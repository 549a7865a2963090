"""values.schema.json without Helm: a valid draft-07 schema that accepts the chart's own values,
refuses typos and wrong types, and whose `config` part is generated from the relay's settings."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
import yaml

from relay.settings import RelaySettings
from tests.deploy import chart_schema

VALUES = chart_schema.CHART / "values.yaml"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(chart_schema.SCHEMA_PATH.read_text())
    # Draft 7: what Helm 3 (gojsonschema) and Helm 4 both read.
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_the_charts_own_values_are_valid(validator: jsonschema.Draft7Validator) -> None:
    assert list(validator.iter_errors(yaml.safe_load(VALUES.read_text()))) == []


@pytest.mark.parametrize(
    "overrides",
    [
        {"replicaCount": "two"},
        {"config": {"kafka_boostrap_servers": "kafka:9092"}},
        {"config": {"max_in_flight": "lots"}},
        {"config": {"webhook_retry_jitter": 1.5}},
        {"webhooks": {"replicaCount": 0}},
        {"keda": {"lagTreshold": "100"}},
        {"secrets": {"mindvideoApiKey": {"existingSecret": "s", "key": "k", "value": "mv_"}}},
    ],
)
def test_typos_and_wrong_types_are_refused(
    validator: jsonschema.Draft7Validator, overrides: dict[str, Any]
) -> None:
    values = yaml.safe_load(VALUES.read_text())
    for key, value in overrides.items():
        values[key] = {**values[key], **value} if isinstance(value, dict) else value
    assert list(validator.iter_errors(values)), overrides


def test_the_config_schema_is_generated_from_the_settings() -> None:
    committed = json.loads(chart_schema.SCHEMA_PATH.read_text())["properties"]["config"]
    assert committed == chart_schema.config_schema(), (
        "regenerate it: python -m tests.deploy.chart_schema --write"
    )
    assert set(committed["properties"]) >= set(RelaySettings.model_fields)


def test_pending_settings_land_together() -> None:
    """Once the connectivity settings are in relay/settings.py (RELAY_ROLE among them), every
    name the chart assumed must be there too: a difference is a renamed setting to follow."""
    pending = set(chart_schema.PENDING_SETTINGS) - set(RelaySettings.model_fields)
    if "role" in RelaySettings.model_fields:
        assert not pending, f"the chart renders settings the relay does not have: {pending}"
