"""Tracking that outlasts an outage of the MLflow tracking server.

A run tracked over HTTP sends what it records (epoch metrics, parameters, tags,
files and folders, tables, the dataset input, the model, how it ended) through an
:class:`Outbox`. Before each send one ``/health`` request with a short timeout asks
whether the server is there; while it is not, the records wait in a spool folder,
``data/08_reporting/unsent_tracking/<run id>/`` (files copied in, so later runs
cannot change them), and training goes on. The next send that finds the server
back sends them first, in order. At the end of the run the outbox waits up to
``mlflow.outage_wait`` seconds for the server; if it never comes back the run
fails saying so, everything else saved, and the spool is sent later: by the next
``kedro run`` that finds the server, or by ``python -m kedro_torch.tracking.outbox``.

MLflow would retry each request to a server that has gone for minutes, holding
training up; the probe makes an outage cost one short request per send. It asks the
API too, not ``/health`` alone: a server whose database hangs answers ``/health`` and
holds every other request, and counts as away. While the server is away it is asked
again at most every ``RETRY_S`` seconds; in between, sends only add to the spool.
Runs tracked to a local store (SQLite, files) have no server to lose: there the
records go straight to MLflow.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from kedro_torch.pytorch import locks
from kedro_torch.pytorch.checkpoints import load_weights, save_atomically
from kedro_torch.tracking.store import bound_requests, request_timeout, unreachable

logger = logging.getLogger(__name__)

SPOOL_FOLDER = Path("data", "08_reporting", "unsent_tracking")
RECORDS_FILE = "records.jsonl"
LOCK_FILE = ".lock"
# A send after the probe said yes fails fast if the server went in between, rather
# than retrying for minutes; its records then wait like any others.
FAST_FAIL_RETRIES = 1
FAST_FAIL_TIMEOUT_S = 10  # or MLFLOW_HTTP_REQUEST_TIMEOUT, if less
POLL_S = 5.0
RETRY_S = 30.0

_open: Outbox | None = None
_kept: set[str] = set()  # runs whose end waits in a spool


class TrackingNeverCameBack(RuntimeError):
    """The tracking server went away during the run and did not come back in time."""


class Outbox:
    """The run's records not yet sent, in order; spooled to ``folder`` while the
    server is away. Records hold plain values, or a ``file`` to send."""

    def __init__(self, run_id: str, tracking_uri: str, spool_root: Path):
        self.run_id = run_id
        self.tracking_uri = tracking_uri
        self.folder = spool_root / run_id
        self.pending: list[dict[str, Any]] = []
        self.away_since: float | None = None
        self.asked_at = 0.0  # when a send that failed last asked the server

    @property
    def away(self) -> bool:
        return self.away_since is not None

    def send(self, record: dict[str, Any]) -> None:
        """Send ``record`` after those waiting, or keep it with them."""
        self.pending.append(record)
        if self.away:
            self._spool()
        self.flush()

    def flush(self, force: bool = False) -> bool:
        """Send what waits if the server answers; whether nothing waits now. While the
        server is away it is asked at most every :data:`RETRY_S` seconds, unless
        ``force``: a server that hangs costs each question the probe's timeout."""
        if not self.pending:
            return True
        if self.away and not force and time.monotonic() < self.asked_at + RETRY_S:
            return False
        self.asked_at = time.monotonic()
        reason = unreachable(self.tracking_uri)
        try:
            if reason is not None:
                raise ConnectionError(reason)
            with _env(fast_fail()):
                while self.pending:
                    apply(self.run_id, self.pending[0])
                    self.pending.pop(0)
        except Exception as error:  # any failure to send means: keep it
            self._went_away(error)
            return False
        if self.away:
            logger.warning("The MLflow tracking server %s answers again: the records kept "
                           "in %s were sent", self.tracking_uri, self.folder)
            self.away_since = None
        shutil.rmtree(self.folder, ignore_errors=True)
        locks.release(self.folder / LOCK_FILE)
        return True

    def close(self, wait_s: float) -> bool:
        """Wait up to ``wait_s`` seconds for the server to take what waits."""
        deadline = time.monotonic() + wait_s
        while not self.flush(force=True):
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
        return True

    def _went_away(self, error: Exception) -> None:
        if not self.away:
            self.away_since = time.monotonic()
            logger.warning("The MLflow tracking server %s does not answer (%s). Training "
                           "goes on; what the run records is kept in %s and sent when the "
                           "server answers again", self.tracking_uri, error, self.folder)
        self._spool()

    def _spool(self) -> None:
        """Write the waiting records to the spool folder, files copied in."""
        self.folder.mkdir(parents=True, exist_ok=True)
        locks.hold(self.folder / LOCK_FILE, f"{self.folder} is being written by its run")
        header = {"run_id": self.run_id, "tracking_uri": self.tracking_uri}
        lines = [json.dumps(header)]
        for number, record in enumerate(self.pending):
            lines.append(json.dumps(self._spooled(record, number)))
        temporary = self.folder / f".{RECORDS_FILE}.tmp"
        temporary.write_text("\n".join(lines) + "\n")
        os.replace(temporary, self.folder / RECORDS_FILE)

    def _spooled(self, record: dict[str, Any], number: int) -> dict[str, Any]:
        """The record as JSON: its model and a table it holds only in memory saved, its
        file or folder copied into the spool folder."""
        table = record["table"] if record["kind"] == "table" else None
        record = {key: value for key, value in record.items() if key != "table"}
        if table is not None:
            target = self.folder / f"table-{number}.parquet"
            if not target.exists():
                temporary = target.with_name(f".{target.name}.tmp")
                table.to_parquet(temporary)
                os.replace(temporary, target)
            record["file"] = str(target)
        if "data" in record:  # the model: tensors and plain containers
            target = self.folder / f"model-{number}.pt"
            if not target.exists():
                save_atomically(record["data"], str(target))
            del record["data"]
            record["data_file"] = str(target)
        if "file" in record and not Path(record["file"]).is_relative_to(self.folder):
            copy = self.folder / str(number) / Path(record["file"]).name
            if not copy.exists():
                copy.parent.mkdir(exist_ok=True)
                if Path(record["file"]).is_dir():
                    shutil.copytree(record["file"], copy)
                else:
                    shutil.copyfile(record["file"], copy)
            record["file"] = str(copy)
        return record


