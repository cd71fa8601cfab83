#!/usr/bin/env bash
# azd preprovision hook: check the tools the postprovision hook needs before azd spends ~20 minutes
# provisioning. azd signs in on its own; the hooks use the Azure CLI, which needs its own `az login`.
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

printf 'preprovision: az is signed in; extensions ml and k8s-extension are available\n'
