"""An SQLite store that cannot be read, damaged or locked by another process, stops a
run before anything is run, naming the file and what to do, where SQLAlchemy would end
hundreds of lines with ``file is not a database``."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from kedro_torch.tracking import store
from kedro_torch.tracking.store import (
    StoreError,
    StoreUnreadable,
    check_tracking_server,
    store_failure,
    unreadable,
)
from tests.tracking.test_store import context_with, requested  # noqa: F401


def checked(tmp_path: Path, database: Path) -> None:
    """The start-up check of a run tracking to ``database``."""
    project = tmp_path / f"project-{len(list(tmp_path.glob('project-*')))}"
    check_tracking_server(context_with(
        project, f"server: {{mlflow_tracking_uri: 'sqlite:///{database}'}}"))


def test_a_file_of_random_bytes_is_named_with_what_to_do(tmp_path, requested):  # noqa: F811
    requested("training")
    database = tmp_path / "mlflow.db"
    database.write_bytes(os.urandom(20_000))
    with pytest.raises(StoreUnreadable) as refused:
        checked(tmp_path, database)
    assert isinstance(refused.value, StoreError)
    message = str(refused.value)
    assert message.startswith(f"The MLflow store {database} (from server.mlflow_tracking_uri "
                              "in mlflow.yml, Kedro environment 'local') cannot be read: ")
    assert "file is not a database" in message
    assert "Nothing was run" in message
    assert "(file is not a database), so MLflow cannot open it. Nothing was run." in message
    assert f"`mv {database} {database}.broken`" in message


def test_a_relative_store_is_named_by_its_whole_path(tmp_path, requested, monkeypatch):  # noqa: F811
    requested("training")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlflow.db").write_bytes(b"not a database, but long enough to have a header" * 4)
    context = context_with(tmp_path / "project",
                           "server: {mlflow_tracking_uri: 'sqlite:///mlflow.db'}")
    with pytest.raises(StoreUnreadable, match=f"The MLflow store {tmp_path / 'mlflow.db'} "):
        check_tracking_server(context)


def test_a_store_locked_by_another_process_is_named(tmp_path, requested, monkeypatch):  # noqa: F811
    requested("training")
    monkeypatch.setattr(store, "LOCK_WAIT_S", 0.5)
    database = tmp_path / "mlflow.db"
    with sqlite3.connect(database) as creating:
        creating.execute("CREATE TABLE runs (id TEXT)")
    creating.close()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys, time\n"
         f"db = sqlite3.connect({str(database)!r}, isolation_level=None)\n"
         "db.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        with pytest.raises(StoreUnreadable) as refused:
            checked(tmp_path, database)
        assert time.monotonic() - started < 5
    finally:
        holder.kill()
        holder.wait()
    message = str(refused.value)
    assert f"The MLflow store {database} " in message
    assert "another process has held it locked for 0.5 s (database is locked)" in message
    assert "Wait for that process to finish" in message
    checked(tmp_path, database)  # free again


def test_a_new_store_is_made_whole_before_mlflow_opens_it(tmp_path, requested):  # noqa: F811
    requested("training")
    database = tmp_path / "mlflow.db"
    checked(tmp_path, database)
    # Made under another name and renamed: a signal mid-way leaves no half-made store.
    assert [path.name for path in tmp_path.iterdir() if "mlflow.db" in path.name] == [
        "mlflow.db"]
    with sqlite3.connect(database) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    db.close()
    assert {"experiments", "runs", "alembic_version"} <= tables
    client = MlflowClient(f"sqlite:///{database}")
    assert [e.name for e in client.search_experiments()] == ["Default"]
    database.unlink()
    database.touch()  # SQLite takes an empty file for an empty database
    assert unreadable(database) is None


def test_a_folder_where_the_store_should_be_is_named(tmp_path):
    (tmp_path / "mlflow.db").mkdir()
    assert unreadable(tmp_path / "mlflow.db") == "it is a folder, not a database file"


def damaged_after_its_schema(database: Path) -> None:
    """An SQLite file whose schema reads, with the pages of its tables overwritten: the
    check passes it, MLflow fails on it."""
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE alembic_version (version_num TEXT)")
        db.executemany("INSERT INTO alembic_version VALUES (?)", [("x" * 500,)] * 50)
    db.close()
    data = bytearray(database.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[page:] = b"\xff" * (len(data) - page)
    database.write_bytes(bytes(data))


def test_what_mlflow_meets_when_it_opens_a_damaged_store_is_named(tmp_path):
    database = tmp_path / "mlflow.db"
    damaged_after_its_schema(database)
    assert unreadable(database) is None
    uri = f"sqlite:///{database}"
    with pytest.raises(Exception) as failed:
        MlflowClient(uri).search_experiments()
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        named = store_failure(failed.value)
    finally:
        mlflow.set_tracking_uri(previous)
    assert isinstance(named, StoreUnreadable)
    assert str(named).startswith(f"The MLflow store {database} cannot be read: ")
    assert f"`mv {database} {database}.broken`" in str(named)


def test_other_errors_are_left_as_they_are(tmp_path):
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        assert store_failure(ValueError("a bug")) is None
    finally:
        mlflow.set_tracking_uri(previous)
