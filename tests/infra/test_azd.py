"""azd wiring, offline: azure.yaml, the hooks, .azure/, docs/deploy.md and the Airbyte setup script."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import yaml

from functions.settings import Settings
from tests.infra.bicep_model import AZD_OUTPUTS, render, resources

ROOT = Path(__file__).resolve().parents[2]
HOOKS = ROOT / "bicep" / "hooks"
MAIN_BICEP = ROOT / "bicep" / "main.bicep"
PARAMETERS = ROOT / "bicep" / "main.parameters.json"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
AZURE_YAML = yaml.safe_load((ROOT / "azure.yaml").read_text())
# What azd itself puts in every environment.
AZD_PROVIDED = frozenset({"AZURE_ENV_NAME", "AZURE_SUBSCRIPTION_ID", "AZURE_LOCATION", "AZURE_PRINCIPAL_ID"})
# UPPER_SNAKE words in the hooks that are not environment values (STOCKCAST_HOOK_RETRY_SECONDS: the
# postdeploy hook's wait between attempts, 30 s unless a test shortens it).
HOOK_WORDS = frozenset({"SASL_SSL", "BASH_SOURCE", "STOCKCAST_HOOK_RETRY_SECONDS"})
# Variables docs/deploy.md uses that are neither azd values nor set in the doc: read by our own tools.
DOC_TOOL_VARIABLES = frozenset(
    {"KAFKA_SASL_PASSWORD", "AIRBYTE_CLIENT_ID", "AIRBYTE_CLIENT_SECRET", "AIRBYTE_TOKEN", "AIRBYTE_API_URL"}
)
UPPER_SNAKE = re.compile(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b")
# The settings `az k8s-extension create` adds to an AzureML extension on AKS by itself (azure-cli-extensions,
# src/k8s-extension/azext_k8s_extension/partner_extensions/AzureMLKubernetes.py, Create and _dereference).
CLI_DERIVED = (
    "cluster_name",
    "clusterId",
    "prometheus.prometheusSpec.externalLabels.cluster_name",
    "cluster_name_friendly",
    "location",
    "jobSchedulerLocation",
    "domain",
    "servicebus.enabled",
    "relayserver.enabled",
    "nginxIngress.enabled",
)
FAKE_SECRET = "Endpoint=sb://evhns-test.servicebus.windows.net/;SharedAccessKeyName=airbyte-send;SharedAccessKey=FAKEkey0123456789abcdef=;EntityPath=stock_bars"
ENV_VALUES = {
    "AZURE_ENV_NAME": "dev",
    "AZURE_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000001",
    "AZURE_RESOURCE_GROUP": "rg-dev",
    "AML_WORKSPACE": "mlw-test",
    "AML_ENDPOINT": "stockcast-test",
    "AKS_CLUSTER_NAME": "aks-test",
    "AML_KUBERNETES_COMPUTE": "k8s-compute",
    "EVENTHUBS_NAMESPACE": "evhns-test",
    "EVENTHUBS_BOOTSTRAP_SERVER": "evhns-test.servicebus.windows.net:9093",
    "EVENTHUB_NAME": "stock_bars",
    "EVENTHUB_SEND_RULE_NAME": "airbyte-send",
}


def bicep_outputs() -> set[str]:
    """Names of the outputs declared in bicep/main.bicep."""
    return set(re.findall(r"^output\s+(\w+)", MAIN_BICEP.read_text(), re.MULTILINE))


def hook_set_values() -> set[str]:
    """Names a hook writes into the azd environment (``azd env set NAME``) for main.parameters.json."""
    return {name for path in HOOK_FILES for name in re.findall(r"azd env set ([A-Z][A-Z0-9_]*)", path.read_text())}


def known_values() -> set[str]:
    """Everything a hook or the doc may read from an azd environment."""
    return bicep_outputs() | AZD_PROVIDED | hook_set_values()


def load_airbyte() -> ModuleType:
    """bicep/hooks/airbyte.py as a module (bicep/ is not a package)."""
    spec = importlib.util.spec_from_file_location("stockcast_airbyte_setup", HOOKS / "airbyte.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


airbyte = load_airbyte()
TARGET = airbyte.EventHubsTarget.from_env(ENV_VALUES)


def hook_entries() -> list[tuple[str, str, dict[str, Any]]]:
    """(hook, platform, entry) for every hook in azure.yaml."""
    return [(hook, platform, entry[platform]) for hook, entry in AZURE_YAML["hooks"].items() for platform in entry]


HOOK_LIBRARY = HOOKS / "lib.sh"  # sourced by the shell hooks, not run by azd
HOOK_FILES = sorted(p for p in HOOKS.iterdir() if p.suffix in {".sh", ".ps1"} and p != HOOK_LIBRARY)


# --- azure.yaml ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (("name",), "stockcast"),
        (("infra", "provider"), "bicep"),
        (("infra", "path"), "bicep"),
        (("services", "api", "project"), "."),
        (("services", "api", "language"), "python"),
        (("services", "api", "host"), "function"),
    ],
)
def test_azure_yaml_declares_the_function_app_and_bicep(path, expected):
    """azure.yaml deploys the repository root as a Python Function App, provisioned from bicep/."""
    value: Any = AZURE_YAML
    for key in path:
        value = value[key]
    assert value == expected


def test_azure_yaml_has_one_service_and_the_hooks():
    """One service (api); the pre/post provision hooks and postdeploy, each for posix and windows."""
    assert list(AZURE_YAML["services"]) == ["api"]
    assert {hook: sorted(entry) for hook, entry in AZURE_YAML["hooks"].items()} == {
        "preprovision": ["posix", "windows"],
        "postprovision": ["posix", "windows"],
        "postdeploy": ["posix", "windows"],
    }


def test_hook_set_values_are_bicep_parameters():
    """What preprovision writes with `azd env set` is read by main.parameters.json, defaulting to false."""
    assert hook_set_values() == {"AKS_EXISTS", "AML_EXTENSION_EXISTS", "AML_COMPUTE_EXISTS", "APIM_NAMED_VALUE_EXISTS"}
    defaults = parameter_defaults()
    assert {name: defaults.get(name) for name in hook_set_values()} == dict.fromkeys(hook_set_values(), "false")


@pytest.mark.parametrize("stem", ["preprovision", "postprovision", "postdeploy"])
def test_windows_hooks_run_the_same_az_commands(stem):
    """Each .ps1 hook calls the same az command groups and verbs as its .sh twin (pwsh does not run here)."""

    def commands(text: str) -> set[str]:
        # az ... in both; Invoke-Az / Test-Az ... (the ps1 helpers) in PowerShell
        call = r"(?:^|[\s(&|])(?:az|Invoke-Az|Test-Az) ((?:[a-z0-9-]+ ){1,3}?)(?:--|@|\$|\\|`|'|\"|$)"
        found = re.findall(call, text, re.MULTILINE)
        return {c.strip() for c in found if c.strip()}

    sh, ps1 = (HOOKS / f"{stem}.sh").read_text(), (HOOKS / f"{stem}.ps1").read_text()
    assert commands(sh) and commands(sh) == commands(ps1)
    if stem == "postprovision":
        settings = re.findall(r"\b([\w.]+)=", sh.split("extension_settings=(", 1)[1].split(")", 1)[0])
        assert len(settings) == 19 and all(f"'{key}=" in ps1 or f'"{key}=' in ps1 for key in settings)


@pytest.mark.parametrize(("hook", "platform", "entry"), hook_entries(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_hook_file_exists_with_its_shell(hook, platform, entry):
    """Each hook's script exists, matches its shell, and the posix one is executable."""
    script = ROOT / entry["run"]
    assert script.is_file()
    assert (entry["shell"], script.suffix) == {"posix": ("sh", ".sh"), "windows": ("pwsh", ".ps1")}[platform]
    assert entry.get("interactive", False) is (hook == "postprovision")  # its Airbyte settings stay on screen
    if platform == "posix":
        assert os.access(script, os.X_OK)
        assert script.read_text().startswith("#!/usr/bin/env bash\n")