def open_outbox(run_id: str, tracking_uri: str, project_path: Path) -> None:
    """Send this run's records through an outbox, if its server can go away."""
    global _open  # noqa: PLW0603 - one run per process, as kedro-mlflow has it
    http = tracking_uri.startswith(("http://", "https://"))
    _open = Outbox(run_id, tracking_uri, project_path / SPOOL_FOLDER) if http else None


def current() -> Outbox | None:
    return _open


def send(record: dict[str, Any]) -> None:
    """Record for the active run: through the outbox if one is open, else at once.

    Kinds: ``metrics`` (``metrics``, ``step``, ``timestamp``), ``params``, ``tags``
    (``values``), ``artifact`` (``file``: a file, or a folder logged as a folder of its
    name), ``table`` (the ``table`` in memory, logged as ``artifact_file`` with
    ``mlflow.log_table``), ``dataset_input`` (``name``, ``file``, ``source``, and the
    ``table`` in memory), ``model`` (``data``, and ``dataset``:
    the arguments of :class:`~kedro_torch.tracking.datasets.MlflowServedModelDataset`)
    and ``end`` (``status``).
    """
    if _open is not None:
        _open.send(record)
    else:
        apply(mlflow.active_run().info.run_id, record)


def finish(wait_s: float) -> None:
    """Before the run ends: wait for the server to take what waits, or fail saying so."""
    outbox = _close()
    if outbox is None or outbox.close(wait_s):
        return
    _keep(outbox, [{"kind": "end", "status": "FINISHED"}])
    raise TrackingNeverCameBack(
        f"The MLflow tracking server {outbox.tracking_uri} went away during the run and did "
        f"not come back within mlflow.outage_wait ({wait_s:g} s). The pipeline finished and "
        f"its outputs are saved; what the run recorded is kept in {outbox.folder}. It is "
        "sent by the next `kedro run` that finds the server, or now by `python -m "
        f"kedro_torch.tracking.outbox {outbox.folder}` once the server answers."
    )


def abandon(last: list[dict[str, Any]]) -> bool:
    """The run failed: if the server is away, keep what waits and ``last`` (the tags
    and end that say how it failed) for later; whether they were kept."""
    outbox = _close()
    if outbox is None or outbox.flush(force=True):
        return False
    _keep(outbox, last)
    return True


def kept(run_id: str) -> bool:
    """Whether how the run ended waits in a spool, to be sent with its other records."""
    return run_id in _kept


def _close() -> Outbox | None:
    global _open
    outbox, _open = _open, None
    return outbox


