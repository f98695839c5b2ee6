"""The bounds on requests to a tracking server, against real local sockets: a server
that answers ``/health`` but holds its API is refused at start-up in seconds, and one
that starts holding it mid-run sends the run's records to the outbox like one that is
down."""

from __future__ import annotations

import json
import os
import time

import pytest

from kedro_torch.tracking import outbox, store
from kedro_torch.tracking.store import (
    REQUEST_BOUNDS,
    StoreError,
    TrackingServerUnreachable,
    bound_requests,
    check_tracking_server,
    unreachable,
)
from tests.faults.hanging import health_only
from tests.tracking.test_store import context_with, requested  # noqa: F401

TIMEOUT = "MLFLOW_HTTP_REQUEST_TIMEOUT"
RETRIES = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"


@pytest.fixture
def unset(monkeypatch):
    """MLflow's bounds unset, as in a fresh shell; as they were after the test."""
    for name in REQUEST_BOUNDS:
        monkeypatch.setenv(name, "")  # recorded, so that the test's changes are undone
        monkeypatch.delenv(name)


@pytest.fixture
def hanging():
    with health_only() as uri:
        yield uri


def test_mlflow_gets_the_projects_bounds_where_the_environment_sets_none(unset):
    bound_requests()
    assert os.environ[TIMEOUT] == "30"
    assert os.environ[RETRIES] == "2"


def test_bounds_the_environment_sets_are_kept(unset, monkeypatch):
    monkeypatch.setenv(TIMEOUT, "300")
    monkeypatch.setenv(RETRIES, "7")
    bound_requests()
    assert (os.environ[TIMEOUT], os.environ[RETRIES]) == ("300", "7")


def test_a_server_that_answers_health_but_holds_its_api_does_not_count(hanging, monkeypatch):
    monkeypatch.setattr(store, "TIMEOUT_S", 0.5)
    started = time.monotonic()
    reason = unreachable(hanging)
    assert time.monotonic() - started < 5
    assert reason == (f"it answers /health, but not its API (GET {store.API_PROBE}): "
                      "no answer within 0.5 s")


def test_the_check_waits_no_longer_than_mlflow_would(hanging, monkeypatch):
    """A user who bounds MLflow's requests below the check's 5 s bounds the check too."""
    monkeypatch.setenv(TIMEOUT, "1")
    started = time.monotonic()
    assert unreachable(hanging).endswith("no answer within 1 s")
    assert time.monotonic() - started < 4


def test_a_run_to_a_server_that_holds_its_api_is_refused_naming_it(
    tmp_path, hanging, requested, monkeypatch  # noqa: F811
):
    requested("training")
    monkeypatch.setenv(TIMEOUT, "1")
    context = context_with(tmp_path, f"server: {{mlflow_tracking_uri: '{hanging}'}}")
    started = time.monotonic()
    with pytest.raises(TrackingServerUnreachable) as refused:
        check_tracking_server(context)
    assert time.monotonic() - started < 4
    assert isinstance(refused.value, StoreError)
    message = str(refused.value)
    assert f"The MLflow tracking server {hanging} (from server.mlflow_tracking_uri" in message
    assert "it answers /health, but not its API" in message
    assert "Nothing was run" in message


def spooled(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / outbox.RECORDS_FILE).read_text()
            .splitlines()[1:]]


def test_records_for_a_server_that_holds_its_api_wait_in_the_spool(
    tmp_path, hanging, monkeypatch
):
    """No MLflow request is sent to it: the probe finds it away within its timeout,
    and while it is away later sends only add to the spool."""
    monkeypatch.setattr(store, "TIMEOUT_S", 0.5)
    box = outbox.Outbox("run1", hanging, tmp_path)
    first = {"kind": "metrics", "step": 1, "timestamp": 1, "metrics": {"train_loss": 1.0}}
    started = time.monotonic()
    box.send(first)
    assert time.monotonic() - started < 5
    assert box.away
    started = time.monotonic()
    box.send(first | {"step": 2})
    assert time.monotonic() - started < 0.4  # not asked again so soon
    assert [record["step"] for record in spooled(box.folder)] == [1, 2]
    started = time.monotonic()
    assert not box.close(wait_s=0)  # the end of the run asks once more, within the probe's bound
    assert time.monotonic() - started < 5
    assert [record["step"] for record in spooled(box.folder)] == [1, 2]


def test_a_send_the_probe_cleared_is_bounded_below_the_users_bound(monkeypatch):
    monkeypatch.setenv(TIMEOUT, "3")
    assert outbox.fast_fail() == {TIMEOUT: "3", RETRIES: "1"}
    monkeypatch.setenv(TIMEOUT, "120")
    assert outbox.fast_fail() == {TIMEOUT: "10", RETRIES: "1"}
