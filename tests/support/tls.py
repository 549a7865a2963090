"""Throwaway TLS material for the tests: a CA from ``trustme`` and the PEM files a server and a
client would be given (the Kafka auth front, ``redis-server --tls-port``, the relay)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme

LOCAL_NAMES = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class TlsFiles:
    """PEM files on disk: the CA, a server certificate and a client certificate it signed."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def write_tls_files(directory: Path, *server_names: str) -> TlsFiles:
    """A fresh CA, a server certificate for ``server_names`` (default: this machine's loopback
    names) and a client certificate, written as PEM files under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert(*(server_names or LOCAL_NAMES))
    client = ca.issue_cert("relay@clients.test", common_name="mindvideo-relay")
    files = TlsFiles(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )
    ca.cert_pem.write_to_path(str(files.ca))
    server.cert_chain_pems[0].write_to_path(str(files.server_cert))
    server.private_key_pem.write_to_path(str(files.server_key))
    client.cert_chain_pems[0].write_to_path(str(files.client_cert))
    client.private_key_pem.write_to_path(str(files.client_key))
    return files
