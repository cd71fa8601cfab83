#!/usr/bin/env bash
# azd preprovision hook: check the tools the other hooks need before azd spends ~20 minutes
# provisioning, then tell Bicep which resources exist already. azd signs in on its own; the hooks use
# the Azure CLI, which needs its own `az login`.
#
# The *_EXISTS values of bicep/main.parameters.json: Bicep creates what Azure will not PUT again
# only when it is missing, so a second `azd up` changes nothing and fails nowhere
# (tests/infra/test_reprovision.py lists them with the reasons): AKS_EXISTS (a stopped cluster refuses
# any PUT), AML_EXTENSION_EXISTS (a PUT would reset the extension's settings), AML_COMPUTE_EXISTS (a
# compute PUT overwrites the cluster) and APIM_NAMED_VALUE_EXISTS (the function key the postdeploy hook
# stored). Only "not found" means false; any other error stops here.
set -euo pipefail

fail() {
  printf 'preprovision: %s\n' "$1" >&2
  exit 1
}

command -v az >/dev/null 2>&1 || fail "the Azure CLI (az) is not installed: https://learn.microsoft.com/cli/azure/install-azure-cli"

if ! az account show --only-show-errors --output none 2>/dev/null; then
  fail "the Azure CLI is not signed in: run 'az login' (add --tenant <tenant-id> if you use several tenants)"
fi

if [[ -n "${AZURE_SUBSCRIPTION_ID:-}" ]]; then
  az account show --subscription "$AZURE_SUBSCRIPTION_ID" --only-show-errors --output none 2>/dev/null ||
    fail "the Azure CLI cannot see subscription $AZURE_SUBSCRIPTION_ID: run 'az login' with an account that can"
fi

# The CLI extensions the postprovision hook calls (az ml, az k8s-extension); installing is a no-op when present.
for extension in ml k8s-extension; do
  if ! az extension show --name "$extension" --only-show-errors --output none 2>/dev/null; then
    printf 'preprovision: installing the Azure CLI extension %s\n' "$extension"
    az extension add --name "$extension" --yes --only-show-errors
  fi
done

# The postdeploy hook deploys bicep/hooks/apim-function-key.bicep, which needs the Bicep CLI of az.
if ! az bicep version --only-show-errors >/dev/null 2>&1; then
  printf 'preprovision: installing the Bicep CLI for az\n'
  az bicep install --only-show-errors
fi

# "true" when Resource Manager has the resource, "false" when it answers NotFound (ResourceNotFound,
# or ResourceGroupNotFound / ParentResourceNotFound after `azd down`); any other failure (permissions,
# network) stops the hook, since guessing "false" would reset what exists.
exists() {
  local err
  err="$(mktemp)"
  if az resource show --ids "$1" --api-version "$2" --only-show-errors --output none 2>"$err"; then
    rm -f "$err"
    printf 'true'
  elif grep -qi 'NotFound' "$err"; then
    rm -f "$err"
    printf 'false'
  else
    printf 'preprovision: cannot tell whether %s exists:\n' "$1" >&2
    cat "$err" >&2
    rm -f "$err"
    return 1
  fi
}

aks_exists=false
extension_exists=false
compute_exists=false
named_value_exists=false
if [[ -n "${AZURE_SUBSCRIPTION_ID:-}" && -n "${AZURE_RESOURCE_GROUP:-}" ]]; then
  group="/subscriptions/$AZURE_SUBSCRIPTION_ID/resourceGroups/$AZURE_RESOURCE_GROUP/providers"
  if [[ -n "${AKS_CLUSTER_NAME:-}" ]]; then
    cluster="$group/Microsoft.ContainerService/managedClusters/$AKS_CLUSTER_NAME"
    aks_exists="$(exists "$cluster" 2024-09-01)" || fail "could not check AKS $AKS_CLUSTER_NAME"
    if [[ "$aks_exists" == true ]]; then
      extension_exists="$(exists "$cluster/providers/Microsoft.KubernetesConfiguration/extensions/azureml" 2023-05-01)" ||
        fail "could not check the AzureML extension of AKS $AKS_CLUSTER_NAME"
    fi
  fi
  if [[ -n "${AML_WORKSPACE:-}" && -n "${AML_COMPUTE:-}" ]]; then
    compute_exists="$(exists \
      "$group/Microsoft.MachineLearningServices/workspaces/$AML_WORKSPACE/computes/$AML_COMPUTE" 2025-06-01)" ||
      fail "could not check the compute cluster $AML_COMPUTE"
  fi
  if [[ -n "${APIM_NAME:-}" ]]; then
    named_value_exists="$(exists \
      "$group/Microsoft.ApiManagement/service/$APIM_NAME/namedValues/stockcast-function-key" 2024-05-01)" ||
      fail "could not check the function-key named value of API Management $APIM_NAME"
  fi
fi
command -v azd >/dev/null 2>&1 || fail "azd is not on PATH: run this hook through azd (azd provision, azd hooks run preprovision)"
azd env set AKS_EXISTS "$aks_exists"
azd env set AML_EXTENSION_EXISTS "$extension_exists"
azd env set AML_COMPUTE_EXISTS "$compute_exists"
azd env set APIM_NAMED_VALUE_EXISTS "$named_value_exists"

printf 'preprovision: az is signed in; extensions ml and k8s-extension and the Bicep CLI are available\n'
printf 'preprovision: exists already (created only when missing): AKS %s, its AzureML extension %s, compute cluster %s, API Management function-key named value %s\n' \
  "$aks_exists" "$extension_exists" "$compute_exists" "$named_value_exists"
