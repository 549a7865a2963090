"""Webhook signatures: what we send verifies with the ``standardwebhooks`` package, and our
receiver helper accepts what that package signs."""

from __future__ import annotations

import base64
import json
import os
import time
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError as StdVerificationError

from relay.exceptions import WebhookVerificationError
from relay.models import ResultRecord, decode_secret, rejection
from relay.settings import RelaySettings
from relay.webhooks.signing import USER_AGENT, WebhookSigner
from relay.webhooks.verify import verify_webhook


def _secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def _body() -> bytes:
    result: ResultRecord = rejection("order-1", "invalid_input", "bad n", model="m")
    return result.to_json_bytes()


def test_signed_delivery_verifies_with_standardwebhooks() -> None:
    secret = _secret()
    body = _body()
    headers = WebhookSigner([secret]).headers("evt_123", body)
    assert Webhook(secret).verify(body, headers) == json.loads(body)
    assert headers["webhook-id"] == "evt_123"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 5
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == USER_AGENT
    assert headers["user-agent"].startswith("mindvideo-relay/")


def test_timestamp_is_taken_at_each_attempt() -> None:
    now = [1_800_000_000.0]
    signer = WebhookSigner([_secret()], clock=lambda: now[0])
    first = signer.headers("evt_1", b"{}")
    now[0] += 3600
    second = signer.headers("evt_1", b"{}")
    assert first["webhook-id"] == second["webhook-id"]
    assert int(second["webhook-timestamp"]) - int(first["webhook-timestamp"]) == 3600
    assert first["webhook-signature"] != second["webhook-signature"]


def test_rotated_secrets_each_verify() -> None:
    old, new = _secret(), _secret()
    body = _body()
    headers = WebhookSigner([old, new]).headers("evt_rot", body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert all(entry.startswith("v1,") for entry in headers["webhook-signature"].split(" "))
    assert Webhook(old).verify(body, headers)["idempotency_key"] == "order-1"
    assert Webhook(new).verify(body, headers)["idempotency_key"] == "order-1"
    with pytest.raises(StdVerificationError):
        Webhook(_secret()).verify(body, headers)


def test_a_changed_body_fails_standard_verification() -> None:
    secret = _secret()
    body = _body()
    headers = WebhookSigner([secret]).headers("evt_x", body)
    with pytest.raises(StdVerificationError):
        Webhook(secret).verify(body.replace(b"order-1", b"order-2"), headers)


def _std_signed(secret: str, body: bytes, msg_id: str = "evt_std") -> dict[str, str]:
    now = datetime.now(tz=UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, body.decode()),
    }


def test_verify_helper_accepts_standardwebhooks_signatures() -> None:
    secret = _secret()
    body = _body()
    headers = _std_signed(secret, body)
    assert verify_webhook(secret, headers, body) == json.loads(body)
    upper = {k.upper(): v for k, v in headers.items()}
    assert (
        verify_webhook([_secret(), secret], upper, body)["event_id"] == json.loads(body)["event_id"]
    )


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda h, b: ({k: v for k, v in h.items() if k != "webhook-id"}, b), "missing"),
        (lambda h, b: ({**h, "webhook-timestamp": "soon"}, b), "not an integer"),
        (lambda h, b: ({**h, "webhook-timestamp": str(int(time.time()) - 301)}, b), "too old"),
        (lambda h, b: ({**h, "webhook-timestamp": str(int(time.time()) + 301)}, b), "future"),
        (lambda h, b: (h, b + b" "), "no matching signature"),
        (lambda h, b: ({**h, "webhook-signature": "v2,abc v1,!!!"}, b), "no matching signature"),
    ],
)
def test_verify_helper_rejects_with_a_clear_error(mutate: object, message: str) -> None:
    secret = _secret()
    body = _body()
    headers, sent = mutate(_std_signed(secret, body), body)  # type: ignore[operator]
    with pytest.raises(WebhookVerificationError, match=message):
        verify_webhook(secret, headers, sent)


def test_verify_helper_checks_a_relay_signed_delivery() -> None:
    secret = _secret()
    body = _body()
    headers = WebhookSigner([secret]).headers("evt_own", body)
    assert verify_webhook(secret, headers, body.decode())["status"] == "rejected"
    with pytest.raises(WebhookVerificationError, match="no matching"):
        verify_webhook(_secret(), headers, body)


def test_secrets_are_validated_at_settings_load(monkeypatch: pytest.MonkeyPatch) -> None:
    good = _secret()
    monkeypatch.setenv("RELAY_WEBHOOK_SECRETS", f"{good}, {_secret()}")
    assert len(RelaySettings().webhook_secrets) == 2
    monkeypatch.setenv("RELAY_WEBHOOK_SECRETS", f"{good},whsec_not*base64!")
    with pytest.raises(ValidationError) as info:
        RelaySettings()
    text = str(info.value)
    assert "webhook secret #2" in text
    assert "not valid base64" in text
    assert good not in text, "a rejected configuration must not echo the secrets"
    monkeypatch.setenv("RELAY_WEBHOOK_SECRETS", "c2VjcmV0")
    with pytest.raises(ValidationError, match="whsec_"):
        RelaySettings()


def test_decode_secret() -> None:
    key = os.urandom(24)
    assert decode_secret("whsec_" + base64.b64encode(key).decode()) == key
    with pytest.raises(ValueError, match="empty"):
        decode_secret("whsec_")
