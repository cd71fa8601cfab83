"""A second `azd up` changes nothing and fails nowhere.

Resource Manager deploys every resource of a template again on each `azd provision` (a PUT with the
template's body). Most resources take that PUT and change nothing; these do not:

- **AKS** (``Microsoft.ContainerService/managedClusters``): a stopped cluster (`az aks stop`, which
  docs/deploy.md suggests) takes no PUT: "You can only start or delete a stopped AKS cluster. To perform
  any operation like scale or upgrade, start your cluster first" (learn.microsoft.com, AKS, "Stop and
  start an AKS cluster"); and an existing pool's VM size and OS disk cannot change in place (AKS,
  "Resize node pools": a new pool replaces it), so a new AKS_NODE_VM_SIZE would fail the PUT.
- **The AzureML extension** (``Microsoft.KubernetesConfiguration/extensions``): a PUT replaces the whole
  configuration; protected settings not sent again "would be considered obsolete and deleted"
  (azure-cli-extensions, k8s-extension, partner_extensions/AzureMLKubernetes.py, Update), so it would
  drop a TLS certificate configured after the first deployment, and a stopped cluster cannot apply it.
  After creation the postprovision hook owns it (checks it, adds the settings it lacks).
- **The CPU compute cluster** (``Microsoft.MachineLearningServices/workspaces/computes``, AmlCompute): a
  compute PUT "will overwrite a compute if it exists. This is a nonrecoverable operation. If your intent
  is to create a new compute, do a GET first to verify that it does not exist yet"
  (azure-rest-api-specs, machinelearningservices, Compute_CreateOrUpdate); only the scale settings have
  an update (Compute_Update, ClusterUpdateParameters).
- **API Management's function-key named value**: the postdeploy hook stores the Function App's key in
  it; a PUT would put the placeholder back.
- **The Kubernetes compute** (computes, Kubernetes): it cannot be updated; azureml-examples detaches it
  before attaching again "as k8s compute doesn't support update" (infra/bootstrapping/sdk_helpers.sh,
  setup_compute). It also has to come after the instance type (bicep/hooks/instancetype.yaml), which
  only the postprovision hook can apply, so the hook attaches it, once.
- **The online endpoint** (``.../onlineEndpoints``): the train_trigger rollout owns its traffic and tags
  (``smoke_failed``); it needs the Kubernetes compute, so the postprovision hook creates it, once.

The first four are created only when missing: the preprovision hook asks Resource Manager
(`az resource show`) and writes an ``*_EXISTS`` value that bicep/main.parameters.json passes to Bicep
(AKS is a plain resource in its own file, bicep/modules/aks.bicep, which ml.bicep deploys only when the
cluster is missing: checkov does not look inside a conditional resource). The last two are not in
Bicep at all. Resources that Azure does refuse to change but whose values never change between runs
(the workspace's storage and vault, role assignments, the hub's partitions) are checked below to stay
that way.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.infra.bicep_model import BICEP, description, keys, of_type, render, resources


@dataclass(frozen=True)
class Guarded:
    """A resource Bicep creates only when missing: where it is, its flag in the module, in main, in azd.

    ``symbol`` is a conditional resource of ``module``, or a conditional module of it (``in_file``
    names the file that module deploys, which holds the resource).
    """

    type: str
    module: str
    symbol: str
    flag: str
    main_param: str
    env: str
    in_file: str | None = None


GUARDED = (
    Guarded("Microsoft.ContainerService/managedClusters", "ml", "aks", "aksExists", "aksExists", "AKS_EXISTS", "aks"),
    Guarded(
        "Microsoft.KubernetesConfiguration/extensions",
        "ml",
        "amlExtension",
        "amlExtensionExists",
        "amlExtensionExists",
        "AML_EXTENSION_EXISTS",
    ),
    Guarded(
        "Microsoft.MachineLearningServices/workspaces/computes",
        "ml",
        "cpuCluster",
        "computeExists",
        "amlComputeExists",
        "AML_COMPUTE_EXISTS",
    ),
    Guarded(
        "Microsoft.ApiManagement/service/namedValues",
        "apim",
        "functionKey",
        "functionKeyNamedValueExists",
        "apimNamedValueExists",
        "APIM_NAMED_VALUE_EXISTS",
    ),
)
# Not in Bicep: the postprovision hook creates each when missing, with these az commands.
HOOK_OWNED = {
    "Microsoft.MachineLearningServices/workspaces/computes (Kubernetes)": ("ml compute show", "ml compute attach"),
    "Microsoft.MachineLearningServices/workspaces/onlineEndpoints": (
        "ml online-endpoint show",
        "ml online-endpoint create",
    ),
}
LISTED_TYPES = {g.type for g in GUARDED} | {"Microsoft.MachineLearningServices/workspaces/onlineEndpoints"}
HOOKS = BICEP / "hooks"
PREPROVISION = [HOOKS / "preprovision.sh", HOOKS / "preprovision.ps1"]
POSTPROVISION = [HOOKS / "postprovision.sh", HOOKS / "postprovision.ps1"]
# The templates `azd provision` deploys; bicep/hooks/apim-function-key.bicep is the postdeploy hook's own.
PROVISIONED = ["bicep/main.bicep", *(f"bicep/modules/{p.name}" for p in sorted((BICEP / "modules").glob("*.bicep")))]


def _ids(entry: Guarded) -> str:
    return entry.env


@pytest.mark.parametrize("entry", GUARDED, ids=_ids)
def test_each_listed_resource_is_created_only_when_missing(main, module, entry):
    """The resource (or the module that deploys it) is conditional on not(flag), false by default everywhere."""
    template = module(entry.module)
    if entry.in_file:
        block = template["modules"][entry.symbol]
        assert block["detail"]["path"] == f"{entry.in_file}.bicep"
        assert render(block["config"]["condition"]) == f"not({entry.flag})"
        assert [r.type for r in resources(module(entry.in_file)).values()] == [entry.type]
    else:
        resource = resources(template)[entry.symbol]
        assert (resource.type, resource.existing, resource.condition) == (entry.type, False, f"not({entry.flag})")
    block = template["parameters"][entry.flag]
    assert (block["type"], block["default"]) == ("bool", False)
    assert "preprovision" in (description(block) or "")
    assert render(main["modules"][entry.module]["config"]["params"][entry.flag]) == entry.main_param
    main_block = main["parameters"][entry.main_param]
    assert (main_block["type"], main_block["default"]) == ("bool", False)
    assert entry.env in (description(main_block) or "")


@pytest.mark.parametrize("entry", GUARDED, ids=_ids)
def test_azd_passes_the_flag_the_preprovision_hook_writes(entry):
    """main.parameters.json reads the azd value (false when unset), and both preprovision hooks write it."""
    mapped = json.loads((BICEP / "main.parameters.json").read_text())["parameters"]
    assert mapped[entry.main_param] == {"value": f"${{{entry.env}=false}}"}
    for hook in PREPROVISION:
        assert re.search(rf"^\s*azd env set {entry.env} \S+", hook.read_text(), re.MULTILINE), hook.name


def _exists_calls(hook: Path) -> list[tuple[str, str]]:
    """(resource id, API version) of every `az resource show` the hook makes through its exists helper.

    Variables holding a resource id ($group, $cluster) are replaced by what the hook assigns to them.
    """
    text = hook.read_text().replace("\\\n", " ")
    if hook.suffix == ".sh":
        assigned = dict(re.findall(r'^\s*(\w+)="([^"]*)"\s*$', text, re.MULTILINE))
        calls = re.findall(r'exists\s+"([^"]+)"\s+([\w.-]+)\)', text)
    else:
        assigned = dict(re.findall(r'^\s*\$(\w+)\s*=\s*"([^"]*)"\s*$', text, re.MULTILINE))
        calls = [(i.strip('"'), v) for i, v in re.findall(r"Test-Exists\s+(\$\w+|\"[^\"]+\")\s+'([^']+)'", text)]

    def resolve(value: str) -> str:
        for _ in range(5):
            value = re.sub(r"\$(\w+)\b", lambda m: assigned.get(m.group(1), m.group(0)), value)
        return value

    return [(resolve(resource_id), version) for resource_id, version in calls]


def _id_pattern(resource_type: str) -> re.Pattern[str]:
    """A resource id of the type, at the end of the id: Namespace/type/<name>/child/<name>."""
    namespace, *segments = resource_type.split("/")
    return re.compile(re.escape(namespace) + "".join(rf"/{re.escape(s)}/[^/]+" for s in segments) + "$")


@pytest.mark.parametrize("hook", PREPROVISION, ids=lambda p: p.name)
def test_preprovision_asks_about_each_listed_resource_with_its_api_version(templates, hook):
    """One `az resource show` per listed resource, of its type and the API version Bicep deploys it with."""
    calls = _exists_calls(hook)
    assert len(calls) == len(GUARDED), calls
    for entry in GUARDED:
        resource = _guarded_resource(templates, entry)
        matching = [(i, v) for i, v in calls if _id_pattern(entry.type).search(i)]
        assert [v for _, v in matching] == [resource.api_version], (entry.env, calls)


def _guarded_resource(templates, entry: Guarded):
    """The resource a guarded entry creates."""
    if entry.in_file:
        [resource] = resources(templates[f"bicep/modules/{entry.in_file}.bicep"]).values()
        return resource
    return resources(templates[f"bicep/modules/{entry.module}.bicep"])[entry.symbol]


def test_no_other_resource_of_a_listed_type_is_put_unconditionally(templates):
    """Of the listed types Bicep deploys only the guarded resources, and no Kubernetes compute or endpoint.

    A file a module deploys counts as guarded only when every module that deploys it is the guarded one.
    """
    guarded = {
        (f"bicep/modules/{g.in_file}.bicep", _guarded_resource(templates, g).name)
        if g.in_file
        else (f"bicep/modules/{g.module}.bicep", g.symbol)
        for g in GUARDED
    }
    deployed_by: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for path in PROVISIONED:
        for name, block in (templates[path].get("modules") or {}).items():
            deployed_by[(Path(path).parent / block["detail"]["path"]).as_posix()].append((path, name))
    for entry in GUARDED:
        if entry.in_file:
            file = f"bicep/modules/{entry.in_file}.bicep"
            assert deployed_by[file] == [(f"bicep/modules/{entry.module}.bicep", entry.symbol)]
    found = {
        (path, resource.name)
        for path in PROVISIONED
        for resource in resources(templates[path]).values()
        if resource.type in LISTED_TYPES and not resource.existing
    }
    assert found == guarded
    computes = of_type(templates["bicep/modules/ml.bicep"], "Microsoft.MachineLearningServices/workspaces/computes")
    assert [c.config["properties"]["computeType"] for c in computes] == ["AmlCompute"]


@pytest.mark.parametrize("hook", POSTPROVISION, ids=lambda p: p.name)
def test_the_hook_creates_the_kubernetes_compute_and_the_endpoint_only_when_missing(hook):
    """In postprovision each hook-owned resource is looked for first; the compute comes after the instance type."""
    text = hook.read_text()
    for show, create in HOOK_OWNED.values():
        assert 0 <= text.index(show) < text.index(create), (hook.name, create)
    assert text.index("kubectl apply -f instancetype.yaml") < text.index("ml compute attach")
    assert text.index("ml compute attach") < text.index("ml online-endpoint create")


# ---- what Azure will not change, but Bicep never asks it to -----------------------------------------------------


def test_workspace_links_azure_ml_cannot_change_are_fixed_names(main, module):
    """Storage, vault and HBI cannot change on a workspace, so their values derive from the resource token.

    The workspace update (PATCH, WorkspaceUpdateParameters: learn.microsoft.com, REST API, Azure ML,
    "Workspaces - Update") takes the registry and App Insights but not the storage account, the key vault or
    hbiWorkspace; a re-PUT with the same values is no change.
    """
    workspace = resources(module("ml"))["workspace"]
    properties = {k: render(v) for k, v in workspace.config["properties"].items()}
    assert (properties["storageAccount"], properties["keyVault"], properties["hbiWorkspace"]) == (
        "storage.id",
        "keyVault.id",
        "false",
    )
    params = {k: render(v) for k, v in main["modules"]["ml"]["config"]["params"].items()}
    assert params["storageAccountName"] == "storage.outputs.name"
    assert params["keyVaultName"] == "${abbrs.keyVaultVaults}${resourceToken}"
    assert render(main["modules"]["storage"]["config"]["params"]["storageAccountName"]).endswith("${resourceToken}")


def _role_assignments(templates) -> list[tuple[str, object]]:
    return [
        (path, resource)
        for path in PROVISIONED
        for resource in resources(templates[path]).values()
        if resource.type == "Microsoft.Authorization/roleAssignments"
    ]


def test_a_role_assignment_is_named_by_its_scope_principal_and_role(templates):
    """A changed scope, principal or role makes a new assignment, never an update of one.

    Resource Manager refuses to change an assignment's principal or scope ("RoleAssignmentUpdateNotPermitted:
    Tenant ID, application ID, principal ID, and scope are not allowed to be updated"), so each name is
    guid(scope, principal, role) of exactly what its properties say. A system identity's principal is known
    only once its resource exists, so its resource id stands for it (the identity lives as long as it does).
    """
    found = _role_assignments(templates)
    assert len(found) >= 10
    for path, resource in found:
        properties = resource.config["properties"]
        principal = render(properties["principalId"])
        if principal.endswith(".identity.principalId"):
            principal = principal.removesuffix(".identity.principalId") + ".id"
        role = re.fullmatch(
            r"subscription_resource_id\(Microsoft\.Authorization/roleDefinitions, (.+)\)",
            render(properties["roleDefinitionId"]),
        )
        assert role, (path, resource.name)
        expected = f"guid({resource.config['scope']}.id, {principal}, {role.group(1)})"
        assert render(resource.config["name"]) == expected, (path, resource.name)


def test_the_hub_s_partition_count_is_a_constant(main, module):
    """No azd value can change the hub's partition count, which a Standard hub takes at creation only.

    learn.microsoft.com, Event Hubs, "Configure properties for an event hub": only the premium tier updates it.
    """
    assert "partitionCount" not in keys(main["modules"]["eventhubs"]["config"]["params"])
    hub = resources(module("eventhubs"))["hub"]
    assert hub.config["properties"]["partitionCount"] == "partitionCount"
    assert isinstance(module("eventhubs")["parameters"]["partitionCount"]["default"], int)
