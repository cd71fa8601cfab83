"""Scoring script of the online endpoint (AKS via Azure ML; ``azmlinfsrv`` locally).

``init()`` loads the MLflow pyfunc from ``AZUREML_MODEL_DIR``; ``run()`` takes ``{"bars": [...]}``
and answers ``{"forecasts": [...], "model": {"name", "version", "kind"}, "skill": {...}}``;
``{"requests": [{"bars": [...]}, ...]}`` scores up to ``MAX_BATCH`` requests in one call and answers
``{"responses": [{"status", "body"}, ...]}``; a GET answers what is served, how many bars a forecast
needs and ``max_batch``. Bad input (times outside 2000-2100,
absurd prices or volumes included) gets a JSON error with a 4xx status, never a 200 carrying an
error string; a bug gets a JSON 500 ``internal_error``.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import orjson

try:  # the Azure ML images expose the decorators here
    from azureml.contrib.services.aml_request import AMLRequest, rawhttp
    from azureml.contrib.services.aml_response import AMLResponse
except ImportError:  # azureml-inference-server-http on its own
    from azureml_inference_server_http.api.aml_request import AMLRequest, rawhttp
    from azureml_inference_server_http.api.aml_response import AMLResponse

log = logging.getLogger("stockcast.score")
MAX_BARS = 20_000
MAX_BATCH = 64  # requests in one batched POST (predict sends what queued while its last call ran)
_STATUS = {"malformed": 400, "not_enough_bars": 422, "too_large": 413}
_state: dict[str, Any] = {}


def _model_identity(model_dir: Path) -> dict[str, str]:
    """Name and version: from the deployment's settings, else from Azure ML's mount path."""
    name = os.environ.get("STOCKCAST_MODEL_NAME")
    version = os.environ.get("STOCKCAST_MODEL_VERSION")
    if not (name and version) and len(model_dir.parts) >= 2 and model_dir.parts[-1].isdigit():
        name, version = name or model_dir.parts[-2], version or model_dir.parts[-1]
    return {"name": name or "unknown", "version": version or "unknown"}


def init() -> None:
    """Load the model once per worker."""
    import mlflow.pyfunc

    model_dir = Path(os.environ["AZUREML_MODEL_DIR"])
    mlmodel = next(model_dir.rglob("MLmodel")).parent
    # served: the flatbuffer saved at training, without TensorFlow (older models' code ignores the setting)
    pyfunc = mlflow.pyfunc.load_model(str(mlmodel), model_config={"serving": True})
    # the model's own copy of the feature code, put on sys.path by the pyfunc loader
    from training_job.forecaster import ForecastInputError, series_from_records

    forecaster = pyfunc.unwrap_python_model().forecaster
    # one window per request: TensorFlow Lite where the model's code offers it (older models: XLA)
    single_window = forecaster.use_lite() if hasattr(forecaster, "use_lite") else "xla"
    _state.update(
        forecaster=forecaster,
        error=ForecastInputError,
        series=series_from_records,
        model={**_model_identity(mlmodel if mlmodel.name.isdigit() else model_dir), "kind": forecaster.meta.kind},
        skill=forecaster.meta.skill,
    )
    log.info("model=%s loaded from %s; one window runs %s", _state["model"], mlmodel, single_window)


def _json(body: dict[str, Any], status: int) -> AMLResponse:
    return AMLResponse(orjson.dumps(body).decode(), status, {"Content-Type": "application/json"})


def _error(code: str, message: str, status: int) -> AMLResponse:
    return _json({"error": {"code": code, "message": message}}, status)


def _iso(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))  # what datetime writes, in 40 % of the time


def score(payload: Any) -> tuple[dict[str, Any], int]:
    """Score a parsed request body; returns (response body, HTTP status)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("bars"), list) or not payload["bars"]:
        return {"error": {"code": "malformed", "message": 'body must be {"bars": [ ...non-empty list... ]}'}}, 400
    if len(payload["bars"]) > MAX_BARS:
        return {"error": {"code": "too_large", "message": f"at most {MAX_BARS} bars per request"}}, 413
    try:
        rows = _state["forecaster"].forecast(_state["series"](payload["bars"]))
    except _state["error"] as exc:
        return {"error": {"code": exc.code, "message": str(exc)}}, _STATUS.get(exc.code, 400)
    level = _state["forecaster"].meta.interval_level
    return {"forecasts": [_shape(row, level) for row in rows], "model": _state["model"], "skill": _state["skill"]}, 200


def score_batch(payload: Any) -> tuple[dict[str, Any], int]:
    """Score ``{"requests": [{"bars": [...]}, ...]}``: one answer per request, each with its own status.

    One bad request gets its own 4xx inside a 200; the others are scored as if sent alone.
    """
    requests = payload.get("requests")
    if not isinstance(requests, list) or not requests:
        return {"error": {"code": "malformed", "message": 'body must be {"requests": [ ...non-empty list... ]}'}}, 400
    if len(requests) > MAX_BATCH:
        return {"error": {"code": "too_large", "message": f"at most {MAX_BATCH} requests per batch"}}, 413
    if sum(len(r["bars"]) for r in requests if isinstance(r, dict) and isinstance(r.get("bars"), list)) > MAX_BARS:
        return {"error": {"code": "too_large", "message": f"at most {MAX_BARS} bars per batch"}}, 413
    responses = []
    for request in requests:
        try:
            body, status = score(request)
        except Exception:  # a bug on one request answers that request, not the batch
            log.exception("scoring one request of a batch failed unexpectedly")
            body, status = {"error": {"code": "internal_error", "message": "scoring failed unexpectedly"}}, 500
        responses.append({"status": status, "body": body})
    return {"responses": responses}, 200


def _shape(row: dict[str, Any], level: float) -> dict[str, Any]:
    """A forecast row as JSON: ISO times and the interval as one object (null when there is none)."""
    low, high = row.pop("interval_low"), row.pop("interval_high")
    row["interval"] = None if low is None else {"level": level, "low": low, "high": high}
    row["as_of"] = _iso(row["as_of"])
    row["target_ts"] = None if row["target_ts"] is None else _iso(row["target_ts"])
    row["next_open"] = None if row["next_open"] is None else _iso(row["next_open"])
    return row


@rawhttp
def run(request: AMLRequest) -> AMLResponse:
    """Answer one HTTP request to the scoring route; a bug is a JSON 500, not the server's HTML page."""
    try:
        return _answer(request)
    except Exception:
        log.exception("scoring failed unexpectedly")
        return _error("internal_error", "scoring failed unexpectedly", 500)


def _answer(request: AMLRequest) -> AMLResponse:
    if request.method == "GET":
        meta = _state["forecaster"].meta
        info = {"model": _state["model"], "bars_needed": meta.bars_needed, "skill": _state["skill"]}
        return _json({**info, "max_batch": MAX_BATCH}, 200)
    try:
        payload = orjson.loads(request.get_data())
    except orjson.JSONDecodeError as exc:
        return _error("malformed", f"body is not JSON: {exc}", 400)
    body, status = score_batch(payload) if isinstance(payload, dict) and "requests" in payload else score(payload)
    return _json(body, status)
