"""Reading the Bicep templates as pycep parses them (in the infra venv) from the main venv's tests.

pycep turns a template into JSON: literals and identifiers are plain strings, calls are
``{"function": {"type", "parameters"}}`` and operators ``{"operator": {"type", "operands"}}``.
:func:`render` writes such a tree back as compact Bicep-like text, so tests compare expressions
as strings (``storage.properties.primaryEndpoints.blob``, ``guid(storage.id, ...)``).
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BICEP = ROOT / "bicep"
INFRA_PYTHON = ROOT / ".venv-infra" / "bin" / "python"
INFRA_CHECKOV = ROOT / ".venv-infra" / "bin" / "checkov"
TOOLS = Path(__file__).with_name("offline_tools.py")
BICEP_FILES = sorted(BICEP.rglob("*.bicep"))


def rel(path: Path) -> str:
    """Path relative to the repository root, as the tests name files."""
    return path.relative_to(ROOT).as_posix()


def require_infra_venv() -> None:
    """Fail (never skip) with the fix when the infra venv is missing."""
    if not INFRA_PYTHON.exists():
        raise AssertionError(f"{rel(INFRA_PYTHON)} is missing: run `make setup` (it builds .venv-infra)")


def run_infra_tool(args: list[str], timeout: float) -> Any:
    """Run offline_tools.py in the infra venv and return its JSON output."""
    require_infra_venv()
    done = subprocess.run(
        [str(INFRA_PYTHON), str(TOOLS), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"offline_tools.py {args[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def render(node: Any) -> str:
    """Compact text of a pycep expression tree."""
    if isinstance(node, list):
        return "[" + ", ".join(render(item) for item in node) + "]"
    if not isinstance(node, dict):
        return json.dumps(node) if isinstance(node, bool) or node is None else str(node)
    if set(node) == {"function"}:
        function = node["function"]
        args = [render(value) for value in (function.get("parameters") or {}).values() if value is not None]
        text = f"{function['type']}({', '.join(args)})"
        prop = function.get("property_name")
        return f"{text}.{prop}" if isinstance(prop, str) and prop.isidentifier() else text
    if set(node) == {"operator"}:
        operator = node["operator"]
        operands = operator["operands"]
        if operator["type"] == "property_accessor":
            return f"{render(operands['operand_1'])}.{render(operands['operand_2'])}"
        return f"{operator['type']}({', '.join(render(value) for value in operands.values())})"
    return "{" + ", ".join(f"{key}: {render(value)}" for key, value in node.items()) + "}"


@dataclass(frozen=True)
class Resource:
    """One resource block: symbolic name, type, its body and its deploy condition (if any)."""

    name: str
    type: str
    config: dict[str, Any]
    condition: str | None
    existing: bool
    api_version: str = ""


def resources(template: dict[str, Any]) -> dict[str, Resource]:
    """The template's resource blocks by symbolic name (conditional bodies unwrapped)."""
    found = {}
    for name, block in (template.get("resources") or {}).items():
        config = block["config"]
        condition = None
        if set(config) == {"condition", "config"}:
            condition, config = render(config["condition"]), config["config"]
        found[name] = Resource(
            name, block["type"], config, condition, bool(block.get("existing")), str(block.get("api_version") or "")
        )
    return found


def of_type(template: dict[str, Any], resource_type: str) -> list[Resource]:
    """The template's non-existing resources of one type."""
    return [r for r in resources(template).values() if r.type == resource_type and not r.existing]


def one(template: dict[str, Any], resource_type: str) -> Resource:
    """The template's only resource of a type (fails if there are none or several)."""
    matches = of_type(template, resource_type)
    assert len(matches) == 1, f"expected one {resource_type}, found {[m.name for m in matches]}"
    return matches[0]


def keys(obj: dict[str, Any]) -> dict[str, Any]:
    """An object's entries with pycep's quotes around non-identifier keys ('azd-env-name') removed."""
    return {key.strip("'"): value for key, value in obj.items()}


def param_default(template: dict[str, Any], name: str) -> Any:
    """Default value of a parameter (None when it has none)."""
    return template["parameters"][name]["default"]


def description(block: dict[str, Any]) -> str | None:
    """The @description of a parameter or output block."""
    for decorator in block.get("decorators") or []:
        if decorator["type"] == "description":
            return str(decorator["argument"])
    return None


def app_settings(site: Resource) -> dict[str, str]:
    """siteConfig.appSettings of a Microsoft.Web/sites resource, name -> rendered value."""
    entries = site.config["properties"]["siteConfig"]["appSettings"]
    names = [entry["name"] for entry in entries]
    assert len(names) == len(set(names)), f"duplicate app settings: {names}"
    return {entry["name"]: render(entry["value"]) for entry in entries}


# What a secret looks like once rendered: list*() calls (listKeys, listSecrets, listConnectionStrings, as
# a function, a resource accessor or inside an interpolated string), Key Vault getSecret, and the names
# of key-bearing properties or connection-string parts.
SECRET_CALL = re.compile(r"list_func|function_accessor|\blist[A-Z]\w*|\bgetSecret\b")
SECRET_WORD = re.compile(
    r"SharedAccessKey|AccountKey|primaryKey|secondaryKey|primaryConnectionString|secondaryConnectionString|password",
    re.IGNORECASE,
)


def carries_secret(rendered: str) -> bool:
    """Whether a rendered expression reads or spells a secret."""
    return bool(SECRET_CALL.search(rendered) or SECRET_WORD.search(rendered))


# The outputs azd writes to .azure/<env>/.env; the hooks and docs/deploy.md rely on these names.
AZD_OUTPUTS = frozenset(
    {
        "AZURE_LOCATION",
        "AZURE_TENANT_ID",
        "AZURE_RESOURCE_GROUP",
        "AZURE_STORAGE_ACCOUNT_NAME",
        "BARS_CONTAINER",
        "EVENTHUBS_NAMESPACE",
        "EVENTHUBS_BOOTSTRAP_SERVER",
        "EVENTHUB_NAME",
        "EVENTHUB_SEND_RULE_NAME",
        "AZURE_FUNCTION_APP_NAME",
        "AZURE_FUNCTION_APP_URL",
        "APPLICATIONINSIGHTS_NAME",
        "LOG_ANALYTICS_WORKSPACE_NAME",
        "AML_WORKSPACE",
        "AML_COMPUTE",
        "AML_ENDPOINT",
        "AKS_CLUSTER_NAME",
        "AML_KUBERNETES_COMPUTE",
        "AZURE_CONTAINER_REGISTRY_NAME",
        "AZURE_KEY_VAULT_NAME",
        "APIM_NAME",
        "APIM_GATEWAY_URL",
        "APIM_API_URL",
    }
)
