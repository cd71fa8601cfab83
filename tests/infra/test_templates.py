"""The Bicep files parse, and main.bicep's parameters, names and outputs are what azd and the hooks expect."""

from __future__ import annotations

import json
import re

import pytest

from tests.infra.bicep_model import (
    AZD_OUTPUTS,
    BICEP,
    BICEP_FILES,
    ROOT,
    description,
    keys,
    one,
    param_default,
    rel,
    render,
    resources,
)
from tests.infra.conftest import PARSE_SECONDS

MODULES = ("aks", "apim", "eventhubs", "functionapp", "identities", "ml", "monitoring", "roles", "storage")


def test_the_expected_bicep_files_exist():
    """main.bicep, one module per concern and the postdeploy hook's template; nothing else scanned by surprise."""
    assert [rel(p) for p in BICEP_FILES] == [
        "bicep/hooks/apim-function-key.bicep",
        "bicep/main.bicep",
        *(f"bicep/modules/{m}.bicep" for m in MODULES),
    ]


@pytest.mark.parametrize("path", [rel(p) for p in BICEP_FILES])
def test_every_bicep_file_parses_with_pycep_in_time(parsed, path):
    """pycep-parser (the parser checkov uses) parses the file, well within its time limit."""
    entry = parsed[path]
    assert entry["ok"], entry["error"]
    assert entry["seconds"] < PARSE_SECONDS / 2
    assert entry["template"]["resources"] or entry["template"]["modules"]


@pytest.mark.parametrize("path", [rel(p) for p in BICEP_FILES])
def test_every_parameter_has_a_description(templates, path):
    """Each parameter of each file carries a non-trivial @description."""
    params = templates[path]["parameters"]
    assert params
    missing = [name for name, block in params.items() if len(description(block) or "") < 10]
    assert missing == []


@pytest.mark.parametrize("path", [rel(p) for p in BICEP_FILES])
def test_every_output_has_a_description(templates, path):
    """Each output carries a @description too (azd shows them in the template's metadata)."""
    outputs = templates[path].get("outputs") or {}
    assert [name for name, block in outputs.items() if not description(block)] == []


def test_main_is_subscription_scoped_with_a_resource_group(main):
    """main.bicep targets the subscription and creates the resource group from the abbreviations."""
    assert main["globals"]["scope"]["value"] == "subscription"
    rg = one(main, "Microsoft.Resources/resourceGroups")
    assert rg.config["name"] == "${abbrs.resourcesResourceGroups}${environmentName}"
    assert rg.config["tags"] == "tags"
    assert {m["config"]["scope"] for m in main["modules"].values()} == {"rg"}
    assert set(main["modules"]) == {
        "identities",
        "monitoring",
        "storage",
        "eventhubs",
        "ml",
        "roles",
        "functionApp",
        "apim",
    }


def test_main_loads_abbreviations_and_derives_the_resource_token(main):
    """abbreviations.json via loadJsonContent; resourceToken from subscription, environment and location."""
    variables = main["variables"]
    assert render(variables["abbrs"]["value"]) == "load_json_content(abbreviations.json)"
    assert render(variables["resourceToken"]["value"]) == (
        "to_lower(unique_string(subscription().id, environmentName, location))"
    )
    assert keys(variables["tags"]["value"]) == {"azd-env-name": "environmentName", "app": "stockcast"}


def test_every_abbreviation_used_exists():
    """Each abbrs.<key> in main.bicep is a key of abbreviations.json, and every key is used."""
    used = set(re.findall(r"abbrs\.(\w+)", (BICEP / "main.bicep").read_text()))
    defined = set(json.loads((BICEP / "abbreviations.json").read_text()))
    assert used == defined


def test_main_parameters_map_every_required_parameter(main):
    """Every main.bicep parameter without a default is in main.parameters.json."""
    mapped = json.loads((BICEP / "main.parameters.json").read_text())["parameters"]
    required = {name for name, block in main["parameters"].items() if block["default"] is None}
    assert required == {"environmentName", "location"}
    assert required <= set(mapped)
    assert set(mapped) <= set(main["parameters"])


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("environmentName", "${AZURE_ENV_NAME}"),
        ("location", "${AZURE_LOCATION}"),
        ("principalId", "${AZURE_PRINCIPAL_ID}"),
        ("principalType", "${AZURE_PRINCIPAL_TYPE=User}"),
        ("alertActionGroupId", "${ALERT_ACTION_GROUP_ID=}"),
        ("trainSchedule", "${TRAIN_SCHEDULE=0 */15 * * * *}"),
    ],
)
def test_main_parameters_values(param, value):
    """The azd environment variables (with defaults for the optional ones) each parameter reads."""
    mapped = json.loads((BICEP / "main.parameters.json").read_text())["parameters"]
    assert mapped[param] == {"value": value}


