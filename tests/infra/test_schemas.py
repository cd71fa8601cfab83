"""Every resource body against the vendored bicep-types-az schemas (the offline stand-in for `bicep build`)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.infra import schema_check
from tests.infra.bicep_model import BICEP_FILES, ROOT, rel, resources, run_infra_tool
from tests.infra.schemas import vendor

SCHEMAS = schema_check.SCHEMAS
# Values the service takes where the spec's enum is open (modelAsString) but does not list them.
OPEN_ENUM_VALUES = {
    # Container insights' stream group (learn.microsoft.com, "Configure data collection in Container
    # insights using data collection rule"); KnownExtensionDataSourceStreams lists only generic streams.
    "Microsoft-ContainerInsights-Group-Default",
}
# The registry block of bicep/modules/ml.bicep before issue 13, verbatim: anonymousPullEnabled does not
# exist on Microsoft.ContainerRegistry/registries@2023-07-01, and this check has to say so.
OLD_REGISTRY_TEMPLATE = """
param location string
param tags object
param containerRegistryName string
@allowed([
  'Enabled'
  'Disabled'
])
param publicNetworkAccess string = 'Enabled'

resource containerRegistry 'Microsoft.ContainerRegistry/registries@2023-07-01' = {
  name: containerRegistryName
  location: location
  tags: tags
  sku: {
    name: 'Basic'
  }
  properties: {
    adminUserEnabled: false
    anonymousPullEnabled: false
    publicNetworkAccess: publicNetworkAccess
  }
}
"""


def _check(resource: Any, template: dict[str, Any]) -> list[str]:
    return schema_check.check_body(
        resource.type, resource.api_version, resource.config, template, frozenset(OPEN_ENUM_VALUES)
    )


def _declared(template: dict[str, Any]) -> list[Any]:
    return [r for r in resources(template).values() if not r.existing]


@pytest.mark.parametrize("path", [rel(p) for p in BICEP_FILES])
def test_every_resource_body_matches_its_schema(templates, path):
    """Property names, nesting, kinds and enum values of every declared resource are the API version's."""
    template = templates[path]
    declared = _declared(template)
    problems = {r.name: errors for r in declared if (errors := _check(r, template))}
    assert declared or not template.get("resources")
    assert problems == {}


def test_schemas_cover_exactly_the_resource_types_the_templates_use(templates):
    """Every Type@apiVersion of bicep/ (declared or existing) is vendored, and nothing else is."""
    used = {f"{r.type}@{r.api_version}".lower() for t in templates.values() for r in resources(t).values()}
    vendored = {name.lower() for name in schema_check.index()["resources"]}
    assert used == vendored
    assert {name.lower() for name in vendor.used_resource_types()} == used
    for ref in schema_check.index()["resources"].values():
        assert (SCHEMAS / ref["$ref"].split("#")[0]).is_file()


def test_the_old_registry_template_fails_on_anonymous_pull(tmp_path):
    """The check catches what `bicep build` would: anonymousPullEnabled on registries@2023-07-01."""
    old = tmp_path / "old-registry.bicep"
    old.write_text(OLD_REGISTRY_TEMPLATE)
    parsed = run_infra_tool(["parse", "30", str(old)], timeout=90)[str(old)]
    assert parsed["ok"], parsed["error"]
    registry = resources(parsed["template"])["containerRegistry"]
    errors = _check(registry, parsed["template"])
    assert len(errors) == 1
    assert errors[0].startswith("properties.anonymousPullEnabled: RegistryProperties has no property")
    fixed = copy.deepcopy(registry.config)
    del fixed["properties"]["anonymousPullEnabled"]
    assert schema_check.check_body(registry.type, registry.api_version, fixed, parsed["template"]) == []


def test_today_s_registry_has_no_anonymous_pull_setting(module):
    """bicep/modules/ml.bicep no longer sets it (the Basic tier has no anonymous pull to turn off)."""
    registry = resources(module("ml"))["containerRegistry"]
    assert "anonymousPullEnabled" not in registry.config["properties"]
    assert registry.config["sku"] == {"name": "Basic"}


