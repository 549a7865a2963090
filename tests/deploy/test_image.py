"""The container image: the Dockerfile's shape, its lock files, and its build steps replayed in a
clean venv.

There is no Docker engine here, so the builder stage's commands (dependencies from the hash-pinned
lock, a wheel built with the locked backend, installed without dependencies, pip check, drop pip)
are run on the host Python against a copy of exactly what the Dockerfile copies; the resulting
venv is what the runtime stage would ship.
"""

from __future__ import annotations

import concurrent.futures
import http.server
import importlib.metadata
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from relay import __version__
from relay.settings import RelaySettings
from tests.deploy.dockerfile import Stage, parse_dockerfile

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
LOCK = REPO / "requirements.lock"
BUILD_LOCK = REPO / "requirements-build.lock"
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+)((?:\s+--hash=sha256:[0-9a-f]{64})+)$")
RUNTIME_UID = "10001"
BUILD_TOOLS = ("gcc", "g++", "build-essential", "make", "clang", "python3-dev", "libc6-dev")
STEP_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE)


def test_multi_stage_on_the_same_slim_python(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    builder, runtime = stages[0], stages[-1]
    assert builder.name
    assert runtime.name
    assert builder.name != runtime.name
    # Both stages name the same base (the venv's interpreter links to the base's Python).
    assert builder.base == runtime.base == "${PYTHON_IMAGE}"
    default = DOCKERFILE.read_text().split("ARG PYTHON_IMAGE=", 1)[1].split()[0]
    assert default == "python:3.11-slim"
    copies = [i.args for i in runtime.all("COPY")]
    assert copies == [f"--from={builder.name} /opt/venv /opt/venv"], (
        "the runtime takes the venv only"
    )


def test_runtime_stage_has_no_build_tools_and_runs_unprivileged(stages: list[Stage]) -> None:
    runtime = stages[-1]
    for run in runtime.all("RUN"):
        words = run.args.replace(";", " ").replace("&&", " ").split()
        assert not set(words) & set(BUILD_TOOLS), run.args
        assert "pip" not in words, run.args
        assert "apt-get" not in words, run.args
    users = runtime.all("USER")
    assert users, "the runtime stage must drop root"
    user = users[-1].args.split(":")[0]
    assert user == RUNTIME_UID
    assert f"--uid {RUNTIME_UID}" in " ".join(r.args for r in runtime.all("RUN"))


def test_runtime_contract(stages: list[Stage]) -> None:
    runtime = stages[-1]
    assert [i.args for i in runtime.all("EXPOSE")] == ["8080"]
    assert runtime.all("ENTRYPOINT")[-1].exec_form() == ["relay"]
    assert runtime.all("CMD")[-1].exec_form() == ["run"]
    env = runtime.env()
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["RELAY_HTTP_HOST"] == "0.0.0.0"
    assert env["RELAY_HTTP_PORT"] == "8080"
    assert env["RELAY_LOG_FORMAT"] == "json"
    assert env["PATH"].startswith("/opt/venv/bin:")
    settings = {f"RELAY_{name.upper()}" for name in RelaySettings.model_fields}
    relay_env = {key for key in env if key.startswith("RELAY_")}
    assert relay_env <= settings, relay_env - settings
    healthcheck = runtime.all("HEALTHCHECK")
    assert len(healthcheck) == 1
    command = healthcheck[0].exec_form()
    assert command[0] == "python"
    assert "http://127.0.0.1:" in command[-1]
    assert "/healthz" in command[-1]


def _locked(path: Path) -> dict[str, str]:
    """name -> version of a lock file; every entry must be pinned with at least one hash."""
    text = path.read_text().replace("\\\n", " ")
    pins = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = PIN.fullmatch(line.strip())
        assert match, f"{path.name}: not a hash-pinned requirement: {line}"
        pins[match.group(1).lower()] = match.group(2)
    return pins


def _runtime_closure() -> set[str]:
    """The relay's runtime dependencies with its ``otel`` extra (the image can trace), and
    theirs, as installed here (no other extras)."""
    seen: set[str] = set()
    todo = [
        Requirement(req.name)
        for req in map(Requirement, importlib.metadata.requires("mindvideo-relay") or [])
        if req.marker is None or req.marker.evaluate({"extra": "otel"})
    ]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = req.name.lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        todo.extend(Requirement(r) for r in importlib.metadata.requires(name) or [])
    return seen


def test_the_lock_pins_exactly_the_runtime_dependencies() -> None:
    pins = _locked(LOCK)
    assert set(pins) == _runtime_closure(), "regenerate: python deploy/lock_requirements.py"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    for line in pyproject["project"]["dependencies"]:
        req = Requirement(line)
        assert req.specifier.contains(pins[req.name.lower()]), f"{req} vs {pins[req.name]}"
    assert not {"pytest", "ruff", "mypy", "noida-db"} & set(pins), "no test tools in the image"
    build = _locked(BUILD_LOCK)
    for line in pyproject["build-system"]["requires"]:
        req = Requirement(line)
        assert req.specifier.contains(build[req.name.lower()]), f"{req} vs build lock"


def test_dependencies_are_a_layer_before_the_code(stages: list[Stage]) -> None:
    builder = stages[0]
    steps = [(i.keyword, i.args) for i in builder.instructions if i.keyword in ("COPY", "RUN")]
    copies = [args for keyword, args in steps if keyword == "COPY"]
    assert copies[0].split()[:-1] == ["requirements.lock", "requirements-build.lock"]
    first_run = next(args for keyword, args in steps if keyword == "RUN")
    assert "--require-hashes --no-deps -r requirements.lock" in first_run
    assert "--require-hashes --no-deps -r requirements-build.lock" in first_run
    code_at = next(n for n, (k, a) in enumerate(steps) if k == "COPY" and a.startswith("relay"))
    assert steps.index(("RUN", first_run)) < code_at, "dependencies are cached before the code"
    (build,) = [args for keyword, args in steps[code_at:] if keyword == "RUN"]
    assert "--no-build-isolation" in build, "the wheel is built with the locked backend"
    assert "/opt/venv/bin/pip install --no-deps /wheels/" in build
    assert "/opt/venv/bin/pip check" in build


def test_oci_labels(stages: list[Stage]) -> None:
    runtime = stages[-1]
    text = " ".join(label.args for label in runtime.all("LABEL"))
    labels = dict(re.findall(r'(org\.opencontainers\.image\.[a-z]+)="([^"]*)"', text))
    for name in ("title", "description", "licenses", "version", "revision", "created", "source"):
        assert f"org.opencontainers.image.{name}" in labels, name
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    args = {a.args.split("=")[0]: a.args.split("=", 1)[1] for a in runtime.all("ARG")}
    assert args["VERSION"] == __version__
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert "Apache License" in (REPO / "LICENSE").read_text()
    assert "Version 2.0, January 2004" in (REPO / "LICENSE").read_text()


def test_dockerignore_keeps_what_the_build_copies(stages: list[Stage]) -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "an allow-list keeps .git, venvs and caches out of the context"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    for copy in stages[0].all("COPY"):
        *sources, _dest = copy.args.split()
        for source in sources:
            if "*" not in source:
                assert source in allowed, f"{source} is copied but excluded from the context"


def _builder_context(stages: list[Stage], dest: Path) -> None:
    """Copy what the builder stage's COPY lines copy (globs may match nothing)."""
    dest.mkdir()
    for copy in stages[0].all("COPY"):
        *sources, _target = copy.args.split()
        for source in sources:
            for path in REPO.glob(source):
                if path.is_dir():
                    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo")
                    shutil.copytree(path, dest / path.name, ignore=ignore)
                else:
                    shutil.copy2(path, dest / path.name)


def _run(*argv: str | Path, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT_S,
        check=False,
    )


class _Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        return


@contextmanager
def _closed_port() -> Iterator[int]:
    """A loopback port that nothing listens on while the block runs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        port: int = sock.getsockname()[1]
        yield port


@pytest.fixture
def healthz_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Healthz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.integration
def test_build_steps_in_a_clean_venv(
    stages: list[Stage], tmp_path: Path, healthz_server: int
) -> None:
    context = tmp_path / "src"
    _builder_context(stages, context)
    wheels, venv = tmp_path / "wheels", tmp_path / "venv"
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1",
    }
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CACHE_DIR", "XDG_CACHE_HOME"):
        if name in os.environ:
            base[name] = os.environ[name]
    if "PIP_CACHE_DIR" not in base and "XDG_CACHE_HOME" not in base:
        base["PIP_CACHE_DIR"] = str(Path.home() / ".cache" / "pip")  # share the user's cache

    # The image's builder Python gets the locked build backend; here a venv stands in for it.
    py, builder = sys.executable, tmp_path / "builder"
    vpip, bpy = venv / "bin" / "pip", builder / "bin" / "python"
    # The runtime venv and the builder are independent until the wheel is installed: set them
    # up side by side (pip spends most of its time waiting on the index and the disk).
    runtime: list[list[str | Path]] = [
        [py, "-m", "venv", venv],
        [vpip, "install", "-q", "--require-hashes", "--no-deps", "-r", "requirements.lock"],
    ]
    build: list[list[str | Path]] = [
        [py, "-m", "venv", builder],
        [bpy, "-m", "pip", "install", "-q", "--require-hashes", "--no-deps", "-r", BUILD_LOCK.name],
        [bpy, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels, "."],
    ]

    def run_chain(chain: list[list[str | Path]]) -> list[subprocess.CompletedProcess[str]]:
        done = []
        for step in chain:
            done.append(_run(*step, env=base, cwd=context))
            if done[-1].returncode != 0:
                break
        return done

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        for chain_done in pool.map(run_chain, (runtime, build)):
            for done in chain_done:
                assert done.returncode == 0, (done.args, done.stderr)
    (wheel,) = wheels.glob("mindvideo_relay-*.whl")
    installs: list[list[str | Path]] = [
        [vpip, "install", "-q", "--no-deps", wheel],
        [vpip, "check"],
        [vpip, "uninstall", "-q", "--yes", "pip", "setuptools"],
    ]
    for step in installs:
        done = _run(*step, env=base, cwd=tmp_path)
        assert done.returncode == 0, done.stderr

    # The image's environment: the venv first on PATH, the Dockerfile's ENV values.
    image_env = {**base, **stages[-1].env(), "PATH": f"{venv / 'bin'}:{base['PATH']}"}
    image_env.pop("PIP_CACHE_DIR", None)
    version = _run("relay", "--version", env=image_env, cwd=tmp_path)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"mindvideo-relay {__version__}"

    probe = "import relay, importlib.util as u; print(relay.__file__, u.find_spec('pytest'))"
    where = _run("python", "-c", probe, env=image_env, cwd=tmp_path)
    assert where.stdout.startswith(str(venv)), "relay must come from the venv, not the checkout"
    assert where.stdout.split()[-1] == "None", "test tools must not reach the image"
    assert _run("relay", "sim", "--help", env=image_env, cwd=tmp_path).returncode == 0

    bad = _run("relay", "run", env={**image_env, "RELAY_HTTP_PORT": "eighty"}, cwd=tmp_path)
    assert bad.returncode == 2, bad.stderr
    assert "invalid configuration" in bad.stderr
    assert "RELAY_HTTP_PORT='eighty'" in bad.stderr, "the error names the variable and its value"
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "Traceback" not in bad.stderr

    # The HEALTHCHECK command, run with the image's Python against a local /healthz.
    check = stages[-1].all("HEALTHCHECK")[0].exec_form()
    healthy = _run(*check, env={**image_env, "RELAY_HTTP_PORT": str(healthz_server)}, cwd=tmp_path)
    assert healthy.returncode == 0, healthy.stderr
    with _closed_port() as port:
        down = _run(*check, env={**image_env, "RELAY_HTTP_PORT": str(port)}, cwd=tmp_path)
    assert down.returncode != 0
