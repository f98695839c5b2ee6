"""Whether the MLflow store a run tracks to can be used, asked once before a run
depends on it, and the bounds on MLflow's requests to a tracking server.

MLflow retries a request to a server that does not answer for about four minutes
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` and its backoff) and then fails with
"Connection refused" deep in a traceback; a server that takes the request and never
answers holds each try for ``MLFLOW_HTTP_REQUEST_TIMEOUT`` (120 s). The first such
request is kedro-mlflow's experiment lookup, when the Kedro context is created,
before any node runs. Two requests with a short timeout and no retry (``/health``,
then one to the API, which a server whose database hangs does not answer) tell the
same in seconds, in words that say what to do instead. An SQLite store that cannot be
read (a damaged file, one locked by another process) is named the same way, where
SQLAlchemy would end hundreds of lines of traceback with ``file is not a database``.
"""

from __future__ import annotations

import os
import sqlite3
import ssl
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path
from urllib.parse import urlparse

import mlflow
from kedro.config import MissingConfigException
from kedro.framework.context import KedroContext
from kedro.framework.project import pipelines
from kedro_mlflow.config.kedro_mlflow_config import KedroMlflowConfig
from kedro_mlflow.framework.hooks.utils import _assert_mlflow_enabled
from sqlalchemy.engine import make_url

TIMEOUT_S = 5.0  # each request of the check; MLFLOW_HTTP_REQUEST_TIMEOUT if that is less
GATEWAY_ERRORS = {502, 503, 504}
# A request to the API that reads the server's database, answered by any MLflow server.
API_PROBE = "/api/2.0/mlflow/experiments/search?max_results=1"
# MLflow's bounds on each request to a tracking or registry server, unless the
# environment sets them: 30 s without an answer (MLflow: 120), 2 more tries (MLflow: 7).
# A call that gets no answer fails in under 2 minutes instead of over 15.
REQUEST_BOUNDS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "30", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2"}
LOCK_WAIT_S = 10.0  # how long the check waits for another process's lock on an SQLite store

# kedro-mlflow's patterns for mlflow.yml, which it adds to the config loader itself,
# but only when its own hook runs: after this check.
MLFLOW_CONFIG_PATTERNS = ["mlflow*", "mlflow*/**", "**/mlflow*"]


class StoreError(RuntimeError):
    """The MLflow store the run would track to cannot be used; the message says which
    store, where it was configured, what is wrong and what to do."""


class TrackingServerUnreachable(StoreError):
    """The MLflow server the run would track to does not answer."""


class StoreUnreadable(StoreError):
    """The SQLite file of the MLflow store cannot be read: damaged, not a database, or
    locked by another process."""


def check_tracking_server(context: KedroContext) -> bool:
    """Whether this command is tracked: always in a run its caller opened (whose store
    kedro-mlflow then uses, and which its caller has just used), else if mlflow.yml
    tracks the pipelines it runs. If it is, raise :class:`TrackingServerUnreachable`
    when the tracking or registry server that mlflow.yml names does not answer: a
    pipeline that would not write to it is not refused for it.

    Kedro 1.7 records the pipelines asked for before it creates the context, so
    pipelines whose tracking mlflow.yml turns off (inference, export) can be told
    apart from the start. Elsewhere (a context created without a run) the default
    pipeline is assumed.

    An SQLite store that cannot be read raises :class:`StoreUnreadable`. MLflow's
    requests get :data:`REQUEST_BOUNDS` where the environment sets none.
    """
    bound_requests()
    if mlflow.active_run() is not None:
        return True
    config = mlflow_config(context)
    requested = getattr(pipelines, "_requested_pipelines", None) or ["__default__"]
    if not _assert_mlflow_enabled(requested, config):
        return False
    server = config.server
    env = context.env or context.config_loader.default_run_env
    where = f"mlflow.yml, Kedro environment '{env}'"
    tracking = (server.mlflow_tracking_uri, f"server.mlflow_tracking_uri in {where}")
    if server.mlflow_tracking_uri is None:  # kedro-mlflow's fallback
        tracking = (os.environ.get("MLFLOW_TRACKING_URI"), "MLFLOW_TRACKING_URI")
    registry = (server.mlflow_registry_uri, f"server.mlflow_registry_uri in {where}")
    for what, (uri, source) in (("tracking", tracking), ("model registry", registry)):
        reason = unreachable(uri) if uri else None
        if reason is not None:
            raise TrackingServerUnreachable(
                f"The MLflow {what} server {uri} (from {source}) does not answer: {reason}. "
                "Nothing was run. Start that server (or look at its log), or track to the "
                "local SQLite store instead: run with `--env <env>` where "
                "conf/<env>/mlflow.yml has `server: {mlflow_tracking_uri: "
                "sqlite:///mlflow.db, mlflow_registry_uri: null}`."
            )
        path = sqlite_file(uri) if uri else None
        reason = unreadable(path) if path else None
        if reason is not None:
            raise StoreUnreadable(store_message(path, f" (from {source})", reason))
        if path is not None and not path.exists():
            create_store(path)
    return True


