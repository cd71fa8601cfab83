"""No secrets in outputs or settings, storage and transport locked down, and exactly the intended roles."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.infra.bicep_model import (
    BICEP,
    ROOT,
    app_settings,
    carries_secret,
    of_type,
    one,
    render,
    resources,
)

ROLE_NAMES = {
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "ba92f5b4-2d11-453d-a403-e96b0029c9fe": "Storage Blob Data Contributor",
    "a638d3c7-ab3a-418d-83e6-5f17a39d4fde": "Azure Event Hubs Data Receiver",
    "2b629674-e913-4c01-ae53-ef4638d8f975": "Azure Event Hubs Data Sender",
    "f6c7c914-8db3-469d-8ca1-694a8f32e121": "AzureML Data Scientist",
    "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
    "7f951dda-4ed3-4680-a7ca-43fe172d538d": "AcrPull",
}
STORAGE = "Microsoft.Storage/storageAccounts"
HUB = "Microsoft.EventHub/namespaces/eventhubs"
WORKSPACE = "Microsoft.MachineLearningServices/workspaces"
APP_INSIGHTS = "Microsoft.Insights/components"
REGISTRY = "Microsoft.ContainerRegistry/registries"
# (principal, role, scope type): the whole set, across every template.
INTENDED_ROLES = {
    ("functionPrincipalId", "Storage Blob Data Owner", STORAGE),
    ("functionPrincipalId", "Azure Event Hubs Data Receiver", HUB),
    ("functionPrincipalId", "Azure Event Hubs Data Sender", HUB),  # the forecasts hub only
    ("functionPrincipalId", "AzureML Data Scientist", WORKSPACE),
    ("functionPrincipalId", "Monitoring Metrics Publisher", APP_INSIGHTS),
    ("trainingPrincipalId", "Storage Blob Data Contributor", STORAGE),
    ("trainingPrincipalId", "AzureML Data Scientist", WORKSPACE),
    ("trainingPrincipalId", "AcrPull", REGISTRY),
    ("kubeletPrincipalId", "AcrPull", REGISTRY),
    ("userPrincipalId", "Storage Blob Data Contributor", STORAGE),
    ("apim.identity.principalId", "Monitoring Metrics Publisher", APP_INSIGHTS),
}


def _role_id(template: dict[str, Any], expression: Any) -> str:
    """The GUID a roleDefinitionId expression names, resolving roleIds.<x> or a variable."""
    found = re.fullmatch(
        r"subscription_resource_id\(Microsoft\.Authorization/roleDefinitions, ([\w.]+)\)", render(expression)
    )
    assert found, render(expression)
    ref = found.group(1)
    variables = template["variables"]
    if "." in ref:
        table, key = ref.split(".")
        return variables[table]["value"][key]
    return variables[ref]["value"]


def _assignments(templates: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for path, template in templates.items():
        declared = resources(template)
        for assignment in of_type(template, "Microsoft.Authorization/roleAssignments"):
            properties = assignment.config["properties"]
            scope = render(assignment.config["scope"])
            role_id = _role_id(template, properties["roleDefinitionId"])
            rows.append(
                {
                    "path": path,
                    "name": assignment.name,
                    "principal": render(properties["principalId"]),
                    "principal_type": render(properties["principalType"]),
                    "role_id": role_id,
                    "role": ROLE_NAMES.get(role_id, role_id),
                    "scope": scope,
                    "scope_type": declared[scope].type,
                    "guid": render(assignment.config["name"]),
                    "condition": assignment.condition,
                }
            )
    return rows


@pytest.fixture(scope="module")
def assignments(templates):
    """Every role assignment declared in bicep/."""
    return _assignments(templates)


def _outputs(templates):
    return [
        (path, name, render(block["value"]))
        for path, template in templates.items()
        for name, block in (template.get("outputs") or {}).items()
    ]


def test_no_output_carries_a_secret(templates):
    """No output of any template reads a key, a connection string with a key, or a Key Vault secret."""
    outputs = _outputs(templates)
    assert len(outputs) > 40
    assert [o for o in outputs if carries_secret(o[2])] == []


def test_no_output_or_parameter_is_secure(templates):
    """Nothing secret is passed in or out: no @secure() parameter or output exists."""
    for template in templates.values():
        for block in [*template["parameters"].values(), *(template.get("outputs") or {}).values()]:
            assert "secure" not in [d["type"] for d in block["decorators"]]


def test_no_app_setting_carries_a_secret(module):
    """No Function App setting holds a key or a connection string with a key."""
    settings = app_settings(one(module("functionapp"), "Microsoft.Web/sites"))
    assert len(settings) > 25
    assert {k: v for k, v in settings.items() if carries_secret(k) or carries_secret(v)} == {}


@pytest.mark.parametrize(
    ("expression", "secret"),
    [
        (
            "list_func(listKeys, resource_id(Microsoft.Web/sites/host, f, default), 2023-12-01).functionKeys.default",
            True,
        ),
        ("function_accessor(storage, listKeys)", True),
        ("DefaultEndpointsProtocol=https;AccountName=${storage.name};AccountKey=${key}", True),
        ("Endpoint=sb://x/;SharedAccessKeyName=send;SharedAccessKey=${k}", True),
        ("storage.properties.primaryEndpoints.blob", False),
        ("appInsights.properties.ConnectionString", False),
        ("Authorization=AAD;ClientId=${identityClientId}", False),
    ],
)
def test_secret_detector(expression, secret):
    """The detector the two tests above rely on flags keys and spares endpoints and names."""
    assert carries_secret(expression) is secret


def test_secret_detector_sees_the_one_real_secret(templates):
    """The function key the postdeploy template stores is flagged; nothing else in any template reads a secret.

    So the detector works on parsed Bicep, and the named value the modules create holds only a placeholder.
    """
    named_value = one(templates["bicep/hooks/apim-function-key.bicep"], "Microsoft.ApiManagement/service/namedValues")
    assert carries_secret(render(named_value.config["properties"]["value"]))
    assert named_value.config["properties"]["secret"] is True
    found = [
        (path, r.name)
        for path, template in templates.items()
        for r in resources(template).values()
        if carries_secret(render(r.config))
    ]
    assert found == [("bicep/hooks/apim-function-key.bicep", "functionKey")]


def test_parameter_file_holds_no_secret():
    """main.parameters.json maps azd values; none of them is a key or password."""
    text = (BICEP / "main.parameters.json").read_text()
    assert not carries_secret(text)
    assert not re.search(r"(?i)key|secret|password", text)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("allowSharedKeyAccess", False),
        ("allowBlobPublicAccess", False),
        ("minimumTlsVersion", "TLS1_2"),
        ("supportsHttpsTrafficOnly", True),
        ("defaultToOAuthAuthentication", True),
        ("allowCrossTenantReplication", False),
    ],
)
def test_storage_is_locked_down(module, key, value):
    """Shared keys off, no public blobs, TLS 1.2 and HTTPS only."""
    storage = one(module("storage"), STORAGE)
    assert storage.config["kind"] == "StorageV2"
    assert storage.config["properties"][key] == value


def test_storage_containers_are_private(module):
    """The bars and deployment containers allow no anonymous access."""
    containers = of_type(module("storage"), "Microsoft.Storage/storageAccounts/blobServices/containers")
    assert sorted(c.config["name"] for c in containers) == ["barsContainerName", "deploymentContainerName"]
    assert {c.config["properties"]["publicAccess"] for c in containers} == {"None"}


@pytest.mark.parametrize(
    ("name", "resource_type", "path", "value"),
    [
        ("eventhubs", "Microsoft.EventHub/namespaces", "properties.minimumTlsVersion", "1.2"),
        ("functionapp", "Microsoft.Web/sites", "properties.siteConfig.minTlsVersion", "1.2"),
        ("functionapp", "Microsoft.Web/sites", "properties.siteConfig.scmMinTlsVersion", "1.2"),
        ("functionapp", "Microsoft.Web/sites", "properties.httpsOnly", True),
        ("apim", "Microsoft.ApiManagement/service/apis", "properties.protocols", ["https"]),
        ("apim", "Microsoft.ApiManagement/service/backends", "properties.tls.validateCertificateChain", True),
        ("apim", "Microsoft.ApiManagement/service/backends", "properties.tls.validateCertificateName", True),
        ("ml", "Microsoft.ContainerRegistry/registries", "properties.adminUserEnabled", False),
        ("ml", "Microsoft.KeyVault/vaults", "properties.enableRbacAuthorization", True),
        ("ml", "Microsoft.KeyVault/vaults", "properties.enablePurgeProtection", True),
        ("ml", "Microsoft.MachineLearningServices/workspaces", "properties.systemDatastoresAuthMode", "identity"),
        ("monitoring", "Microsoft.Insights/components", "properties.DisableLocalAuth", True),
    ],
)
def test_transport_and_local_auth_settings(module, name, resource_type, path, value):
    """TLS 1.2+/HTTPS everywhere; admin users, shared keys and local auth off where the app does not need them."""
    node: Any = one(module(name), resource_type).config
    for part in path.split("."):
        node = node[part]
    assert node == value


def test_role_assignments_are_exactly_the_intended_set(assignments):
    """(principal, role, scope) over every template equals the intended least-privilege table."""
    found = [(a["principal"], a["role"], a["scope_type"]) for a in assignments]
    assert len(found) == len(set(found))
    assert set(found) == INTENDED_ROLES


def test_role_assignment_names_are_deterministic(assignments):
    """Each name is guid(scope.id, principal, role), so re-deployments update rather than duplicate."""
    for a in assignments:
        principal = "apim.id" if a["principal"].startswith("apim.") else a["principal"]
        assert re.fullmatch(rf"guid\({a['scope']}\.id, {re.escape(principal)}, [\w.]+\)", a["guid"]), a


def test_role_assignments_name_the_principal_type(assignments):
    """Managed identities are ServicePrincipal; only the optional user assignment is conditional."""
    for a in assignments:
        if a["principal"] == "userPrincipalId":
            assert a["principal_type"] == "userPrincipalType"
            assert a["condition"] == "not(empty(userPrincipalId))"
        else:
            assert (a["principal_type"], a["condition"]) == ("ServicePrincipal", None)


def test_every_role_assignment_has_a_comment_naming_its_role(assignments):
    """The comment right above each assignment names the role it grants."""
    for a in assignments:
        lines = (ROOT / a["path"]).read_text().splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith(f"resource {a['name']} "))
        comment = []
        for line in reversed(lines[:start]):
            if not line.startswith("//"):
                break
            comment.append(line)
        assert a["role"] in " ".join(comment), a["name"]


def test_main_wires_the_identities_into_the_roles(main):
    """roles.bicep gets the identities' principals and the optional deploying user."""
    params = {k: render(v) for k, v in main["modules"]["roles"]["config"]["params"].items()}
    assert params["functionPrincipalId"] == "identities.outputs.functionPrincipalId"
    assert params["trainingPrincipalId"] == "identities.outputs.trainingPrincipalId"
    assert params["kubeletPrincipalId"] == "ml.outputs.kubeletPrincipalId"
    assert params["userPrincipalId"] == "principalId"
    assert main["parameters"]["principalId"]["default"] == ""


def test_function_app_waits_for_its_roles(main):
    """The Function App module depends on roles: its host starts with storage and Event Hubs access."""
    assert main["modules"]["functionApp"]["config"]["dependsOn"] == ["roles"]


def test_abbreviations_file_is_valid_json():
    """abbreviations.json is a flat string map."""
    data = json.loads((BICEP / "abbreviations.json").read_text())
    assert data and all(isinstance(v, str) and v for v in data.values())