def _mutated(template: dict[str, Any], name: str, change: Any) -> list[str]:
    """The errors for resource ``name`` after ``change(config)`` edits a copy of its body."""
    resource = resources(template)[name]
    config = copy.deepcopy(resource.config)
    change(config)
    return schema_check.check_body(resource.type, resource.api_version, config, template, frozenset(OPEN_ENUM_VALUES))


def _set(path: str, value: Any) -> Any:
    def change(config: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[last] = value

    return change


def _drop(path: str) -> Any:
    def change(config: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = config
        for part in parents:
            node = node[part]
        del node[last]

    return change


@pytest.mark.parametrize(
    ("file", "resource", "change", "expected"),
    [
        (
            "storage",
            "storage",
            _set("properties.networkAcls.bypas", "AzureServices"),
            r"networkAcls\.bypas: .* no property 'bypas'",
        ),
        (
            "storage",
            "storage",
            _set("properties.accessTier", "Warm"),
            r"accessTier: 'Warm' is not one of .*closed enum",
        ),
        (
            "storage",
            "storage",
            _set("properties.allowSharedKeyAccess", "false"),
            r"allowSharedKeyAccess: \"false\" is not a bool",
        ),
        ("storage", "storage", _set("properties.provisioningState", "Succeeded"), r"provisioningState: read-only"),
        ("storage", "storage", _drop("sku.name"), r"^sku: Sku requires name"),
        (
            "storage",
            "storage",
            _set("sku.name", "Standard_GZRSX"),
            r"sku\.name: 'Standard_GZRSX' is not one of .*open enum",
        ),
        (
            "storage",
            "blobService",
            _set("properties.deleteRetentionPolicy.days", 400),
            r"days: 400 is out of range \(min 1, max 365\)",
        ),
        ("storage", "blobService", _set("name", "other"), r"^name: 'other' is not 'default'"),
        ("storage", "storage", _set("name", "st"), r"^name: 'st' has 2 characters \(min 3, max 24\)"),
        (
            "ml",
            "keyVault",
            _set("properties.sku.name", "Standard"),
            r"sku\.name: 'Standard' is not one of \['premium', 'standard'\]",
        ),
        (
            "ml",
            "cpuCluster",
            _set("properties.computeType", "AmlComputer"),
            r"computeType: 'AmlComputer' is not one of",
        ),
        (
            "ml",
            "cpuCluster",
            _set("properties.properties.namespace", "azureml"),
            r"properties\.properties\.namespace: .* no property",
        ),
        (
            "ml",
            "barsDatastore",
            _set("properties.filesystem", "x"),
            r"properties\.filesystem: .* no property",
        ),
        (
            "ml",
            "barsDatastore",
            _set("properties.credentials.credentialsType", "Key"),
            r"credentialsType: 'Key' is not one of",
        ),
        (
            "aks",
            "aks",
            _set("properties.agentPoolProfiles", [{"name": "system", "cont": 1}]),
            r"agentPoolProfiles\[0\]\.cont: ",
        ),
        (
            "ml",
            "amlExtension",
            _set("properties.scope.cluster.namespace", "x"),
            r"scope\.cluster\.namespace: .* no property",
        ),
        ("eventhubs", "hub", _set("properties.partitionCount", "4"), r"partitionCount: \"4\" is not an int"),
        ("apim", "apim", _set("sku.capacity", "zero"), r"sku\.capacity: \"zero\" is not an int"),
        (
            "functionapp",
            "functionApp",
            _set("properties.siteConfig.ftpsState", "Off"),
            r"ftpsState: 'Off' is not one of",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) and " " not in value else None,
)
def test_the_check_reports_each_kind_of_mistake(module, file, resource, change, expected):
    """Unknown names at any depth, closed and open enums, kinds, ranges, read-only, required, variants."""
    errors = _mutated(module(file), resource, change)
    assert len(errors) == 1, errors
    assert re.search(expected, errors[0]), errors[0]


def test_parameters_are_checked_through_their_allowed_values(module):
    """A parameter with @allowed is checked value by value; one without is checked by its type."""
    template = copy.deepcopy(module("storage"))
    allowed = template["parameters"]["publicNetworkAccess"]["decorators"]
    next(d for d in allowed if d["type"] == "allowed")["argument"] = ["Enabled", "Disable"]
    errors = _mutated(template, "storage", lambda config: None)
    assert errors == [
        "properties.publicNetworkAccess: 'Disable' is not one of ['Disabled', 'Enabled', 'SecuredByPerimeter'] "
        "(open enum: the service may accept more, list it in open_enum_values)"
    ]
    template["parameters"]["publicNetworkAccess"] = {"decorators": [], "type": "int", "default": None}
    assert _mutated(template, "storage", lambda config: None) == [
        "properties.publicNetworkAccess: a int expression where the schema expects string"
    ]


def test_parameter_defaults_are_checked_too(module):
    """A parameter without @allowed may take any value of its type, but its literal default must fit."""
    template = copy.deepcopy(module("eventhubs"))
    template["parameters"]["partitionCount"]["default"] = 0
    assert _mutated(template, "hub", lambda config: None) == ["properties.partitionCount: 0 is out of range (min 1)"]
    template["parameters"]["partitionCount"]["default"] = 4
    assert _mutated(template, "hub", lambda config: None) == []


def test_open_enum_values_need_their_exception(module):
    """An open enum's unlisted value passes only when listed, and a case difference passes (ARM ignores it)."""
    rule = resources(module("ml"))["containerInsightsRule"]
    errors = schema_check.check_body(rule.type, rule.api_version, rule.config, module("ml"))
    assert len(errors) == 2 and all("Microsoft-ContainerInsights-Group-Default" in e for e in errors)
    workspace = resources(module("ml"))["workspace"]
    assert workspace.config["properties"]["systemDatastoresAuthMode"] == "identity"  # spec: Identity
    assert _check(workspace, module("ml")) == []


def test_literal_strings_that_name_a_resource_are_literals(module):
    """A string property takes 'workbook' as the literal (pycep writes it and the resource workbook alike)."""
    workbook = resources(module("monitoring"))["workbook"]
    assert workbook.config["properties"]["category"] == "workbook"
    assert _check(workbook, module("monitoring")) == []


# ---- the vendored files ------------------------------------------------------------------------------------------


def test_vendored_files_hold_only_what_the_resource_types_reach():
    """Trimming a vendored file again changes nothing: no other resource type, no unreachable type."""
    files: dict[str, set[str]] = {}
    for name, ref in schema_check.index()["resources"].items():
        files.setdefault(ref["$ref"].split("#")[0], set()).add(name)
    for file, names in files.items():
        types = json.loads((SCHEMAS / file).read_text())
        trimmed, _ = vendor.trim(types, names)
        assert trimmed == types, file
        assert sum(entry["$type"] == "ResourceType" for entry in types) == len(names)
        assert vendor.dump(types) == (SCHEMAS / file).read_text()


def test_vendored_files_keep_no_descriptions_but_keep_description_properties():
    """Descriptions of types and properties are dropped; a property *named* description is kept."""
    text = "".join(path.read_text() for path in SCHEMAS.rglob("types.json"))
    assert '"description":{"flags"' in text
    assert not re.search(r'"description":"', text)


def test_schemas_readme_names_source_commit_and_licence():
    """The README gives the repository, the commit index.json was made from, the MIT licence and the size."""
    source = schema_check.index()["source"]
    readme = (SCHEMAS / "README.md").read_text()
    assert source["repository"] == "https://github.com/Azure/bicep-types-az"
    assert re.fullmatch(r"[0-9a-f]{40}", source["commit"])
    assert source["commit"] in readme and source["repository"] in readme and "MIT" in readme
    assert (SCHEMAS / "LICENSE").read_text().lstrip().startswith("MIT License")
    assert all(path.endswith("/types.json") and path.startswith("generated/") for path in source["paths"].values())
    size = sum(path.stat().st_size for path in SCHEMAS.rglob("types.json"))
    assert size < 400_000
    kilobytes = re.search(r"(\d+) KB", readme)
    assert kilobytes and abs(int(kilobytes.group(1)) - size / 1000) < 10


def test_vendor_script_finds_the_types_in_the_templates():
    """vendor.py reads the same Type@apiVersion pairs the parsed templates hold (declared and existing)."""
    text = Path(ROOT / "bicep" / "modules" / "ml.bicep").read_text()
    assert "Microsoft.ContainerRegistry/registries@2023-07-01" in vendor.used_resource_types()
    assert "Microsoft.MachineLearningServices/workspaces/computes@2025-06-01" in text