def create_store(path: Path) -> None:
    """A new SQLite store, its tables made under a temporary name, then renamed into
    place. MLflow creates them in dozens of migration steps; a Ctrl-C between two
    would leave a file that no later run can open."""
    from mlflow.store.db import utils  # noqa: PLC0415  (MLflow's own table set-up)

    temporary = path.with_name(f"{path.name}.new-{os.getpid()}")
    try:
        engine = utils.create_sqlalchemy_engine_with_retry(f"sqlite:///{temporary}")
        try:
            utils._initialize_tables(engine)
        finally:
            engine.dispose()
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def bound_requests() -> None:
    """Put :data:`REQUEST_BOUNDS` in the environment, where MLflow reads them at each
    request, unless it sets its own."""
    for name, value in REQUEST_BOUNDS.items():
        os.environ.setdefault(name, value)


def request_timeout() -> int:
    """Seconds MLflow waits for an answer to each request (``MLFLOW_HTTP_REQUEST_TIMEOUT``)."""
    try:
        return int(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", ""))
    except ValueError:
        return int(REQUEST_BOUNDS["MLFLOW_HTTP_REQUEST_TIMEOUT"])


def mlflow_config(context: KedroContext) -> KedroMlflowConfig:
    """The run's mlflow.yml as kedro-mlflow reads it, with its defaults."""
    context.config_loader.config_patterns.setdefault("mlflow", MLFLOW_CONFIG_PATTERNS)
    try:
        conf = context.config_loader["mlflow"]
    except MissingConfigException:
        conf = {}
    return KedroMlflowConfig.model_validate(conf)


def unreachable(uri: str) -> str | None:
    """Why the server at ``uri`` does not answer a GET of ``/health`` and then one of
    :data:`API_PROBE`, each within :data:`TIMEOUT_S` (or ``MLFLOW_HTTP_REQUEST_TIMEOUT``
    if less) and tried once; ``None`` if it answers both or there is no server.

    Any answer of the server's own counts, even an error status: behind a proxy or
    authentication ``/health`` may be refused, and whatever MLflow's own requests
    meet there they report themselves. A gateway's 502, 503 or 504 is the gateway
    saying the server is not there (MLflow would retry those for minutes too).
    ``/health`` alone is answered by a server whose database hangs, which then holds
    every request of the run. URIs that are not http(s) (SQLite, files, Databricks)
    have no server to ask.
    """
    if urlparse(uri).scheme not in {"http", "https"}:
        return None
    timeout = min(TIMEOUT_S, request_timeout())
    base = uri.rstrip("/")
    reason = _no_answer(f"{base}/health", timeout)
    if reason is None:
        reason = _no_answer(f"{base}{API_PROBE}", timeout)
        if reason is not None:
            reason = f"it answers /health, but not its API (GET {API_PROBE}): {reason}"
    return reason


def _no_answer(url: str, timeout: float) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return None
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code} {error.reason}" if error.code in GATEWAY_ERRORS else None
    except OSError as error:
        reason = getattr(error, "reason", error)
        if isinstance(reason, ssl.SSLError):
            # The server took the connection; whether to trust its certificate is
            # MLflow's own setting (MLFLOW_TRACKING_SERVER_CERT_PATH, ..._INSECURE_TLS).
            return None
        if isinstance(reason, TimeoutError):
            return f"no answer within {timeout:g} s"
        return str(reason) or type(reason).__name__


def sqlite_file(uri: str) -> Path | None:
    """The file of an SQLite store URI, relative paths from the working directory as
    MLflow takes them; ``None`` for other stores and in-memory databases."""
    if not uri.startswith("sqlite:"):
        return None
    database = make_url(uri).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).absolute()


def unreadable(path: Path) -> str | None:
    """Why SQLite cannot read the store at ``path``; ``None`` if it can, or if there is
    no file yet (MLflow creates it).

    Reading the schema is what MLflow does first; SQLite checks the file's header
    there, and waits up to :data:`LOCK_WAIT_S` for a lock another process holds.
    """
    if not path.exists():
        return None
    if path.is_dir():
        return "it is a folder, not a database file"
    try:
        with closing(sqlite3.connect(path, timeout=LOCK_WAIT_S)) as database:
            database.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError as error:
        if "locked" in str(error):
            return f"another process has held it locked for {LOCK_WAIT_S:g} s ({error})"
        return str(error)
    except sqlite3.DatabaseError as error:  # not a database, malformed
        return f"it is damaged or not an SQLite database ({error})"
    return None


def store_message(path: Path, source: str, reason: str) -> str:
    """What :class:`StoreUnreadable` says: the file, why, and what to do."""
    if "locked" in reason:
        todo = ("Wait for that process to finish (another run, an `mlflow server` or "
                "`mlflow ui` upgrading it, an `sqlite3` shell with a transaction open) or "
                "stop it, then run again.")
    else:
        reason += ", so MLflow cannot open it"
        todo = (f"Move it aside (`mv {path} {path}.broken`) and run again, which starts a "
                "new, empty store there; or track to another store "
                "(server.mlflow_tracking_uri in mlflow.yml).")
    return f"The MLflow store {path}{source} cannot be read: {reason}. Nothing was run. {todo}"


def store_failure(error: BaseException) -> StoreUnreadable | None:
    """``error``, met when MLflow first opened the store, as :class:`StoreUnreadable`
    if it is SQLite failing to read the SQLite store MLflow tracks to; else ``None``.

    The check above reads the schema only; a file damaged further in fails here.
    """
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, sqlite3.DatabaseError):
        cause = cause.__cause__ or cause.__context__
    path = sqlite_file(mlflow.get_tracking_uri())
    if cause is None or path is None:
        return None
    return StoreUnreadable(store_message(path, "", str(cause)))