@pytest.mark.parametrize("script", [p for p in HOOK_FILES if p.suffix == ".sh"], ids=lambda p: p.name)
def test_shell_hooks_parse(script):
    """Every .sh hook passes ``bash -n``."""
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert (result.returncode, result.stderr) == (0, "")


# --- names shared with bicep/main.bicep -------------------------------------------------------------------------


def test_main_bicep_emits_the_outputs_the_hooks_and_docs_rely_on():
    """bicep/main.bicep declares every output promised to the hooks and docs/deploy.md."""
    assert sorted(AZD_OUTPUTS - bicep_outputs()) == []


@pytest.mark.parametrize("script", HOOK_FILES, ids=lambda p: p.name)
def test_hooks_read_only_bicep_outputs_and_azd_values(script):
    """Every UPPER_SNAKE name in a hook is a main.bicep output or a value azd provides."""
    names = set(UPPER_SNAKE.findall(script.read_text())) - HOOK_WORDS
    assert names, "the hook reads no azd values?"
    assert sorted(names - known_values()) == []


def doc_variables(text: str) -> tuple[set[str], set[str]]:
    """(UPPER_SNAKE names the doc reads, names it assigns itself) in docs/deploy.md."""
    read = set(re.findall(r"\$\{?([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)", text))
    read |= {name for name in re.findall(r"`([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)`", text)}
    assigned = set(re.findall(r"(?:^|[\s;(])(?:export\s+)?([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)=", text, re.MULTILINE))
    return read, assigned


def test_training_environment_uses_the_job_and_timer_base_image():
    """job.yml's environment is the one the timer's jobs and the deployments define inline."""
    job = yaml.safe_load((ROOT / "training_job" / "job.yml").read_text())
    assert job["environment"]["image"] == Settings.__dataclass_fields__["aml_environment_image"].default
    assert job["environment"]["conda_file"] == "environment/conda.yaml"


def test_shell_hooks_share_one_library_for_the_azd_environment():
    """The sh hooks source lib.sh for logging, azd values and required values, instead of copies."""
    for path in HOOK_FILES:
        if path.suffix == ".sh" and path.name != "preprovision.sh":
            text = path.read_text()
            assert 'source "$root/bicep/hooks/lib.sh"' in text and "require_values " in text, path.name
            assert "load_azd_env() {" not in text, path.name
    assert "require_values() {" in HOOK_LIBRARY.read_text()


def test_no_hook_registers_an_unused_environment():
    """No hook registers an environment: the job and the deployments define theirs inline (Azure ML caches it)."""
    for path in HOOK_FILES:
        assert "ml environment" not in path.read_text(), path.name


# --- the hooks never handle the secret ----------------------------------------------------------------------------


@pytest.mark.parametrize("script", HOOK_FILES, ids=lambda p: p.name)
def test_hooks_never_capture_or_trace_the_connection_string(script):
    """No hook captures the keys-list output in a variable, calls listKeys, or traces commands."""
    text = script.read_text()
    assert not re.search(r"\$\([^)]*keys\s+list", text)  # bash/pwsh command substitution
    assert not re.search(r"=\s*&?\s*az\s+eventhubs[^\n]*keys\s+list", text)  # pwsh assignment
    assert not re.search(r"listKeys|set\s+-[a-z]*x|Set-PSDebug|primaryKey|sharedAccessKey", text, re.IGNORECASE)


FAKE_AZ = r"""#!/usr/bin/env bash
printf '%s\n' "$*" >>"$FAKE_AZ_LOG"
args=("$@")
if [[ "$1 $2 $3" == "ml online-endpoint create" ]]; then
  for ((i = 0; i < ${#args[@]}; i++)); do
    [[ "${args[i]}" == --file ]] && cat "${args[i + 1]}" >>"$FAKE_AZ_LOG.files"
  done
fi
case "$*" in
  "account show"*) exit 0 ;;
  *"authorization-rule keys list"*) printf '%s\n' "$FAKE_SECRET"; exit 0 ;;
  "aks show"*)
    printf '%s\n' /subscriptions/s/resourceGroups/rg-dev/providers/Microsoft.ContainerService/managedClusters/aks-test
    printf 'EastUS2\n'
    if [[ "$FAKE_AZ_MODE" == stopped ]]; then printf 'Stopped\n'; else printf 'Running\n'; fi
    exit 0 ;;
  "k8s-extension list"*)
    case "$FAKE_AZ_MODE" in
      present | stale) printf 'azureml\tMicrosoft.AzureML.Kubernetes\tSucceeded\n' ;;
      failed) printf 'flux\tmicrosoft.flux\tSucceeded\nazureml\tmicrosoft.azureml.kubernetes\tFailed\n' ;;
    esac
    exit 0 ;;
  "k8s-extension show"*)
    keys="$FAKE_EXTENSION_KEYS"
    [[ "$FAKE_AZ_MODE" == stale ]] && keys="$FAKE_STALE_KEYS"
    printf '%s\n' "$keys"
    exit 0 ;;
  "aks command invoke"*)
    [[ "$PWD" == */bicep/hooks && -f instancetype.yaml ]] || { echo "instancetype.yaml not here" >&2; exit 2; }
    if [[ "$FAKE_AZ_MODE" == apply-fails ]]; then
      printf '1\nerror: the server could not find the requested resource\n'
    else
      printf '0\ninstancetype.amlarc.azureml.com/stockcast-scoring configured\n'
    fi
    exit 0 ;;
  "resource show"*)
    case "$FAKE_AZ_MODE" in
      present) exit 0 ;;
      denied) echo "(AuthorizationFailed) The client does not have authorization" >&2; exit 1 ;;
      *) echo "(ResourceGroupNotFound) Resource group 'rg-dev' could not be found." >&2; exit 3 ;;
    esac ;;
  "deployment group create"*)
    count=$(($(cat "$FAKE_AZ_LOG.deploys" 2>/dev/null || echo 0) + 1))
    echo "$count" >"$FAKE_AZ_LOG.deploys"
    ((count > ${FAKE_DEPLOY_FAILURES:-0})) && exit 0
    echo "(BadRequest) Encountered an error (ServiceUnavailable) from host runtime." >&2; exit 1 ;;
  *" show "*)
    [[ "$FAKE_AZ_MODE" == present || "$FAKE_AZ_MODE" == stale ]] && exit 0
    echo "(ResourceNotFound)" >&2; exit 3 ;;
  *) exit 0 ;;
esac
"""
FAKE_AZD = r"""#!/usr/bin/env bash
printf '%s\n' "$*" >>"$FAKE_AZD_LOG"
exit 0
"""
AKS_ID = "/subscriptions/s/resourceGroups/rg-dev/providers/Microsoft.ContainerService/managedClusters/aks-test"


