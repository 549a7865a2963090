"""Just enough of a Kubernetes API server for ``helm install`` to render and "apply" a chart.

helm-sdkpy exposes lint but no ``helm template``; its install action renders the chart with
Helm's own engine and needs a cluster only to discover API groups, look up the release history
and create objects. This fake answers those calls on 127.0.0.1 and keeps nothing but a log, so an
install returns Helm's rendered manifest and NOTES without a real cluster.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from aiohttp import web

# API group/version -> (resource, kind, namespaced). What the chart creates, and nothing else.
_GROUPS: dict[str, list[tuple[str, str, bool]]] = {
    "v1": [
        ("configmaps", "ConfigMap", True),
        ("namespaces", "Namespace", False),
        ("secrets", "Secret", True),
        ("serviceaccounts", "ServiceAccount", True),
        ("services", "Service", True),
    ],
    "apps/v1": [("deployments", "Deployment", True)],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    "networking.k8s.io/v1": [("networkpolicies", "NetworkPolicy", True)],
    "monitoring.coreos.com/v1": [
        ("servicemonitors", "ServiceMonitor", True),
        ("prometheusrules", "PrometheusRule", True),
    ],
    "keda.sh/v1alpha1": [("scaledobjects", "ScaledObject", True)],
}
_VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
_KUBE_VERSION = {"major": "1", "minor": "31", "gitVersion": "v1.31.0", "platform": "linux/amd64"}


def _resource_list(group_version: str) -> dict[str, object]:
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": [
            {"name": name, "singularName": "", "namespaced": ns, "kind": kind, "verbs": _VERBS}
            for name, kind, ns in _GROUPS[group_version]
        ],
    }


def _group_list() -> dict[str, object]:
    groups: dict[str, list[dict[str, str]]] = {}
    for group_version in _GROUPS:
        if "/" in group_version:
            group, version = group_version.split("/")
            groups.setdefault(group, []).append({"groupVersion": group_version, "version": version})
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [
            {"name": name, "versions": versions, "preferredVersion": versions[0]}
            for name, versions in groups.items()
        ],
    }


def _not_found() -> web.Response:
    status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404}
    return web.json_response({**status, "reason": "NotFound", "message": "not found"}, status=404)


async def _handle(request: web.Request) -> web.StreamResponse:
    path = request.path
    body = await request.read()
    if path == "/version":
        return web.json_response(_KUBE_VERSION)
    if path == "/api":
        return web.json_response({"kind": "APIVersions", "versions": ["v1"]})
    if path == "/apis":
        return web.json_response(_group_list())
    match = re.fullmatch(r"/api/(v1)|/apis/([^/]+/[^/]+)", path)
    if match and (match.group(1) or match.group(2)) in _GROUPS:
        return web.json_response(_resource_list(match.group(1) or match.group(2)))
    if request.method == "GET" and path.endswith("/secrets"):
        # Helm's release history (label selector owner=helm): there is none.
        return web.json_response({"kind": "SecretList", "apiVersion": "v1", "items": []})
    if request.method in ("POST", "PUT", "PATCH"):
        created = 201 if request.method == "POST" else 200
        if not body.startswith(b"{"):
            # Helm writes its release record as protobuf; an empty Secret is a fine answer.
            meta = {"name": "sh.helm.release", "uid": "release", "resourceVersion": "1"}
            return web.json_response(
                {"kind": "Secret", "apiVersion": "v1", "metadata": meta}, status=created
            )
        obj = json.loads(body)
        obj.setdefault("metadata", {}).update({"uid": "fake", "resourceVersion": "1"})
        return web.json_response(obj, status=created)
    return _not_found()


@asynccontextmanager
async def fake_kube_api(directory: Path) -> AsyncIterator[Path]:
    """Serve the fake API on a free loopback port; yields a kubeconfig file pointing at it."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        server = runner.addresses[0]
        kubeconfig = directory / "kubeconfig.yaml"
        kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {"name": "fake", "cluster": {"server": f"http://{server[0]}:{server[1]}"}}
                    ],
                    "users": [{"name": "fake", "user": {"token": "fake"}}],
                    "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
                    "current-context": "fake",
                }
            )
        )
        yield kubeconfig
    finally:
        await runner.cleanup()
