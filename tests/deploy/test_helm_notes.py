"""The install notes and the runbook, taken literally by an operator: every object a printed
command names exists under that name (also for a release named `mindvideo-relay`, whose full name
collapses), webhook lookups go to a webhooks pod, and the runbook's commands are complete."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.test_helm import NAMESPACE, REPO, Release, _render, helm_home

__all__ = ["helm_home"]

RUNBOOK = REPO / "docs" / "runbook.md"
SCALING = REPO / "docs" / "scaling.md"
# kubectl object references in the notes: `deploy/NAME`, `svc/NAME`, `scaledobject NAME`.
REFERENCE = re.compile(r"\b(deploy|svc|secret|scaledobject)[/ ]([a-z0-9][a-z0-9.-]*)")
KINDS = {
    "deploy": "Deployment",
    "svc": "Service",
    "scaledobject": "ScaledObject",
}


def _named(release: Release) -> set[tuple[str, str]]:
    return {(m["kind"], m["metadata"]["name"]) for m in release.manifests}


@pytest.mark.parametrize(
    ("release_name", "values", "fullname"),
    [
        ("prod", {}, "prod-mindvideo-relay"),
        ("mindvideo-relay", {}, "mindvideo-relay"),
        ("mindvideo-relay", {"keda": {"enabled": True}}, "mindvideo-relay"),
        ("media-mindvideo-relay-blue", {}, "media-mindvideo-relay-blue"),
        ("prod", {"fullnameOverride": "relay"}, "relay"),
    ],
    ids=["prod", "collapsed", "collapsed-keda", "contains", "override"],
)
async def test_every_object_the_notes_name_exists(
    tmp_path: Path, release_name: str, values: dict[str, Any], fullname: str
) -> None:
    release = await _render(tmp_path, values, release_name=release_name)
    notes = release.notes
    named = _named(release)
    references = REFERENCE.findall(notes)
    kinds = {kind for kind, _ in references}
    assert {"deploy", "svc"} <= kinds
    for kind, name in references:
        if kind in KINDS:
            assert (KINDS[kind], name) in named, f"the notes name {kind}/{name}"
    assert f"-n {NAMESPACE} " in notes
    assert f"helm get notes {release_name} -n {NAMESPACE}" in notes
    assert f"deploy/{fullname}-requests" in notes
    if values.get("keda", {}).get("enabled"):
        assert f"scaledobject {fullname} autoscaling.keda.sh/paused-replicas=0" in notes


async def test_webhook_lookups_go_to_a_webhooks_pod(tmp_path: Path) -> None:
    """Through the Service, /webhooks/deliveries may land on a requests pod: webhooks_disabled."""
    release = await _render(tmp_path, release_name="mindvideo-relay")
    notes = release.notes
    forward = "kubectl -n relay port-forward deploy/mindvideo-relay-webhooks 8081:8080"
    assert forward in notes
    lookup = notes.index("/webhooks/deliveries?key=")
    assert notes.rindex("port-forward", 0, lookup) == notes.index(forward) + len(
        "kubectl -n relay "
    )
    assert "exec deploy/mindvideo-relay-webhooks -- relay webhooks status --key KEY" in notes
    assert "svc/mindvideo-relay" in notes.split("/webhooks/deliveries")[0], "readyz stays"

    (tmp_path / "token").mkdir()
    token = {"secrets": {"httpToken": {"existingSecret": "status", "key": "http.token"}}}
    with_token = (await _render(tmp_path / "token", token)).notes
    assert "get secret status -o jsonpath='{.data.http\\.token}' | base64 -d" in with_token
    assert '-H "Authorization: Bearer $RELAY_HTTP_TOKEN" \'localhost:8081/webhooks' in with_token

    (tmp_path / "off").mkdir()
    requests_only = (await _render(tmp_path / "off", {"webhooks": {"enabled": False}})).notes
    assert "webhooks" not in requests_only


@pytest.mark.parametrize("doc", ["docs/runbook.md", "docs/webhooks.md", "README.md"])
def test_the_docs_send_webhook_lookups_to_the_webhooks_deployment(doc: str) -> None:
    text = (REPO / doc).read_text()
    assert "port-forward deploy/FULLNAME-webhooks" in text
    assert "webhooks_disabled" in text


def test_the_runbook_names_objects_by_the_full_name() -> None:
    text = RUNBOOK.read_text()
    assert "RELEASE-mindvideo-relay-" not in text, "wrong for a release named mindvideo-relay"
    assert "scaledobject RELEASE-mindvideo-relay " not in text
    assert "helm get notes RELEASE -n NS" in text
    assert "the release name alone when it already contains" in text


def test_the_runbooks_kcat_commands_are_complete() -> None:
    """kcat needs a broker, a topic and a mode; `-p -o -c` alone is not a command."""
    commands = re.findall(r"kcat -[^`\n]+", RUNBOOK.read_text())
    assert len(commands) >= 2
    for command in commands:
        for flag in ("-b ", "-t ", "-C"):
            assert flag in command, f"{command!r} lacks {flag.strip()}"


def test_the_runbooks_memory_figure_is_the_measured_one() -> None:
    """The OOM advice quotes the RSS that docs/scaling.md's measured inputs give."""
    (measured,) = re.findall(
        r"\| relay RSS with 10,000 tasks in flight \(MiB\) \| \| (\d+) \|", SCALING.read_text()
    )
    (quoted,) = re.findall(r"measured (\d+) MiB for 10,000 tasks", RUNBOOK.read_text())
    assert quoted == measured
