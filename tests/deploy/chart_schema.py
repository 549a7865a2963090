"""The `config` part of helm/mindvideo-relay/values.schema.json, generated from RelaySettings.

The chart's `config` map takes every relay setting by its field name; the schema lists them so a
misspelled key or a wrong type fails ``helm install``. It is generated from the settings class so
it cannot drift: tests/deploy/test_helm.py compares the committed schema with this output. After
a setting is added, renamed or re-bounded, regenerate it:

    python -m tests.deploy.chart_schema --write

Settings of the connectivity work (Kafka security, Redis topologies, ``RELAY_ROLE``) that are not
in relay/settings.py yet are described by ``PENDING_SETTINGS``; once a name is in the settings
class, its entry there is ignored and the field itself is used.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

from annotated_types import Ge, Gt, Le, Lt
from pydantic import SecretStr

from relay.settings import RelaySettings

CHART = Path(__file__).resolve().parents[2] / "helm" / "mindvideo-relay"
SCHEMA_PATH = CHART / "values.schema.json"

# Secret settings and the `secrets.<key>` of values.yaml that sets each from a Secret.
SECRET_VALUES = {
    "mindvideo_api_key": "mindvideoApiKey",
    "webhook_secrets": "webhookSecrets",
    "http_token": "httpToken",
    "kafka_sasl_password": "kafkaSaslPassword",
    "redis_sentinel_password": "redisSentinelPassword",
}
# Settings the chart sets itself: the HTTP address, each Deployment's role, mounted TLS files.
CHART_OWNED = {
    "http_host",
    "http_port",
    "role",
    "webhooks_enabled",  # the older spelling of RELAY_ROLE
    "kafka_ssl_cafile",
    "kafka_ssl_certfile",
    "kafka_ssl_keyfile",
    "redis_ssl_cafile",
}
_NULLABLE_STRING: dict[str, Any] = {"type": ["string", "null"]}
# DESIGN §8 settings, as the connectivity work defines them, until relay/settings.py has them.
PENDING_SETTINGS: dict[str, dict[str, Any]] = {
    "role": {"enum": ["all", "requests", "webhooks", "", None]},
    "kafka_security_protocol": {
        "enum": ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL", "", None]
    },
    "kafka_sasl_mechanism": {"enum": ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "", None]},
    "kafka_sasl_username": _NULLABLE_STRING,
    "kafka_sasl_password": {},
    "kafka_ssl_cafile": _NULLABLE_STRING,
    "kafka_ssl_certfile": _NULLABLE_STRING,
    "kafka_ssl_keyfile": _NULLABLE_STRING,
    "kafka_ssl_check_hostname": {"type": ["boolean", "null"]},
    "redis_mode": {"enum": ["standalone", "cluster", "sentinel", "", None]},
    "redis_sentinels": {
        "type": ["string", "array", "null"],
        "items": {"type": "string"},
    },
    "redis_sentinel_master": _NULLABLE_STRING,
    "redis_sentinel_password": {},
    "redis_ssl_cafile": _NULLABLE_STRING,
}


# Settings whose value is JSON: the chart takes the JSON text, or YAML it renders with toJson.
JSON_SETTINGS: dict[str, dict[str, Any]] = {
    "budgets": {"type": ["string", "array", "null"], "items": {"type": "object"}},
    "price_hints": {"type": ["string", "object", "null"]},
    "webhook_rate_limits": {"type": ["string", "object", "null"]},
}


def _is_secret(annotation: Any) -> bool:
    return annotation is SecretStr or SecretStr in typing.get_args(annotation)


def _field_schema(annotation: Any, metadata: list[Any]) -> dict[str, Any]:
    """A JSON schema for one setting as the chart takes it: its type, or null/"" to leave it out."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _field_schema(inner, metadata)
    if origin is Literal:
        return {"enum": [*typing.get_args(annotation), "", None]}
    if origin is list:
        (item,) = typing.get_args(annotation)
        item_type = "number" if item is float else "string"
        # A comma-separated string as the relay reads it, or a YAML list the chart joins.
        return {"type": ["string", "array", "null"], "items": {"type": item_type}}
    json_type = {bool: "boolean", int: "integer", float: "number"}.get(annotation, "string")
    schema: dict[str, Any] = {"type": [json_type, "null"]}
    for constraint in metadata:
        if isinstance(constraint, Ge):
            schema["minimum"] = constraint.ge
        elif isinstance(constraint, Gt):
            schema["exclusiveMinimum"] = constraint.gt
        elif isinstance(constraint, Le):
            schema["maximum"] = constraint.le
        elif isinstance(constraint, Lt):
            schema["exclusiveMaximum"] = constraint.lt
    return schema


def setting_names() -> set[str]:
    """Every setting the relay knows, and the pending DESIGN §8 ones."""
    return set(RelaySettings.model_fields) | set(PENDING_SETTINGS)


def secret_settings() -> set[str]:
    secrets = {n for n, f in RelaySettings.model_fields.items() if _is_secret(f.annotation)}
    pending = {"kafka_sasl_password", "redis_sentinel_password"} - set(RelaySettings.model_fields)
    return secrets | pending


def config_schema() -> dict[str, Any]:
    """The schema of values.yaml's `config`: one property per setting, nothing else."""
    properties: dict[str, Any] = {}
    secrets = secret_settings()
    for name in sorted(setting_names()):
        env = f"RELAY_{name.upper()}"
        if name in secrets:
            properties[name] = {
                "description": f"{env} is a secret: refused here, set secrets.{SECRET_VALUES[name]}"
            }
        elif name in CHART_OWNED:
            properties[name] = {"description": f"{env} is set by the chart: refused here"}
        elif name in JSON_SETTINGS:
            properties[name] = {"description": f"{env} (JSON text, or YAML)", **JSON_SETTINGS[name]}
        elif name in RelaySettings.model_fields:
            field = RelaySettings.model_fields[name]
            properties[name] = {
                "description": env,
                **_field_schema(field.annotation, field.metadata),
            }
        else:
            properties[name] = {"description": env, **PENDING_SETTINGS[name]}
    return {
        "type": "object",
        "description": "RELAY_* settings by field name (README.md, Settings).",
        "additionalProperties": False,
        "properties": properties,
    }


def write() -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    schema["properties"]["config"] = config_schema()
    SCHEMA_PATH.write_text(json.dumps(schema, indent=2) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite values.schema.json's config")
    if parser.parse_args().write:
        write()
    else:
        print(json.dumps(config_schema(), indent=2))
