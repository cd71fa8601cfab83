#!/usr/bin/env bash
# azd preprovision hook: check the tools the other hooks need before azd spends ~20 minutes
# provisioning, then tell Bicep which resources exist already. azd signs in on its own; the hooks use
# the Azure CLI, which needs its own `az login`.
#
# AML_ENDPOINT_EXISTS and APIM_NAMED_VALUE_EXISTS (bicep/main.parameters.json) say whether the online
# endpoint and API Management's function-key named value exist: Bicep creates each only when missing,
# so a re-provision never resets the endpoint's traffic and tags (the rollout's smoke_failed) or the
# function key the postdeploy hook stored. Only "not found" means false; any other error stops here.
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

endpoint_exists=false
named_value_exists=false
if [[ -n "${AZURE_SUBSCRIPTION_ID:-}" && -n "${AZURE_RESOURCE_GROUP:-}" ]]; then
  group="/subscriptions/$AZURE_SUBSCRIPTION_ID/resourceGroups/$AZURE_RESOURCE_GROUP/providers"
  if [[ -n "${AML_WORKSPACE:-}" && -n "${AML_ENDPOINT:-}" ]]; then
    endpoint_exists="$(exists \
      "$group/Microsoft.MachineLearningServices/workspaces/$AML_WORKSPACE/onlineEndpoints/$AML_ENDPOINT" 2025-06-01)" ||
      fail "could not check the online endpoint $AML_ENDPOINT"
  fi
  if [[ -n "${APIM_NAME:-}" ]]; then
    named_value_exists="$(exists \
      "$group/Microsoft.ApiManagement/service/$APIM_NAME/namedValues/stockcast-function-key" 2024-05-01)" ||
      fail "could not check the function-key named value of API Management $APIM_NAME"
  fi
fi
command -v azd >/dev/null 2>&1 || fail "azd is not on PATH: run this hook through azd (azd provision, azd hooks run preprovision)"
azd env set AML_ENDPOINT_EXISTS "$endpoint_exists"
azd env set APIM_NAMED_VALUE_EXISTS "$named_value_exists"

printf 'preprovision: az is signed in; extensions ml and k8s-extension and the Bicep CLI are available\n'
printf 'preprovision: online endpoint exists: %s; API Management function-key named value exists: %s\n' \
  "$endpoint_exists" "$named_value_exists"
