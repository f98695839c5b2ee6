"""Whether the MLflow tracking server answers, asked once before a run depends on it.

MLflow retries a request to a server that does not answer for about four minutes
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` and its backoff) and then fails with
"Connection refused" deep in a traceback. The first such request is kedro-mlflow's
experiment lookup, when the Kedro context is created, before any node runs. One
request with a short timeout and no retry tells the same in seconds, in words that
say what to do instead.
"""

from __future__ import annotations

import os
import ssl
import urllib.error
import urllib.request
from urllib.parse import urlparse

import mlflow
from kedro.config import MissingConfigException
from kedro.framework.context import KedroContext
from kedro.framework.project import pipelines
from kedro_mlflow.config.kedro_mlflow_config import KedroMlflowConfig
from kedro_mlflow.framework.hooks.utils import _assert_mlflow_enabled

TIMEOUT_S = 5.0
GATEWAY_ERRORS = {502, 503, 504}

# kedro-mlflow's patterns for mlflow.yml, which it adds to the config loader itself,
# but only when its own hook runs: after this check.
MLFLOW_CONFIG_PATTERNS = ["mlflow*", "mlflow*/**", "**/mlflow*"]


class TrackingServerUnreachable(RuntimeError):
    """The MLflow server the run would track to does not answer."""


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
    """
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
                "Nothing was run. Start that server, or track to the local SQLite store "
                "instead: run with `--env <env>` where conf/<env>/mlflow.yml has `server: "
                "{mlflow_tracking_uri: sqlite:///mlflow.db, mlflow_registry_uri: null}`."
            )
    return True


def mlflow_config(context: KedroContext) -> KedroMlflowConfig:
    """The run's mlflow.yml as kedro-mlflow reads it, with its defaults."""
    context.config_loader.config_patterns.setdefault("mlflow", MLFLOW_CONFIG_PATTERNS)
    try:
        conf = context.config_loader["mlflow"]
    except MissingConfigException:
        conf = {}
    return KedroMlflowConfig.model_validate(conf)


def unreachable(uri: str) -> str | None:
    """Why the server at ``uri`` does not answer one GET of ``/health`` within
    :data:`TIMEOUT_S`, tried once; ``None`` if it answers or there is no server.

    Any answer of the server's own counts, even an error status: behind a proxy or
    authentication ``/health`` may be refused, and whatever MLflow's own requests
    meet there they report themselves. A gateway's 502, 503 or 504 is the gateway
    saying the server is not there (MLflow would retry those for minutes too).
    URIs that are not http(s) (SQLite, files, Databricks) have no server to ask.
    """
    if urlparse(uri).scheme not in {"http", "https"}:
        return None
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=TIMEOUT_S):
            return None
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code} {error.reason}" if error.code in GATEWAY_ERRORS else None
    except OSError as error:
        reason = getattr(error, "reason", error)
        if isinstance(reason, ssl.SSLError):
            # The server took the connection; whether to trust its certificate is
            # MLflow's own setting (MLFLOW_TRACKING_SERVER_CERT_PATH, ..._INSECURE_TLS).
            return None
        return str(reason) or type(reason).__name__
