"""Issue 15's acceptance cases on the solar forecaster (the forecast family), in-process.

One served project for the module (a copy of the serving fixtures' registry: v1, v2 with
v2 the champion); tests that move the champion take their own copy.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.reliability.conftest import asgi_post, fuzz, summary
from tests.serving.conftest import SITE, raw_readings, service_app

pytestmark = pytest.mark.reliability

REQUIRED = 48  # window 24 + lag 24
PASSWORD = "Sup3r-Secret-pw"


def window(start="2021-02-01", hours=REQUIRED, **changes):
    rows = raw_readings(start, hours, SITE)
    for row in rows:
        row.pop("site_id")
    rows[-1].update(changes)  # the latest reading, the one a model leans on most
    return {"site_id": SITE, "readings": rows}


@pytest.fixture(scope="module")
def solar_root(registry_template, tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability-solar") / "proj"
    shutil.copytree(registry_template, root)
    return root


@pytest.fixture(scope="module")
def env(solar_root):
    with pytest.MonkeyPatch.context() as patch:
        for var in ("MLFLOW_TRACKING_URI", "LOOPLINE_HOME"):
            patch.delenv(var, raising=False)
        patch.setenv("LOOPLINE_PROJECT", str(solar_root))
        patch.setenv("LOOPLINE_SERVE_LOG_FLUSH_INTERVAL_S", "0.05")
        yield patch


@pytest.fixture
def client(env):
    # One app per test: BentoML keeps one service instance per process, and another app's
    # shutdown (the fuzzing's, a test's own) would leave a longer-lived client without it.
    from starlette.testclient import TestClient

    with TestClient(service_app()) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def fuzzed(env):
    return fuzz(service_app())


# ------------------------------------------------------------------ the published contract


def test_generated_requests_never_get_a_5xx(fuzzed):
    assert len(fuzzed) > 100
    assert not summary(fuzzed, "5xx"), summary(fuzzed, "5xx")


def test_every_4xx_is_documented_and_matches_its_schema(fuzzed):
    assert any(400 <= f.status < 500 for f in fuzzed)
    assert not summary(fuzzed, "4xx"), summary(fuzzed, "4xx")


@pytest.mark.parametrize("boundary", ["", "; boundary=x"])
def test_a_multipart_body_to_a_json_api_is_415_not_a_5xx(client, boundary):
    response = client.post(
        "/predict",
        content=b"not multipart\r\n\r\n",
        headers={"content-type": f"multipart/form-data{boundary}"},
    )
    assert response.status_code == 415, response.text
    assert "/predict takes application/json" in response.json()["error"]


# ------------------------------------------------------------------ isolation, data contract


def test_a_poisoned_request_among_concurrent_valid_ones_fails_alone(client):
    poisoned = {"windows": [window(power_w=1e300, ghi=1e300)]}
    valid = {"windows": [window(start="2021-02-03")]}
    bodies = [valid] * 15 + [poisoned] + [valid] * 15
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda b: client.post("/predict", json=b), bodies))
    bad = responses.pop(15)
    assert bad.status_code == 400 or "error" in bad.text, bad.text
    for response in responses:
        assert response.status_code == 200, response.text
        (answer,) = response.json()
        assert answer.get("error") is None and len(answer["forecast"]) == 24


@pytest.mark.parametrize(("field", "value"), [("ghi", -1e6), ("power_w", -1e12)])
def test_physically_impossible_readings_are_refused_naming_the_rule(client, field, value):
    response = client.post("/predict", json={"windows": [window(**{field: value})]})
    assert response.status_code == 400, response.text
    assert f"{field}_in_range" in response.text
    lines = [json.dumps(r) for r in raw_readings("2021-02-01", REQUIRED)]
    bad = dict(json.loads(lines[-1]), **{field: value})
    answers = stream_answers(client, [*lines[:-1], json.dumps(bad)])
    assert not [a for a in answers if "forecast" in a], answers
    assert any(f"{field}_in_range" in a.get("error", "") for a in answers), answers


def stream_answers(client, lines: list[str]) -> list[dict]:
    response = client.post(
        "/stream",
        content="\n".join(lines) + "\n",
        headers={"content-type": "application/x-ndjson"},
    )
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


# ------------------------------------------------------------------ the stream's line numbers


def test_an_over_long_line_gets_one_error_and_later_lines_keep_their_numbers(client):
    readings = [json.dumps(r) for r in raw_readings("2021-02-01", REQUIRED + 3)]
    long_line = json.dumps({"site_id": SITE, "pad": "x" * 300_000})  # > 64 KB
    lines = [*readings[:10], long_line, *readings[10:]]
    body = ("\n".join(lines) + "\n").encode()
    chunks = [body[i : i + 16 * 1024] for i in range(0, len(body), 16 * 1024)]
    status, out = asgi_post(client, "/stream", chunks, "application/x-ndjson")
    assert status == 200
    answers = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    errors = [a for a in answers if "error" in a]
    assert [e["line"] for e in errors] == [11], errors
    assert "max_line_bytes" in errors[0]["error"]
    # Reading k (0-based) is on line k + 1, or k + 2 after the long line; a window
    # completes on readings 47 .. 50.
    expected = [k + 2 for k in range(REQUIRED - 1, REQUIRED + 3)]
    assert [a["line"] for a in answers if "forecast" in a] == expected, answers


# ------------------------------------------------------------------ secrets, auth, metadata


def test_the_registry_password_is_in_no_response_and_no_log(
    solar_root, monkeypatch, captured_logs, tmp_path
):
    import os

    from starlette.testclient import TestClient
    from typer.testing import CliRunner

    from loopline.app.cli import app as cli

    uri = f"postgresql://root:{PASSWORD}@127.0.0.1:5432/loopline_no_such_db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("LOOPLINE_PROJECT", str(solar_root))
    seen: list[str] = []
    with TestClient(service_app()) as broken:
        for path in ("/livez", "/readyz", "/metadata", "/docs.json"):
            seen.append(broken.get(path).text)
        seen.append(broken.post("/predict", json={"windows": [window()]}).text)
        seen.append(
            broken.post(
                "/stream", content=b"{}\n", headers={"content-type": "application/x-ndjson"}
            ).text
        )
    # The start-up banner of `loopline serve` (the exec of the server itself left out).
    monkeypatch.setattr(os, "execvpe", lambda *args: None)
    result = CliRunner().invoke(cli, ["serve", "--project", str(solar_root)])
    seen.append(result.output)
    seen += [record.getMessage() for record in captured_logs.records]
    seen += [captured_logs.text]
    leaks = [text[:300] for text in seen if PASSWORD in text]
    assert not leaks, leaks


def test_metadata_shows_no_internal_paths(client, solar_root):
    text = client.get("/metadata").text
    assert str(solar_root) not in text and "/tmp" not in text, text


def test_a_configured_token_is_required_for_predictions_and_operator_endpoints(
    env, solar_root, monkeypatch
):
    from starlette.testclient import TestClient

    monkeypatch.setenv("LOOPLINE_SERVE_TOKEN", "let-me-in")
    with TestClient(service_app()) as guarded:
        assert guarded.get("/livez").status_code == 200  # orchestrators probe without one
        body = {"windows": [window()]}
        assert guarded.post("/predict", json=body).status_code == 401
        stream = guarded.post(
            "/stream", content=b"{}\n", headers={"content-type": "application/x-ndjson"}
        )
        assert stream.status_code == 401
        wrong = {"authorization": "Bearer nope"}
        assert guarded.post("/predict", json=body, headers=wrong).status_code == 401
        right = {"authorization": "Bearer let-me-in"}
        assert guarded.post("/predict", json=body, headers=right).status_code == 200
        anonymous = guarded.get("/metadata")
        assert str(solar_root) not in anonymous.text
        assert "let-me-in" not in anonymous.text


# ------------------------------------------------------------------ safe versions


def register_broken_version(root) -> str:
    """A new version of `solar` whose model.onnx is not a model (as a damaged upload)."""
    import mlflow

    from loopline import registry
    from loopline.paths import ProjectPaths

    uri = ProjectPaths.at(root).tracking_uri()
    experiment = mlflow.MlflowClient(uri).get_experiment_by_name("loopline-solar")
    run_id = mlflow.MlflowClient(uri).create_run(experiment.experiment_id).info.run_id
    broken = root / "broken" / "model.onnx"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not an onnx model")
    return registry.register_file(uri, run_id, broken, "solar", {})


@pytest.fixture
def refused_champion(served_project):
    """The champion is a broken v3 (after v1, v2): (project, tracking uri)."""
    from loopline import registry
    from loopline.paths import ProjectPaths

    uri = ProjectPaths.at(served_project).tracking_uri()
    version = register_broken_version(served_project)
    assert version == "3"
    registry.move_champion(uri, "solar", "3", reason="a damaged upload")
    return served_project, uri


def test_a_service_started_on_a_refused_champion_serves_the_last_good_one(refused_champion):
    from starlette.testclient import TestClient

    with TestClient(service_app()) as started:
        assert started.get("/readyz").status_code == 200, started.get("/readyz").text
        meta = started.get("/metadata").json()
        assert meta["model"]["version"] == "2"
        assert "v3" in json.dumps(meta) or "3" in json.dumps(meta["last_swap_error"])
        answer = started.post("/predict", json={"windows": [window()]})
        assert answer.status_code == 200 and answer.json()[0]["model_version"] == "2"


def test_promote_and_rollback_refuse_a_version_a_service_refused(refused_champion):
    from starlette.testclient import TestClient

    from loopline import registry
    from loopline.errors import RegistryError

    _, uri = refused_champion
    with TestClient(service_app()):  # the service tries v3 and refuses it
        pass
    # Registered without tags: any tag now is the service's mark (with its reason).
    tags = registry.client(uri).get_model_version("solar", "3").tags
    assert tags, "v3 carries no mark of its refusal"
    registry.move_champion(uri, "solar", "2", reason="back to the good one")
    try:
        moved = registry.move_champion(uri, "solar", None, "undo", action="rollback")
    except RegistryError as error:
        assert "3" in str(error), error  # a refusal naming the version
    else:
        assert moved["to"] != "3", moved  # or the rollback skipped it
    with pytest.raises(RegistryError, match="3"):
        registry.move_champion(uri, "solar", "3", reason="try again")


def test_promoting_the_champion_records_nothing(served_project):
    from typer.testing import CliRunner

    from loopline import registry
    from loopline.app.cli import app as cli
    from loopline.paths import ProjectPaths

    uri = ProjectPaths.at(served_project).tracking_uri()
    before = registry.champion_history(uri, "solar")
    result = CliRunner().invoke(cli, ["promote", "solar", "2", "--project", str(served_project)])
    assert "already" in result.output, result.output
    assert registry.champion_history(uri, "solar") == before
    moved = registry.move_champion(uri, "solar", None, "undo", action="rollback")
    assert (moved["from"], moved["to"]) == ("2", "1")


# ------------------------------------------------------------------ metrics folders


def test_two_services_of_one_project_get_their_own_metrics_folders(solar_root, monkeypatch):
    """What `loopline serve` hands the server: BentoML wipes its multiprocess folder at
    start (`PROMETHEUS_MULTIPROC_DIR`, else `$BENTOML_HOME/prometheus_multiproc_dir`), so
    two services sharing one lose each other's series."""
    import os

    from typer.testing import CliRunner

    from loopline.app.cli import app as cli

    handed: list[dict[str, str]] = []
    monkeypatch.setattr(os, "execvpe", lambda file, args, env: handed.append(env))
    for port in ("3101", "3102"):
        result = CliRunner().invoke(cli, ["serve", "--project", str(solar_root), "--port", port])
        assert result.exit_code == 0, result.output
    folders = [
        env.get("PROMETHEUS_MULTIPROC_DIR")
        or os.path.join(env["BENTOML_HOME"], "prometheus_multiproc_dir")
        for env in handed
    ]
    assert len(set(folders)) == 2, folders