def _keep(outbox: Outbox, last: list[dict[str, Any]]) -> None:
    """Spool ``last`` too, and let the run go without asking the server again: MLflow
    ends its active run when the process exits, which must not wait minutes."""
    for record in last:
        outbox.send(record)
    _kept.add(outbox.run_id)
    os.environ.update(fast_fail() | {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})
    with suppress(Exception):  # the server is away: that is known and said
        mlflow.end_run()  # takes the run off MLflow's stack, then fails to reach the server


def apply(run_id: str, record: dict[str, Any]) -> None:
    """Send one record to ``run_id`` now."""
    client, kind = MlflowClient(), record["kind"]
    if kind == "metrics":
        client.log_batch(run_id, metrics=[
            Metric(name, value, record["timestamp"], record["step"])
            for name, value in record["metrics"].items()])
    elif kind == "params":
        client.log_batch(run_id, params=[Param(k, v) for k, v in record["values"].items()])
    elif kind == "tags":
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in record["values"].items()])
    elif kind == "artifact":  # MLflow logs a folder as a folder of its name
        client.log_artifact(run_id, record["file"])
    elif kind == "table":
        client.log_table(run_id, _table(record), record["artifact_file"])
    elif kind == "end":
        client.set_terminated(run_id, record["status"])
    else:  # these log through the active run, as MLflow's model and dataset helpers do
        with _active(run_id):
            _apply_to_active_run(record)


def _apply_to_active_run(record: dict[str, Any]) -> None:
    from kedro_torch.tracking import runs  # noqa: PLC0415 - runs imports this module
    from kedro_torch.tracking.datasets import MlflowServedModelDataset  # noqa: PLC0415

    if record["kind"] == "dataset_input":
        runs.log_dataset_input(record["name"], _table(record), record["source"])
        return
    data = record.get("data")
    if data is None:
        with open(record["data_file"], "rb") as file:
            data = load_weights(file, record["data_file"])
    MlflowServedModelDataset(**record["dataset"]).log(data)


def _table(record: dict[str, Any]) -> pd.DataFrame:
    """The record's table: in memory, or as its spool (or its catalog entry) saved it."""
    table = record.get("table")
    return pd.read_parquet(record["file"]) if table is None else table


@contextmanager
def _active(run_id: str) -> Iterator[None]:
    """``run_id`` as MLflow's active run: the one of this process, or reopened without
    changing its status (a replay)."""
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        yield
        return
    status = MlflowClient().get_run(run_id).info.status
    mlflow.start_run(run_id=run_id)
    try:
        yield
    finally:
        mlflow.end_run(status)


def fast_fail() -> dict[str, str]:
    """MLflow's bounds for a send the probe has just cleared: one more try, and no more
    than :data:`FAST_FAIL_TIMEOUT_S` seconds without an answer each."""
    return {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(FAST_FAIL_RETRIES),
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(min(FAST_FAIL_TIMEOUT_S, request_timeout()))}


@contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def replay(folder: Path) -> int:
    """Send a spool folder's records to its run (the server must answer); how many."""
    lines = (folder / RECORDS_FILE).read_text().splitlines()
    header, records = json.loads(lines[0]), [json.loads(line) for line in lines[1:]]
    locks.hold(folder / LOCK_FILE, f"{folder} is still being written by its run")
    mlflow.set_tracking_uri(header["tracking_uri"])
    for record in records:
        apply(header["run_id"], record)
    if not records or records[-1]["kind"] != "end":  # its process died mid-outage
        MlflowClient().set_terminated(header["run_id"], "KILLED")
    shutil.rmtree(folder)
    locks.release(folder / LOCK_FILE)
    return len(records)


def replay_waiting(project_path: Path, tracking_uri: str) -> None:
    """Send the spools of earlier runs to this tracking server, which answers."""
    root = project_path / SPOOL_FOLDER
    for folder in sorted(root.glob(f"*/{RECORDS_FILE}")):
        header = json.loads(folder.read_text().splitlines()[0])
        if header["tracking_uri"] != tracking_uri:
            continue
        try:
            sent = replay(folder.parent)
        except locks.Busy:
            continue  # its run is still going
        logger.info("Sent %d records that run %s kept while the tracking server was away",
                    sent, header["run_id"])


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m kedro_torch.tracking.outbox <spool folder>", file=sys.stderr)
        return 2
    folder = Path(argv[0])
    bound_requests()
    reason = unreachable(json.loads((folder / RECORDS_FILE).read_text().splitlines()[0])
                         ["tracking_uri"])
    if reason is not None:
        print(f"The tracking server does not answer ({reason}); nothing was sent.",
              file=sys.stderr)
        return 1
    print(f"Sent {replay(folder)} records from {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
