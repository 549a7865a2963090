"""The server side of SASL PLAIN (RFC 4616) and SCRAM (RFC 5802, SHA-256 per RFC 7677, SHA-512
as Kafka has it), for the test-only Kafka auth front.

A server stores, per user, what Kafka stores: a salt, an iteration count, ``StoredKey`` and
``ServerKey`` (never the password). Each exchange is a small state machine fed the client's
tokens; a wrong proof, a nonce that does not continue ours or a malformed message raises
:class:`AuthenticationFailed`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass

SCRAM_HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}
MECHANISMS = ("PLAIN", *SCRAM_HASHES)
SCRAM_ITERATIONS = 4096  # Kafka's minimum


class AuthenticationFailed(Exception):
    """The client did not prove who it claims to be; the message never carries a password."""


@dataclass(frozen=True)
class ScramCredential:
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    @classmethod
    def from_password(cls, mechanism: str, password: str) -> ScramCredential:
        name = SCRAM_HASHES[mechanism]
        salt = os.urandom(16)
        salted = hashlib.pbkdf2_hmac(name, password.encode(), salt, SCRAM_ITERATIONS)
        client_key = hmac.digest(salted, b"Client Key", name)
        return cls(
            salt=salt,
            iterations=SCRAM_ITERATIONS,
            stored_key=hashlib.new(name, client_key).digest(),
            server_key=hmac.digest(salted, b"Server Key", name),
        )


class PlainExchange:
    """``authzid NUL authcid NUL passwd`` in one token; answered with an empty token."""

    def __init__(self, passwords: Mapping[str, str]) -> None:
        self._passwords = passwords
        self.username: str | None = None
        self.done = False

    def step(self, token: bytes) -> bytes:
        parts = token.split(b"\0")
        if len(parts) != 3:
            raise AuthenticationFailed("malformed PLAIN token")
        authzid, user, password = (part.decode("utf-8", "replace") for part in parts)
        expected = self._passwords.get(user)
        if expected is None or not hmac.compare_digest(expected.encode(), password.encode()):
            raise AuthenticationFailed(f"invalid credentials for user {user!r}")
        if authzid not in ("", user):
            raise AuthenticationFailed(f"{user!r} may not act as {authzid!r}")
        self.username, self.done = user, True
        return b""


class ScramExchange:
    """Two client tokens: client-first → server-first, client-final → server-final."""

    def __init__(self, mechanism: str, credentials: Mapping[str, ScramCredential]) -> None:
        self._hash = SCRAM_HASHES[mechanism]
        self._credentials = credentials
        self._step = 0
        self._gs2_header = ""
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""
        self._credential: ScramCredential | None = None
        self.username: str | None = None
        self.done = False

    def step(self, token: bytes) -> bytes:
        try:
            message = token.decode("utf-8")
        except UnicodeDecodeError:
            raise AuthenticationFailed("SCRAM messages are UTF-8") from None
        self._step += 1
        if self._step == 1:
            return self._first(message).encode()
        if self._step == 2:
            return self._final(message).encode()
        raise AuthenticationFailed("the SCRAM exchange is already over")

    def _first(self, message: str) -> str:
        flag, authzid, bare = _split3(message)
        if flag != "n":  # no channel binding over Kafka; 'y'/'p=' are not offered
            raise AuthenticationFailed(f"unsupported channel binding flag {flag!r}")
        attrs = _attributes(bare)
        if "m" in attrs:
            raise AuthenticationFailed("mandatory SCRAM extensions are not supported")
        user = _unescape(attrs.get("n", ""))
        credential = self._credentials.get(user)
        if credential is None or not attrs.get("r"):
            raise AuthenticationFailed(f"invalid credentials for user {user!r}")
        if authzid not in ("", f"a={user}"):
            raise AuthenticationFailed(f"{user!r} may not act as {authzid!r}")
        self._gs2_header = f"{flag},{authzid},"
        self._client_first_bare = bare
        self._nonce = attrs["r"] + base64.b64encode(os.urandom(18)).decode()
        self._credential = credential
        self.username = user
        salt = base64.b64encode(credential.salt).decode()
        self._server_first = f"r={self._nonce},s={salt},i={credential.iterations}"
        return self._server_first

    def _final(self, message: str) -> str:
        assert self._credential is not None
        without_proof, _, proof_attr = message.rpartition(",")
        attrs = _attributes(without_proof)
        if not proof_attr.startswith("p="):
            raise AuthenticationFailed("client-final without a proof")
        if attrs.get("r") != self._nonce:
            raise AuthenticationFailed("the client nonce does not continue ours")
        if attrs.get("c") != base64.b64encode(self._gs2_header.encode()).decode():
            raise AuthenticationFailed("channel binding does not match the first message")
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        signature = hmac.digest(self._credential.stored_key, auth_message, self._hash)
        proof = base64.b64decode(proof_attr[2:])
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=False))
        stored = hashlib.new(self._hash, client_key).digest()
        if len(proof) != len(signature) or not hmac.compare_digest(
            stored, self._credential.stored_key
        ):
            raise AuthenticationFailed(f"invalid credentials for user {self.username!r}")
        self.done = True
        server_signature = hmac.digest(self._credential.server_key, auth_message, self._hash)
        return "v=" + base64.b64encode(server_signature).decode()


def _split3(message: str) -> tuple[str, str, str]:
    parts = message.split(",", 2)
    if len(parts) != 3:
        raise AuthenticationFailed("malformed SCRAM client-first message")
    return parts[0], parts[1], parts[2]


def _attributes(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep or len(name) != 1:
            raise AuthenticationFailed(f"malformed SCRAM attribute {item[:20]!r}")
        out[name] = value
    return out


def _unescape(name: str) -> str:
    """``=2C`` → ``,`` and ``=3D`` → ``=``; any other ``=`` makes the name invalid."""
    if "=" in name.replace("=2C", "").replace("=3D", ""):
        raise AuthenticationFailed("malformed SCRAM username")
    return name.replace("=2C", ",").replace("=3D", "=")


class Users:
    """The front's user database: passwords for PLAIN (as Kafka's JAAS file holds them) and,
    for SCRAM, only the derived credentials (as Kafka's SCRAM store holds them)."""

    def __init__(self, passwords: Mapping[str, str]) -> None:
        self._passwords = dict(passwords)
        self._scram = {
            mechanism: {
                u: ScramCredential.from_password(mechanism, p) for u, p in passwords.items()
            }
            for mechanism in SCRAM_HASHES
        }

    def exchange(self, mechanism: str) -> PlainExchange | ScramExchange:
        """A fresh server-side exchange for one login with ``mechanism``."""
        if mechanism == "PLAIN":
            return PlainExchange(self._passwords)
        return ScramExchange(mechanism, self._scram[mechanism])
