"""Helpers the infra venv (.venv-infra/bin/python) runs for tests/infra; prints one JSON document.

Never imported by the tests: pycep, checkov's pins and openapi-spec-validator live in the infra venv only.

    python tests/infra/offline_tools.py parse SECONDS FILE...   # pycep-parser, SECONDS per file
    python tests/infra/offline_tools.py openapi FILE            # openapi-spec-validator
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any


class ParseTimeoutError(Exception):
    """A file took longer than its time limit to parse."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise ParseTimeoutError


def parse(seconds: int, files: list[str]) -> dict[str, Any]:
    """Parse each file with pycep under a per-file alarm; never raises."""
    from pycep import BicepParser

    parser = BicepParser()
    signal.signal(signal.SIGALRM, _on_alarm)
    results: dict[str, Any] = {}
    for name in files:
        started = time.perf_counter()
        entry: dict[str, Any] = {"ok": False, "error": None, "template": None}
        signal.alarm(seconds)
        try:
            entry["template"] = parser.parse(file_path=Path(name))
            entry["ok"] = True
        except ParseTimeoutError:
            entry["error"] = f"timed out after {seconds} s"
        except Exception as exc:  # any parser failure is a finding, reported per file
            entry["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            signal.alarm(0)
        entry["seconds"] = time.perf_counter() - started
        results[name] = entry
    return results


def openapi(name: str) -> dict[str, Any]:
    """Validate an OpenAPI document; returns its version and the first error, if any."""
    from openapi_spec_validator import validate
    from openapi_spec_validator.readers import read_from_filename

    document, _ = read_from_filename(name)
    try:
        validate(document)
    except Exception as exc:  # the validator's error types vary by version
        return {"valid": False, "error": f"{type(exc).__name__}: {exc}", "openapi": document.get("openapi")}
    return {"valid": True, "error": None, "openapi": document.get("openapi")}


def main(argv: list[str]) -> int:
    """Dispatch on the first argument and print the result as JSON."""
    if argv[:1] == ["parse"] and len(argv) >= 3:
        result: dict[str, Any] = parse(int(argv[1]), argv[2:])
    elif argv[:1] == ["openapi"] and len(argv) == 2:
        result = openapi(argv[1])
    else:
        sys.stderr.write(__doc__ or "")
        return 2
    sys.stdout.write(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