@pytest.fixture(scope="module")
def ml_template(templates: dict[str, Any]) -> dict[str, Any]:
    """bicep/modules/ml.bicep, parsed."""
    return templates["bicep/modules/ml.bicep"]


@pytest.fixture
def run_hook(tmp_path: Path, ml_template: dict[str, Any]) -> Iterator[Any]:
    """Run a .sh hook against a fake az (and azd) on PATH; return (result, az calls, azd calls, files passed to az)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("az", FAKE_AZ), ("azd", FAKE_AZD)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log, azd_log = tmp_path / "az.log", tmp_path / "azd.log"
    system_path = ":".join(p for p in ("/usr/local/bin", "/usr/bin", "/bin") if Path(p).is_dir())
    keys = [
        key.strip("'") for key in resources(ml_template)["amlExtension"].config["properties"]["configurationSettings"]
    ]

    def run(
        script: str, mode: str, values: dict[str, str] = ENV_VALUES, **extra: str
    ) -> tuple[subprocess.CompletedProcess[str], list[str], list[str], str]:
        for path in (log, azd_log, Path(f"{log}.files"), Path(f"{log}.deploys")):
            path.unlink(missing_ok=True)
        log.write_text("")
        azd_log.write_text("")
        env = {
            **values,
            "PATH": f"{bin_dir}:{system_path}",
            "HOME": str(tmp_path),
            "FAKE_AZ_LOG": str(log),
            "FAKE_AZD_LOG": str(azd_log),
            "FAKE_AZ_MODE": mode,
            "FAKE_SECRET": FAKE_SECRET,
            "FAKE_EXTENSION_KEYS": "\n".join(keys),
            "FAKE_STALE_KEYS": "\n".join(keys[:9]),  # what the old Bicep and hook set
            **extra,
        }
        result = subprocess.run(
            ["bash", str(HOOKS / script)], capture_output=True, text=True, env=env, check=False, timeout=60
        )
        files = Path(f"{log}.files")
        return (
            result,
            log.read_text().splitlines(),
            azd_log.read_text().splitlines(),
            files.read_text() if files.exists() else "",
        )

    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    yield run


@pytest.fixture
def run_postprovision(run_hook: Any) -> Any:
    """postprovision.sh against the fake az: (result, az calls, files passed to az)."""

    def run(mode: str, values: dict[str, str] = ENV_VALUES, **extra: str) -> Any:
        result, calls, _, files = run_hook("postprovision.sh", mode, values, **extra)
        return result, calls, files

    return run


def _verbs(calls: list[str]) -> set[str]:
    return {" ".join(call.split()[:3]) for call in calls}


def _config(call: str) -> dict[str, str]:
    """The key=value pairs after --config in an az k8s-extension call."""
    pairs = call.split("--config ", 1)[1].split(" --", 1)[0].split()
    return dict(pair.split("=", 1) for pair in pairs)


def test_postprovision_changes_nothing_when_everything_exists(run_postprovision):
    """A re-run only looks (and re-applies the unchanged instance type): no create, attach or update."""
    result, calls, _ = run_postprovision("present")
    assert result.returncode == 0, result.stderr
    assert _verbs(calls) == {
        "account show --subscription",
        "aks show --subscription",
        "k8s-extension list --subscription",
        "k8s-extension show --subscription",
        "ml compute show",
        "aks command invoke",
        "ml online-endpoint show",
    }
    assert not [call for call in calls if re.search(r" (create|attach|update) ", call)]
    assert "every setting in place" in result.stdout
    assert "instancetype.amlarc.azureml.com/stockcast-scoring configured" in result.stdout
    assert not [call for call in calls if "keys list" in call]
    assert "FAKEkey" not in result.stdout + result.stderr


def test_postprovision_creates_what_is_missing(run_postprovision):
    """On a bare cluster it installs the extension, applies the instance type, attaches AKS, creates the endpoint."""
    result, calls, files = run_postprovision("missing")
    assert result.returncode == 0, result.stderr
    verb = {call: " ".join(call.split()[1:3] if call.startswith("ml ") else call.split()[:2]) for call in calls}
    created = {verb[call]: call for call in calls if re.search(r" (create|attach) ", call)}
    assert sorted(created) == ["compute attach", "k8s-extension create", "online-endpoint create"]
    assert "--extension-type Microsoft.AzureML.Kubernetes" in created["k8s-extension create"]
    assert "--cluster-name aks-test" in created["k8s-extension create"]
    assert f"--type Kubernetes --name k8s-compute --resource-id {AKS_ID} " in created["compute attach"]
    assert yaml.safe_load(files) == {
        "$schema": "https://azuremlschemas.azureedge.net/latest/kubernetesOnlineEndpoint.schema.json",
        "name": "stockcast-test",
        "compute": "azureml:k8s-compute",
        "auth_mode": "key",
        "description": "Stockcast champion model; the train_trigger timer rolls deployments out blue/green.",
        "tags": {"app": "stockcast"},
    }
    invoke = next(call for call in calls if call.startswith("aks command invoke"))
    assert "--name aks-test --command kubectl apply -f instancetype.yaml --file instancetype.yaml" in invoke
    assert all("--workspace-name mlw-test" in call for call in calls if call.startswith("ml "))
    assert not [call for call in calls if "keys list" in call or "ml environment" in call]


def test_postprovision_applies_the_instance_type_before_it_attaches_the_compute(run_postprovision):
    """Extension, instance type, compute, endpoint, in that order: the first deployment finds its instance type.

    The compute and the endpoint are not in Bicep (tests/infra/test_reprovision.py), so nothing attaches AKS
    before the hook has applied bicep/hooks/instancetype.yaml.
    """
    result, calls, _ = run_postprovision("missing")
    assert result.returncode == 0, result.stderr
    steps = ["k8s-extension create", "aks command invoke", "ml compute attach", "ml online-endpoint create"]
    order = [next(i for i, call in enumerate(calls) if call.startswith(step)) for step in steps]
    assert order == sorted(order)


def test_postprovision_leaves_a_stopped_cluster_alone(run_postprovision):
    """`az aks stop` (docs/deploy.md) then `azd up`: no cluster step is tried, the hook says how to finish, exit 0."""
    result, calls, _ = run_postprovision("stopped")
    assert result.returncode == 0, result.stderr
    assert _verbs(calls) == {"account show --subscription", "aks show --subscription"}
    assert "AKS aks-test is stopped" in result.stdout and "azd hooks run postprovision" in result.stdout
    assert "Bootstrap servers  evhns-test.servicebus.windows.net:9093" in result.stdout


def test_postprovision_installs_the_extension_with_what_the_cli_computes(run_postprovision):
    """The settings `az k8s-extension create` derives from the cluster are passed, with this cluster's values."""
    _, calls, _ = run_postprovision("missing")
    config = _config(next(call for call in calls if call.startswith("k8s-extension create")))
    assert {key: config[key] for key in CLI_DERIVED} == {
        "cluster_name": AKS_ID,
        "clusterId": AKS_ID,
        "prometheus.prometheusSpec.externalLabels.cluster_name": AKS_ID,
        "cluster_name_friendly": "aks-test",
        "location": "eastus2",
        "jobSchedulerLocation": "eastus2",
        "domain": "eastus2.cloudapp.azure.com",
        "servicebus.enabled": "false",
        "relayserver.enabled": "false",
        "nginxIngress.enabled": "true",
    }