def test_optional_parameter_defaults_match_their_mapping(main):
    """A ${NAME=default} mapping repeats the parameter's own default, so both ways deploy the same."""
    mapped = json.loads((BICEP / "main.parameters.json").read_text())["parameters"]
    defaults = {}
    for name, entry in mapped.items():
        found = re.fullmatch(r"\$\{[A-Z_]+=(.*)\}", entry["value"])
        if found:
            defaults[name] = found.group(1)
    assert len(defaults) >= 6

    def text(value: object) -> str:  # how the value reads in the parameters file (JSON booleans)
        return json.dumps(value) if isinstance(value, bool) else str(value)

    assert {name: text(param_default(main, name)) for name in defaults} == defaults


def test_private_networking_is_reserved_not_faked(main):
    """The enablePrivateNetworking parameter exists, defaults to false and accepts nothing else yet."""
    block = main["parameters"]["enablePrivateNetworking"]
    assert block["type"] == "bool"
    assert block["default"] is False
    allowed = [d["argument"] for d in block["decorators"] if d["type"] == "allowed"]
    assert allowed == [[False]]
    assert "not implemented" in (description(block) or "").lower()


def test_outputs_are_exactly_the_agreed_names(main):
    """main.bicep outputs the names the hooks and docs read, all UPPER_SNAKE strings."""
    outputs = main["outputs"]
    assert set(outputs) == AZD_OUTPUTS
    assert all(re.fullmatch(r"[A-Z][A-Z0-9_]*", name) for name in outputs)
    assert {block["type"] for block in outputs.values()} == {"string"}


@pytest.mark.parametrize(
    ("output", "value"),
    [
        ("AZURE_RESOURCE_GROUP", "rg.name"),
        ("AZURE_STORAGE_ACCOUNT_NAME", "storage.outputs.name"),
        ("EVENTHUBS_BOOTSTRAP_SERVER", "${eventhubs.outputs.namespaceHost}:9093"),
        ("EVENTHUB_NAME", "eventhubs.outputs.eventHubName"),
        ("EVENTHUB_SEND_RULE_NAME", "eventhubs.outputs.sendRuleName"),
        ("AML_ENDPOINT", "amlEndpointName"),
        ("AML_KUBERNETES_COMPUTE", "amlKubernetesComputeName"),
        ("APIM_GATEWAY_URL", "apim.outputs.gatewayUrl"),
    ],
)
def test_output_values(main, output, value):
    """Outputs come from the modules' outputs (names and URLs only)."""
    assert render(main["outputs"][output]["value"]) == value


def test_module_outputs_used_by_main_exist(main, templates):
    """Every <module>.outputs.<name> main.bicep reads is declared by that module."""
    text = (BICEP / "main.bicep").read_text()
    files = {name: block["detail"]["path"] for name, block in main["modules"].items()}
    used = set(re.findall(r"\b(\w+)\.outputs\.(\w+)", text))
    assert len(used) > 20
    missing = [(m, o) for m, o in used if o not in (templates[f"bicep/{files[m]}"].get("outputs") or {})]
    assert missing == []


def test_module_parameters_passed_by_main_exist(main, templates):
    """main.bicep passes only parameters a module declares, and every module parameter without a default."""
    problems = []
    for name, block in main["modules"].items():
        declared = templates[f"bicep/{block['detail']['path']}"]["parameters"]
        passed = set(block["config"]["params"])
        problems += [f"{name}.{p} (unknown)" for p in passed - set(declared)]
        problems += [f"{name}.{p} (missing)" for p, b in declared.items() if b["default"] is None and p not in passed]
    assert problems == []


def test_names_are_built_from_the_token(main):
    """Globally unique names combine an abbreviation with the resource token."""
    for name, block in main["modules"].items():
        for param, value in block["config"]["params"].items():
            if param.endswith("Name") and isinstance(value, str) and value.startswith("${abbrs."):
                assert value.endswith("${resourceToken}"), f"{name}.{param} = {value}"
    assert render(main["variables"]["amlEndpointName"]["value"]) == "stockcast-${resourceToken}"


def test_every_module_resource_is_a_plain_resource(templates):
    """No registry (br:) or template-spec (ts:) module: the scanners see every resource."""
    for path, template in templates.items():
        for block in (template.get("modules") or {}).values():
            assert block["type"] == "local", path
            assert ((ROOT / path).parent / block["detail"]["path"]).is_file(), path
    assert sum(len(resources(t)) for t in templates.values()) > 50
