"""The tracking-server check that runs before kedro-mlflow's first request: which
URIs it asks, what counts as an answer, and which runs it refuses."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import mlflow
import pytest
from kedro.config import OmegaConfigLoader
from kedro.framework.project import pipelines

from kedro_torch.tracking import store
from kedro_torch.tracking.hooks import MlflowHookForwarder
from kedro_torch.tracking.mlflow_hook import BatchedParamsMlflowHook
from kedro_torch.tracking.store import TrackingServerUnreachable, check_tracking_server, unreachable
from tests.servers import free_port


@pytest.fixture
def stopped() -> str:
    """The URI of a server that is not running."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def answering():
    """A local HTTP server that answers every GET with the status the test sets, and
    records the paths asked for."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            server.paths.append(self.path)
            self.send_response(server.status)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.status, server.paths = 200, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def context_with(tmp_path, mlflow_yml: str, env: str | None = None) -> SimpleNamespace:
    """What the check reads of a Kedro context: a config loader over conf/base/mlflow.yml."""
    (tmp_path / "conf" / "base").mkdir(parents=True)
    (tmp_path / "conf" / "local").mkdir()
    (tmp_path / "conf" / "base" / "mlflow.yml").write_text(mlflow_yml)
    loader = OmegaConfigLoader(str(tmp_path / "conf"), env=env, base_env="base",
                               default_run_env="local")
    return SimpleNamespace(config_loader=loader, env=env)


@pytest.fixture
def requested(monkeypatch):
    """Sets the pipelines Kedro records as asked for, as ``session.run`` does."""
    def request(*names: str) -> None:
        monkeypatch.setattr(pipelines, "_requested_pipelines", list(names) or None)
    return request


@pytest.mark.parametrize("status", [200, 401, 403, 404, 500])
def test_any_answer_of_the_server_counts(answering, status):
    answering.status = status
    assert unreachable(f"http://127.0.0.1:{answering.server_port}/") is None
    assert answering.paths == ["/health", store.API_PROBE]


def test_a_gateway_saying_the_server_is_down_does_not_count(answering):
    answering.status = 502
    assert unreachable(f"http://127.0.0.1:{answering.server_port}") == "HTTP 502 Bad Gateway"


def test_a_stopped_server_is_refused_with_its_uri_and_the_way_to_sqlite(
    tmp_path, stopped, requested
):
    requested("training")
    context = context_with(tmp_path, f"server: {{mlflow_tracking_uri: '{stopped}'}}")
    with pytest.raises(TrackingServerUnreachable) as refused:
        check_tracking_server(context)
    message = str(refused.value)
    assert f"tracking server {stopped} (from server.mlflow_tracking_uri in mlflow.yml, " \
           "Kedro environment 'local')" in message
    assert "Connection refused" in message
    assert "sqlite:///mlflow.db" in message


def test_a_server_that_takes_the_connection_but_says_nothing_is_refused(monkeypatch):
    monkeypatch.setattr(store, "TIMEOUT_S", 0.1)
    with socket.socket() as silent:  # listens, so connecting succeeds, but never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        assert unreachable(f"http://127.0.0.1:{silent.getsockname()[1]}") == \
            "no answer within 0.1 s"


@pytest.mark.parametrize("uri", ["sqlite:///mlflow.db", "file:///tmp/mlruns", "mlruns",
                                 "/tmp/mlruns", "databricks"])
def test_stores_without_a_server_of_their_own_are_not_asked(uri):
    assert unreachable(uri) is None


def test_pipelines_that_track_nothing_are_not_refused(tmp_path, stopped, requested):
    context = context_with(tmp_path, f"""
server: {{mlflow_tracking_uri: '{stopped}'}}
tracking: {{disable_tracking: {{pipelines: [inference, export]}}}}
""")
    requested("inference", "export")
    check_tracking_server(context)
    requested("inference", "training")
    with pytest.raises(TrackingServerUnreachable):
        check_tracking_server(context)
    requested()  # no --pipelines: the default pipeline, which is tracked
    with pytest.raises(TrackingServerUnreachable):
        check_tracking_server(context)


def test_mlflow_tracking_uri_is_asked_when_mlflow_yml_names_no_store(
    tmp_path, stopped, requested, monkeypatch
):
    requested("training")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", stopped)
    context = context_with(tmp_path, "server: {mlflow_tracking_uri: null}")
    with pytest.raises(TrackingServerUnreachable) as refused:
        check_tracking_server(context)
    assert f"{stopped} (from MLFLOW_TRACKING_URI)" in str(refused.value)


def test_a_stopped_registry_server_is_refused_too(tmp_path, stopped, requested):
    requested("training")
    context = context_with(tmp_path, f"""
server: {{mlflow_tracking_uri: 'sqlite:///mlflow.db', mlflow_registry_uri: '{stopped}'}}
""")
    with pytest.raises(TrackingServerUnreachable, match=f"model registry server {stopped}"):
        check_tracking_server(context)


def test_a_run_already_active_is_not_checked(tmp_path, stopped, requested, monkeypatch):
    """kedro-mlflow then tracks to the active run's store and ignores mlflow.yml."""
    requested("training")
    monkeypatch.setattr(mlflow, "active_run", lambda: "a run its caller opened")
    check_tracking_server(context_with(tmp_path, f"server: {{mlflow_tracking_uri: '{stopped}'}}"))


def test_the_forwarder_refuses_before_kedro_mlflow_contacts_the_server(
    tmp_path, stopped, requested, monkeypatch
):
    requested("training")
    reached = []
    monkeypatch.setattr(BatchedParamsMlflowHook, "after_context_created",
                        lambda hook, context: reached.append(context))
    context = context_with(tmp_path, f"server: {{mlflow_tracking_uri: '{stopped}'}}",
                           env="staging")
    (tmp_path / "conf" / "staging").mkdir()
    with pytest.raises(TrackingServerUnreachable, match="Kedro environment 'staging'"):
        MlflowHookForwarder().after_context_created(context)
    assert reached == []