def test_postprovision_settings_are_the_ones_bicep_declares(run_postprovision, ml_template):
    """Same keys; the same literals; and where Bicep reads the cluster, the hook passes what az aks show said."""
    _, calls, _ = run_postprovision("missing")
    hook = _config(next(call for call in calls if call.startswith("k8s-extension create")))
    bicep = {
        key.strip("'"): render(value)
        for key, value in resources(ml_template)["amlExtension"].config["properties"]["configurationSettings"].items()
    }
    assert set(hook) == set(bicep)
    derived = {
        "cluster.id": AKS_ID,
        "cluster.name": "aks-test",
        "to_lower(location)": "eastus2",
        "${toLower(location)}.cloudapp.azure.com": "eastus2.cloudapp.azure.com",
    }
    assert {key: derived.get(value, value) for key, value in bicep.items()} == hook
    # the Kubernetes compute's namespace is the extension's release namespace, whoever installed it
    namespace = resources(ml_template)["amlExtension"].config["properties"]["scope"]["cluster"]["releaseNamespace"]
    attach = next(call for call in calls if call.startswith("ml compute attach"))
    assert attach.split("--namespace ")[1].split()[0] == namespace == "azureml"
    assert f"--release-namespace {namespace}" in " ".join(calls)


def test_postprovision_completes_an_extension_that_lacks_settings(run_postprovision):
    """An extension made without the CLI's settings (the old template) gets exactly the missing ones added."""
    result, calls, _ = run_postprovision("stale")
    assert result.returncode == 0, result.stderr
    assert not [call for call in calls if call.startswith("k8s-extension create")]
    update = next(call for call in calls if call.startswith("k8s-extension update"))
    assert "--name azureml" in update and "--yes" in update
    assert set(_config(update)) == set(CLI_DERIVED)
    assert "adding the settings it lacks: cluster_name clusterId" in result.stdout


def test_postprovision_stops_on_an_unhealthy_extension(run_postprovision):
    """A Failed extension is reported with what to do, not skipped as present; nothing is created after it."""
    result, calls, _ = run_postprovision("failed")
    assert result.returncode == 1
    assert "AzureML extension azureml on AKS aks-test is Failed, not Succeeded" in result.stderr
    assert "az k8s-extension delete" in result.stderr
    assert not [call for call in calls if re.search(r" (create|attach|update|invoke) ", call)]


def test_postprovision_fails_when_the_instance_type_is_not_applied(run_postprovision):
    """A failed kubectl apply (its exit code comes back from command invoke) stops the hook with kubectl's words."""
    result, _, _ = run_postprovision("apply-fails")
    assert result.returncode == 1
    assert "kubectl apply failed: error: the server could not find the requested resource" in result.stderr


@pytest.mark.parametrize(
    "expected_line",
    [
        "Bootstrap servers  evhns-test.servicebus.windows.net:9093",
        "Topic pattern      stock_bars",
        "Security protocol  SASL_SSL",
        "SASL mechanism     PLAIN",
        "SASL username      $ConnectionString",
        "SASL JAAS config   org.apache.kafka.common.security.plain.PlainLoginModule required "
        'username="$ConnectionString" password="<Send-only connection string>";',
    ],
)
def test_postprovision_prints_the_airbyte_settings(run_postprovision, expected_line):
    """The Airbyte destination settings are printed, line by line, with a placeholder for the secret."""
    result, _, _ = run_postprovision("present")
    assert f"  {expected_line}\n" in result.stdout


def test_postprovision_prints_the_exact_command_that_fetches_the_connection_string(run_postprovision):
    """The printed command is the one airbyte.py runs, with this environment's names filled in."""
    result, _, _ = run_postprovision("present")
    assert f"  {' '.join(airbyte.connection_string_command(TARGET))}\n" in result.stdout
    assert (
        "az eventhubs eventhub authorization-rule keys list --resource-group rg-dev --namespace-name evhns-test "
        "--eventhub-name stock_bars --name airbyte-send --query primaryConnectionString -o tsv" in result.stdout
    )


def test_postprovision_fails_naming_every_missing_value(run_postprovision):
    """Without the azd values (and no azd to read them from) it stops and names each one."""
    partial = {key: value for key, value in ENV_VALUES.items() if key not in {"AML_ENDPOINT", "AKS_CLUSTER_NAME"}}
    result, calls, _ = run_postprovision("present", partial)
    assert result.returncode == 1
    assert "missing azd environment values: AML_ENDPOINT AKS_CLUSTER_NAME" in result.stderr
    assert calls == []


# --- preprovision: which resources exist already ------------------------------------------------------------------

