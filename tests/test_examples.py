"""docs/examples/ and the response shapes the docs show agree with functions/predict/openapi.yaml and the code."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from training_job.config import TrainConfig
from training_job.forecaster import Forecaster, ForecasterMeta, series_from_records

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"
SPEC = yaml.safe_load((ROOT / "functions" / "predict" / "openapi.yaml").read_text())
Shape = dict[str, "Shape | None"]


def parse_shape(text: str) -> Shape:
    """The keys of a shape the docs write as ``{"a", "b": {"c"}, "d": [...], "e": "value"}``, nested."""
    tokens = re.findall(r'"[^"]*"|[{}:,\[\]]|[^\s{}:,\[\]"]+', text)

    def obj(i: int) -> tuple[Shape, int]:
        assert tokens[i] == "{", tokens[i:]
        shape: Shape = {}
        i += 1
        while tokens[i] != "}":
            key, i = tokens[i].strip('"'), i + 1
            shape[key] = None
            if tokens[i] == ":":
                if tokens[i + 1] == "{":
                    shape[key], i = obj(i + 1)
                else:  # a value: skip it (a [...] list, a string, ...)
                    depth, i = 0, i + 1
                    while depth or tokens[i] not in (",", "}"):
                        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(tokens[i], 0)
                        i += 1
            if tokens[i] == ",":
                i += 1
        return shape, i + 1

    return obj(0)[0]


def _schema_shape(schema: dict[str, Any], depth: int = 1) -> Shape:
    """The keys of an openapi object schema, its $ref'd objects ``depth`` levels down."""
    shape: Shape = {}
    for key, sub in schema.get("properties", {}).items():
        if "$ref" in sub:
            sub = SPEC["components"]["schemas"][sub["$ref"].rsplit("/", 1)[1]]
        shape[key] = _schema_shape(sub, depth - 1) if depth and sub.get("type") == "object" else None
    return shape


def _schema(name: str) -> dict[str, Any]:
    return SPEC["components"]["schemas"][name]


def _after(path: str, marker: str) -> str:
    """The backticked shape that follows ``marker`` in ``path``, on one line."""
    text = " ".join((ROOT / path).read_text().split())
    return text.split(marker, 1)[1].split("`", 1)[0]


def _required(name: str) -> Shape:
    """The required keys of a schema, with Model's required keys under model."""
    schema = _schema(name)
    nested = {"model": dict.fromkeys(_schema("Model")["required"])}
    return {key: nested.get(key) for key in schema["required"]}


@pytest.mark.parametrize(
    ("where", "marker", "schema", "exact"),
    [
        ("README.md", '(`{"symbol", "bars": [...]}`) → `', "Forecast", True),
        ("docs/design.md", "→ 200 `", "Forecast", True),
        ("docs/deploy.md", "A forecast looks like `", "Forecast", False),
        ("README.md", "`POST /api/predict` (`", "PredictRequest", True),
        ("docs/design.md", "Errors are JSON `", "Error", True),
        ("README.md", "errors are JSON `", "Error", True),
    ],
    ids=["readme-forecast", "design-forecast", "deploy-forecast", "readme-request", "design-error", "readme-error"],
)
def test_every_shape_the_docs_show_is_the_openapi_schema(where: str, marker: str, schema: str, exact: bool) -> None:
    """A shape shown in full has exactly the schema's keys; one shown in part (with ...) no key the schema lacks."""
    shown = parse_shape(_after(where, marker))
    if schema == "Error":
        assert shown == {"error": dict.fromkeys(_schema("Error")["properties"]["error"]["required"])}
    elif exact:
        assert shown == (_required(schema) if schema == "Forecast" else dict.fromkeys(_schema(schema)["required"]))
    else:
        full = _schema_shape(_schema(schema))
        assert [k for k in shown if k not in full] == []
        assert [k for k in shown.get("model") or {} if k not in (full["model"] or {})] == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a", "b": {"c", "d"}}', {"a": None, "b": {"c": None, "d": None}}),
        ('{"a": [...], "b": "x, y", "c": ...}', {"a": None, "b": None, "c": None}),
    ],
)
def test_the_shape_parser_reads_keys_nested_and_skips_values(text: str, expected: Shape) -> None:
    """Keys at every level; values (lists, strings, ellipses) are skipped."""
    assert parse_shape(text) == expected


def test_the_sample_post_body_is_valid_and_enough_for_the_default_model() -> None:
    """docs/examples/predict-request.json matches PredictRequest and gives the default model a forecast."""
    body = json.loads((EXAMPLES / "predict-request.json").read_text())
    components = {"components": SPEC["components"]}
    jsonschema.validate(body, {**_schema("PredictRequest"), **components})
    cfg = TrainConfig(bars=ROOT)
    meta = ForecasterMeta(cfg.window, cfg.horizon, cfg.max_gap_minutes, interval_q=2.0)
    rows = Forecaster.persistence(meta).forecast(
        series_from_records([{**bar, "symbol": body["symbol"]} for bar in body["bars"]])
    )
    assert [(row["symbol"], row["session_closed"]) for row in rows] == [("AAPL", False)]
    assert len(body["bars"]) >= meta.bars_needed


def test_the_sample_airbyte_message_is_the_one_the_ingest_tests_decode() -> None:
    """docs/examples/airbyte-price-event.json is tests/data's event, byte for byte: what ingest is tested on."""
    sample = (EXAMPLES / "airbyte-price-event.json").read_bytes()
    assert sample == (ROOT / "tests" / "data" / "airbyte-price-event.json").read_bytes()
    assert json.loads(sample)["_airbyte_stream"] == "price"