EXISTING_ENV = {
    **ENV_VALUES,
    "AML_WORKSPACE": "mlw-test",
    "AML_COMPUTE": "cpu-cluster",
    "APIM_NAME": "apim-test",
}
GROUP_ID = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-dev/providers"
# What preprovision asks Resource Manager about, with the API version of the Bicep resource it guards.
EXISTS_CHECKS = {
    "AKS_EXISTS": (f"{GROUP_ID}/Microsoft.ContainerService/managedClusters/aks-test", "2024-09-01"),
    "AML_EXTENSION_EXISTS": (
        f"{GROUP_ID}/Microsoft.ContainerService/managedClusters/aks-test"
        "/providers/Microsoft.KubernetesConfiguration/extensions/azureml",
        "2023-05-01",
    ),
    "AML_COMPUTE_EXISTS": (
        f"{GROUP_ID}/Microsoft.MachineLearningServices/workspaces/mlw-test/computes/cpu-cluster",
        "2025-06-01",
    ),
    "APIM_NAMED_VALUE_EXISTS": (
        f"{GROUP_ID}/Microsoft.ApiManagement/service/apim-test/namedValues/stockcast-function-key",
        "2024-05-01",
    ),
}


def test_preprovision_on_a_new_environment_says_nothing_exists(run_hook):
    """Before the first provision there is no resource group to look in: every flag is false, nothing is asked."""
    fresh = {"AZURE_ENV_NAME": "dev", "AZURE_SUBSCRIPTION_ID": ENV_VALUES["AZURE_SUBSCRIPTION_ID"]}
    result, calls, azd_calls, _ = run_hook("preprovision.sh", "present", fresh)
    assert result.returncode == 0, result.stderr
    assert azd_calls == [f"env set {name} false" for name in EXISTS_CHECKS]
    assert not [call for call in calls if call.startswith("resource show")]
    assert "bicep version --only-show-errors" in calls


def test_preprovision_tells_bicep_what_exists(run_hook):
    """Resource Manager is asked about each guarded resource with the API version Bicep uses; found is true."""
    result, calls, azd_calls, _ = run_hook("preprovision.sh", "present", EXISTING_ENV)
    assert result.returncode == 0, result.stderr
    assert azd_calls == [f"env set {name} true" for name in EXISTS_CHECKS]
    shows = [call for call in calls if call.startswith("resource show")]
    assert shows == [
        f"resource show --ids {resource_id} --api-version {version} --only-show-errors --output none"
        for resource_id, version in EXISTS_CHECKS.values()
    ]


def test_preprovision_after_azd_down_says_nothing_exists(run_hook):
    """NotFound (here of the resource group) is false; the extension is not looked for on a missing cluster."""
    result, calls, azd_calls, _ = run_hook("preprovision.sh", "missing", EXISTING_ENV)
    assert result.returncode == 0, result.stderr
    assert azd_calls == [f"env set {name} false" for name in EXISTS_CHECKS]
    shows = [call.split()[3] for call in calls if call.startswith("resource show")]
    assert shows == [EXISTS_CHECKS[name][0] for name in ("AKS_EXISTS", "AML_COMPUTE_EXISTS", "APIM_NAMED_VALUE_EXISTS")]


def test_preprovision_stops_when_it_cannot_tell(run_hook):
    """Any error other than NotFound stops the hook: guessing false would PUT again what exists."""
    result, _, azd_calls, _ = run_hook("preprovision.sh", "denied", EXISTING_ENV)
    assert result.returncode == 1
    assert "AuthorizationFailed" in result.stderr and "could not check AKS aks-test" in result.stderr
    assert azd_calls == []


# --- postdeploy: the function key into API Management ------------------------------------------------------------

DEPLOYED_ENV = {**ENV_VALUES, "APIM_NAME": "apim-test", "AZURE_FUNCTION_APP_NAME": "func-test"}


def test_postdeploy_has_resource_manager_copy_the_key(run_hook):
    """One deployment of apim-function-key.bicep with names only; the key is never fetched or printed."""
    result, calls, _, _ = run_hook("postdeploy.sh", "present", DEPLOYED_ENV)
    assert result.returncode == 0, result.stderr
    deploys = [call for call in calls if call.startswith("deployment group create")]
    assert deploys == [
        "deployment group create --subscription 00000000-0000-0000-0000-000000000001 --resource-group rg-dev "
        f"--name stockcast-apim-function-key --template-file {HOOKS / 'apim-function-key.bicep'} "
        "--parameters apimName=apim-test functionAppName=func-test --only-show-errors --output none"
    ]
    assert not [call for call in calls if re.search(r"keys? list|functionapp|listKeys", call)]
    assert "named value stockcast-function-key holds the Function App's key" in result.stdout


def test_postdeploy_waits_for_a_starting_host(run_hook):
    """A host that cannot hand out keys yet is retried; the third attempt succeeds."""
    result, calls, _, _ = run_hook(
        "postdeploy.sh", "present", DEPLOYED_ENV, FAKE_DEPLOY_FAILURES="2", STOCKCAST_HOOK_RETRY_SECONDS="0"
    )
    assert result.returncode == 0, result.stderr
    assert len([call for call in calls if call.startswith("deployment group create")]) == 3


def test_postdeploy_gives_up_with_the_command_to_retry(run_hook):
    """After six failed attempts it fails and says how to run it again."""
    result, calls, _, _ = run_hook(
        "postdeploy.sh", "present", DEPLOYED_ENV, FAKE_DEPLOY_FAILURES="99", STOCKCAST_HOOK_RETRY_SECONDS="0"
    )
    assert result.returncode == 1
    assert len([call for call in calls if call.startswith("deployment group create")]) == 6
    assert "azd hooks run postdeploy" in result.stderr


def test_postdeploy_fails_naming_every_missing_value(run_hook):
    """Without APIM_NAME and the app's name it stops before calling az."""
    result, calls, _, _ = run_hook("postdeploy.sh", "present", ENV_VALUES)
    assert result.returncode == 1
    assert "missing azd environment values: APIM_NAME AZURE_FUNCTION_APP_NAME" in result.stderr
    assert calls == []


# --- .azure/ ----------------------------------------------------------------------------------------------------


def git_ignored(path: str) -> bool:
    """Whether git ignores ``path`` (which need not exist)."""
    result = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT, capture_output=True, check=False)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode == 0


@pytest.mark.parametrize(
    ("path", "ignored"),
    [
        (".azure/config.json", False),
        (".azure/dev.env.example", False),
        (".azure/dev/.env", True),
        (".azure/dev/config.json", True),
        (".azure/prod/.env", True),
    ],
)
def test_azd_runtime_state_is_ignored_and_the_defaults_are_not(path, ignored):
    """What azd writes per environment is gitignored; the committed defaults are not."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    assert git_ignored(path) is ignored


def test_azure_defaults_name_the_example_environment():
    """.azure/config.json's default environment is the example's, and the example holds no secret."""
    config = json.loads((ROOT / ".azure" / "config.json").read_text())
    example = airbyte.parse_env_values((ROOT / ".azure" / "dev.env.example").read_text())
    assert config == {"version": 1, "defaultEnvironment": example["AZURE_ENV_NAME"]}
    assert example == {"AZURE_ENV_NAME": "dev", "AZURE_LOCATION": "eastus2"}
    text = (ROOT / ".azure" / "dev.env.example").read_text()
    assert not re.search(r"(?i)(secret|password|accountkey|sharedaccesskey|connectionstring)\s*=", text)


def test_example_environment_keys_are_azd_values_or_bicep_parameters():
    """Every key in the example (commented or not) is an azd value or a ${KEY} of main.parameters.json."""
    text = (ROOT / ".azure" / "dev.env.example").read_text()
    keys = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", text, re.MULTILINE))
    assert sorted(keys - AZD_PROVIDED - set(parameter_defaults())) == []


def test_example_knobs_show_the_parameter_defaults():
    """The commented knobs of the example show the defaults main.parameters.json applies."""
    if not PARAMETERS.exists():
        pytest.skip("bicep/main.parameters.json is not written yet")
    knobs = dict(
        re.findall(r'^#\s*([A-Z][A-Z0-9_]*)="([^"]*)"', (ROOT / ".azure" / "dev.env.example").read_text(), re.M)
    )
    knobs.pop("AZURE_SUBSCRIPTION_ID")
    defaults = parameter_defaults()
    assert knobs and {name: defaults[name] for name in knobs} == knobs


# --- docs/deploy.md ---------------------------------------------------------------------------------------------


def devhost_commands() -> set[str]:
    """Subcommands registered anywhere in devhost/ (``sub.add_parser("name", ...)``)."""
    text = "".join(path.read_text() for path in (ROOT / "devhost").rglob("*.py"))
    return set(re.findall(r"add_parser\(\s*\"([a-z-]+)\"", text))


def markdown_code(text: str) -> str:
    """The fenced blocks and inline code spans of a Markdown text, one per line."""
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    return "\n".join([*fenced, *re.findall(r"`([^`\n]+)`", prose)])


def app_settings() -> set[str]:
    """The app settings functions/settings.py reads (a doc may name them)."""
    return set(re.findall(r'\("([A-Za-z_]+)", ', (ROOT / "functions" / "settings.py").read_text()))


def parameter_defaults() -> dict[str, str]:
    """The azd values bicep/main.parameters.json reads, each with its ``${NAME=default}`` default ("" if none)."""
    if not PARAMETERS.exists():
        return {}
    return {
        name: default for name, default in re.findall(r"\$\{([A-Z][A-Z0-9_]*)(?:=([^}]*))?\}", PARAMETERS.read_text())
    }


def test_deploy_doc_names_only_existing_outputs():
    """Every azd value docs/deploy.md reads is an output, a parameter knob, an azd value, or set in the doc."""
    read, assigned = doc_variables(DEPLOY_DOC.read_text())
    assert {"EVENTHUBS_BOOTSTRAP_SERVER", "APIM_GATEWAY_URL", "AML_WORKSPACE"} <= read
    allowed = known_values() | assigned | DOC_TOOL_VARIABLES | app_settings() | set(parameter_defaults())
    assert sorted(read - allowed) == []


def test_deploy_doc_uses_only_commands_that_exist():
    """The devhost subcommands, make targets, files and az/azd commands in docs/deploy.md exist."""
    text = DEPLOY_DOC.read_text()
    code = markdown_code(text)
    assert sorted(set(re.findall(r"-m devhost ([a-z-]+)", code)) - devhost_commands()) == []
    targets = set(re.findall(r"^([a-z-]+):", (ROOT / "Makefile").read_text(), re.MULTILINE))
    assert sorted(set(re.findall(r"\bmake ([a-z-]+)", code)) - targets) == []
    paths = set(re.findall(r"(?<![\w/])((?:bicep|training_job|functions|devhost|\.azure)/[\w./-]*\w\.\w+)", text))
    runtime = {p for p in paths if re.match(r"\.azure/[^/]+/", p)}  # what azd writes per environment
    assert paths - runtime and sorted(p for p in paths - runtime if not (ROOT / p).exists()) == []
    az_groups = set(re.findall(r"(?:^|[\s($])az ([a-z][a-z0-9-]*)", code, re.MULTILINE))
    standard = {"account", "login", "version", "extension", "provider", "vm", "ml", "aks", "k8s-extension"}
    standard |= {"eventhubs", "storage", "role", "rest", "apim", "monitor", "functionapp", "group", "bicep"}
    assert az_groups and sorted(az_groups - standard) == []
    azd_verbs = set(re.findall(r"(?:^|[\s($])azd ([a-z]+)", code, re.MULTILINE))
    known = {"up", "down", "provision", "deploy", "env", "auth", "hooks", "show", "version"}
    assert azd_verbs and sorted(azd_verbs - known) == []


@pytest.mark.parametrize(
    ("marker", "sources"),
    [("-m devhost ", sorted((ROOT / "devhost").rglob("*.py"))), ("bicep/hooks/airbyte.py", [HOOKS / "airbyte.py"])],
    ids=["devhost", "airbyte.py"],
)
def test_deploy_doc_uses_only_options_that_exist(marker, sources):
    """Every --option docs/deploy.md passes to devhost or airbyte.py is one they define."""
    code = markdown_code(DEPLOY_DOC.read_text()).replace("\\\n", " ")
    lines = [line.split(marker, 1)[1] for line in code.splitlines() if marker in line]
    options = {option for line in lines for option in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", line)}
    defined = set(re.findall(r"\"(--[a-z][a-z-]*)\"", "".join(path.read_text() for path in sources)))
    assert options and sorted(options - defined) == []


def test_deploy_doc_metric_names_are_the_ones_the_app_emits():
    """Custom metric names quoted in docs/deploy.md are defined in functions/telemetry.py."""
    quoted = set(re.findall(r"\"(stockcast\.[a-z_.]+)\"", DEPLOY_DOC.read_text()))
    assert (
        quoted
        and sorted(
            quoted - set(re.findall(r"\"(stockcast\.[a-z_.]+)\"", (ROOT / "functions" / "telemetry.py").read_text()))
        )
        == []
    )


@pytest.mark.parametrize(
    "needle",
    [
        "azd up",
        "azd down --purge",
        "bicep/hooks/airbyte.py",
        "-m devhost publish",
        "az ml job list",
        "--auth-mode login",
    ],
)
def test_deploy_doc_covers_every_step(needle):
    """docs/deploy.md walks through provisioning, Airbyte, verification and teardown."""
    assert needle in DEPLOY_DOC.read_text()


# --- bicep/hooks/airbyte.py: request bodies -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('AZURE_ENV_NAME="dev"\n', {"AZURE_ENV_NAME": "dev"}),
        ('A="x=y"\nB=plain\n# C="no"\n\n', {"A": "x=y", "B": "plain"}),
        ('export D="with \\"quotes\\""\n', {"D": 'with "quotes"'}),
        ("E='single'\nnot a line\n", {"E": "single"}),
    ],
)
def test_parse_env_values(text, expected):
    """Lines of ``azd env get-values`` (KEY="value") parse into a dict."""
    assert airbyte.parse_env_values(text) == expected


@pytest.mark.parametrize(
    ("overrides", "field", "expected"),
    [
        ({}, "bootstrap_server", "evhns-test.servicebus.windows.net:9093"),
        ({"EVENTHUBS_BOOTSTRAP_SERVER": ""}, "bootstrap_server", "evhns-test.servicebus.windows.net:9093"),
        ({"EVENTHUB_NAME": ""}, "eventhub", "stock_bars"),
        ({}, "send_rule", "airbyte-send"),
        ({"AZURE_SUBSCRIPTION_ID": ""}, "subscription_id", None),
    ],
)
def test_event_hubs_target_from_azd_values(overrides, field, expected):
    """The target comes from the azd values, with the bootstrap server and hub name derivable."""
    assert getattr(airbyte.EventHubsTarget.from_env({**ENV_VALUES, **overrides}), field) == expected


def test_event_hubs_target_names_every_missing_value():
    """Missing azd values are all named in one error."""
    with pytest.raises(airbyte.SetupError, match="AZURE_RESOURCE_GROUP, EVENTHUB_SEND_RULE_NAME"):
        airbyte.EventHubsTarget.from_env({"EVENTHUBS_NAMESPACE": "ns"})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("AAPL,MSFT", ["AAPL", "MSFT"]),
        (" aapl , msft,AAPL,, brk-b ", ["AAPL", "MSFT", "BRK-B"]),
        ("^GSPC,EURUSD=X", ["^GSPC", "EURUSD=X"]),
    ],
)
def test_parse_tickers(raw, expected):
    """Tickers are upper-cased, de-duplicated and kept in order."""
    assert airbyte.parse_tickers(raw) == expected


@pytest.mark.parametrize("raw", ["", " , ", "AAPL,MS FT", "TOOLONGTICKERNAME17"])
def test_parse_tickers_rejects_bad_input(raw):
    """An empty list or a malformed ticker is refused."""
    with pytest.raises(ValueError):
        airbyte.parse_tickers(raw)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (("name",), "stockcast-yahoo-finance"),
        (("workspaceId",), "ws-1"),
        (("definitionId",), "09a517d3-803f-448d-97bf-0b1ee64b90ef"),
        (("configuration", "sourceType"), "yahoo-finance-price"),
        (("configuration", "tickers"), "AAPL,MSFT,NVDA"),
        (("configuration", "interval"), "1m"),
        (("configuration", "range"), "1d"),
    ],
)
def test_source_body(path, expected):
    """The Yahoo Finance source syncs one-minute bars of the current day for the tickers."""
    value: Any = airbyte.source_body("ws-1", ["AAPL", "MSFT", "NVDA"])
    for key in path:
        value = value[key]
    assert value == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (("definitionId",), "9f760101-60ae-462f-9ee6-b7a9dafd454d"),
        (("configuration", "bootstrap_servers"), "evhns-test.servicebus.windows.net:9093"),
        (("configuration", "topic_pattern"), "stock_bars"),
        (("configuration", "test_topic"), "stock_bars"),
        (("configuration", "protocol", "security_protocol"), "SASL_SSL"),
        (("configuration", "protocol", "sasl_mechanism"), "PLAIN"),
        (
            ("configuration", "protocol", "sasl_jaas_config"),
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="$ConnectionString" password="{FAKE_SECRET}";',
        ),
        (("configuration", "request_timeout_ms"), 60000),
        (("configuration", "max_request_size"), 1000000),
    ],
)
def test_destination_body(path, expected):
    """The Kafka destination signs in to the Event Hubs Kafka endpoint with the Send-only string."""
    value: Any = airbyte.destination_body("ws-1", TARGET, FAKE_SECRET)
    for key in path:
        value = value[key]
    assert value == expected


@pytest.mark.parametrize(
    ("every", "market_hours", "expected"),
    [(5, True, "0 */5 9-16 ? * MON-FRI"), (2, False, "0 */2 * * * ?"), (15, True, "0 */15 9-16 ? * MON-FRI")],
)
def test_cron_expression(every, market_hours, expected):
    """Syncs every few minutes, by default on New York weekdays from 09:00 to 16:55."""
    assert airbyte.cron_expression(every, market_hours) == expected


@pytest.mark.parametrize("every", [0, 60, -5])
def test_cron_expression_rejects_bad_intervals(every):
    """An interval outside 1-59 minutes is refused."""
    with pytest.raises(ValueError):
        airbyte.cron_expression(every)


def test_connection_body_for_create_and_patch():
    """The connection appends the price stream on a New York cron; only the create body names the ends."""
    create = airbyte.connection_body("src-1", "dst-1", "0 */5 9-16 ? * MON-FRI")
    patch = airbyte.connection_body(None, None, "0 */5 9-16 ? * MON-FRI")
    assert (create["sourceId"], create["destinationId"]) == ("src-1", "dst-1")
    assert {k: v for k, v in create.items() if k not in {"sourceId", "destinationId"}} == patch
    assert patch["schedule"] == {
        "scheduleType": "cron",
        "cronExpression": "0 */5 9-16 ? * MON-FRI",
        "cronTimeZone": "America/New_York",
    }
    assert patch["configurations"] == {"streams": [{"name": "price", "syncMode": "full_refresh_append"}]}
    assert patch["status"] == "active"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"password={FAKE_SECRET}", "password=***REDACTED***"),
        ({"a": [FAKE_SECRET, 1]}, {"a": ["***REDACTED***", 1]}),
        (
            "Endpoint=sb://x/;SharedAccessKeyName=r;SharedAccessKey=abc=",
            "Endpoint=sb://x/;SharedAccessKeyName=r;SharedAccessKey=***REDACTED***",
        ),
        ({"n": None, "b": True}, {"n": None, "b": True}),
    ],
)
def test_redact(value, expected):
    """Redaction replaces the secret, and any SharedAccessKey value, everywhere in a structure."""
    assert airbyte.redact(value, [FAKE_SECRET]) == expected


def test_connection_string_command_never_carries_the_secret():
    """The az command names the rule and asks for primaryConnectionString; the secret is only its output."""
    command = airbyte.connection_string_command(TARGET)
    assert command[:6] == ["az", "eventhubs", "eventhub", "authorization-rule", "keys", "list"]
    assert command[-2:] == ["--subscription", "00000000-0000-0000-0000-000000000001"]
    assert "primaryConnectionString" in command


@pytest.mark.parametrize(
    ("stdout", "returncode"), [("not a connection string\n", 0), ('Endpoint=sb://x/;"bad"\n', 0), ("", 1)]
)
def test_fetch_connection_string_refuses_anything_else(monkeypatch, stdout, returncode):
    """A failed or odd az answer is an error that does not repeat what az printed."""

    def fake_run(*_args: Any, **_kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess([], returncode, stdout, "")

    monkeypatch.setattr(airbyte.subprocess, "run", fake_run)
    with pytest.raises(airbyte.SetupError) as caught:
        airbyte.fetch_connection_string(TARGET)
    assert stdout.strip() == "" or stdout.strip() not in str(caught.value)


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    """The azd values as a .env file (what --env-file reads)."""
    path = tmp_path / ".env"
    path.write_text("".join(f'{key}="{value}"\n' for key, value in ENV_VALUES.items()))
    return path


def test_dry_run_prints_the_bodies_with_the_secret_redacted(monkeypatch, capsys, env_file):
    """--dry-run shows the exact bodies, with the connection string replaced by a marker."""
    monkeypatch.setattr(airbyte, "fetch_connection_string", lambda target: FAKE_SECRET)
    assert airbyte.main(["--dry-run", "--env-file", str(env_file), "--tickers", "aapl,msft"]) == 0
    out, err = capsys.readouterr()
    assert "FAKEkey" not in out + err
    bodies = json.loads(out)
    assert list(bodies) == ["POST /sources", "POST /destinations", "POST /connections"]
    assert bodies["POST /sources"]["configuration"]["tickers"] == "AAPL,MSFT"
    destination = bodies["POST /destinations"]["configuration"]
    assert destination["bootstrap_servers"] == "evhns-test.servicebus.windows.net:9093"
    assert destination["protocol"]["sasl_jaas_config"] == (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        'username="$ConnectionString" password="***REDACTED***";'
    )


# --- bicep/hooks/airbyte.py: the API calls ------------------------------------------------------------------------


class FakeAirbyte:
    """An in-memory Airbyte public API: workspaces, sources, destinations and connections by id."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, dict[str, Any]]] = {"sources": {}, "destinations": {}, "connections": {}}
        self.requests: list[tuple[str, str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.requests.append((request.method, request.url.path, body))
        assert request.headers["Authorization"] == "Bearer token-1"
        parts = request.url.path.removeprefix("/api/public/v1/").split("/")
        if parts == ["workspaces"]:
            return httpx.Response(200, json={"data": [{"workspaceId": "ws-1", "name": "Default"}]})
        kind, id_key = parts[0], airbyte._ID_KEYS[parts[0]]
        if request.method == "GET":
            return httpx.Response(200, json={"data": list(self.items[kind].values())})
        if request.method == "POST":
            new_id = f"{kind}-{len(self.items[kind]) + 1}"
            self.items[kind][new_id] = {**body, id_key: new_id}
            return httpx.Response(200, json=self.items[kind][new_id])
        self.items[kind][parts[1]].update(body)
        return httpx.Response(200, json=self.items[kind][parts[1]])


def test_apply_creates_then_updates_in_place():
    """A first run creates source, destination and connection; a second run patches the same three."""
    fake = FakeAirbyte()
    client = airbyte.AirbyteClient(
        "http://airbyte/api/public/v1", "token-1", [FAKE_SECRET], transport=httpx.MockTransport(fake)
    )
    first = airbyte.apply(client, "ws-1", ["AAPL"], TARGET, FAKE_SECRET, "0 */5 9-16 ? * MON-FRI")
    second = airbyte.apply(client, "ws-1", ["AAPL", "MSFT"], TARGET, FAKE_SECRET, "0 */5 9-16 ? * MON-FRI")
    assert first == {
        "source": ("sources-1", "created"),
        "destination": ("destinations-1", "created"),
        "connection": ("connections-1", "created"),
    }
    assert second == {kind: (item_id, "updated") for kind, (item_id, _) in first.items()}
    writes = [(method, path) for method, path, _ in fake.requests if method != "GET"]
    assert writes == [
        ("POST", "/api/public/v1/sources"),
        ("POST", "/api/public/v1/destinations"),
        ("POST", "/api/public/v1/connections"),
        ("PATCH", "/api/public/v1/sources/sources-1"),
        ("PATCH", "/api/public/v1/destinations/destinations-1"),
        ("PATCH", "/api/public/v1/connections/connections-1"),
    ]
    assert fake.items["sources"]["sources-1"]["configuration"]["tickers"] == "AAPL,MSFT"
    connection = fake.items["connections"]["connections-1"]
    assert (connection["sourceId"], connection["destinationId"]) == ("sources-1", "destinations-1")
    assert fake.items["destinations"]["destinations-1"]["configuration"]["protocol"]["sasl_jaas_config"].endswith(
        f'password="{FAKE_SECRET}";'
    )
    client.close()


def test_api_errors_never_repeat_the_secret():
    """An error answer that echoes the configuration is reported with the secret redacted."""

    def echo(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"data": []})
        return httpx.Response(422, text=f"invalid configuration: {request.content.decode()}")

    client = airbyte.AirbyteClient("http://airbyte/v1", "token-1", [FAKE_SECRET], transport=httpx.MockTransport(echo))
    with pytest.raises(airbyte.SetupError) as caught:
        airbyte.apply(client, "ws-1", ["AAPL"], TARGET, FAKE_SECRET, "0 */5 * * * ?")
    client.close()
    assert "answered 422" in str(caught.value)
    assert "FAKEkey" not in str(caught.value)


@pytest.mark.parametrize(
    ("environ", "prompted", "expected"),
    [
        ({"AIRBYTE_TOKEN": "direct"}, [], "direct"),
        ({"AIRBYTE_CLIENT_ID": "id-1", "AIRBYTE_CLIENT_SECRET": "s3"}, [], "exchanged"),
        ({"AIRBYTE_CLIENT_ID": "id-1"}, ["Airbyte client secret: "], "exchanged"),
    ],
)
def test_access_token_comes_from_the_environment_or_a_prompt(environ, prompted, expected):
    """The token is AIRBYTE_TOKEN, or exchanged for client credentials from the environment or a prompt."""
    asked: list[str] = []

    def prompt(question: str) -> str:
        asked.append(question)
        return "s3"

    def token(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/applications/token"
        assert json.loads(request.content) == {
            "client_id": "id-1",
            "client_secret": "s3",
            "grant-type": "client_credentials",
        }
        return httpx.Response(200, json={"access_token": "exchanged", "token_type": "Bearer", "expires_in": 180})

    assert airbyte.access_token("http://airbyte/v1", environ, prompt, httpx.MockTransport(token)) == expected
    assert asked == prompted
