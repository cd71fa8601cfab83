#!/usr/bin/env bash
# azd postdeploy hook: once the Function App has its code (and so its host keys), store the host's
# default function key in API Management's secret named value, which the API policy sends as
# x-functions-key. It deploys bicep/hooks/apim-function-key.bicep, in which Resource Manager reads the
# key and writes the named value: the key never reaches this machine, is never printed, and the hook
# passes names only. The first run after a fresh deploy may find the host still starting, so it
# retries for a few minutes. Run it again after rotating the key: `azd hooks run postdeploy`.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

HOOK=postdeploy
# shellcheck source=bicep/hooks/lib.sh
source "$root/bicep/hooks/lib.sh"

if [[ -z "${AZURE_RESOURCE_GROUP:-}" || -z "${APIM_NAME:-}" ]]; then
  load_azd_env
fi

require_values AZURE_SUBSCRIPTION_ID AZURE_RESOURCE_GROUP APIM_NAME AZURE_FUNCTION_APP_NAME

command -v az >/dev/null 2>&1 || fail "the Azure CLI (az) is not installed"
az account show --subscription "$AZURE_SUBSCRIPTION_ID" --only-show-errors --output none ||
  fail "the Azure CLI is not signed in to subscription $AZURE_SUBSCRIPTION_ID: run 'az login', then 'azd hooks run postdeploy'"

attempts=6
delay="${STOCKCAST_HOOK_RETRY_SECONDS:-30}"
for ((attempt = 1; attempt <= attempts; attempt++)); do
  log "API Management $APIM_NAME: storing the default host key of $AZURE_FUNCTION_APP_NAME (attempt $attempt of $attempts)"
  if az deployment group create --subscription "$AZURE_SUBSCRIPTION_ID" --resource-group "$AZURE_RESOURCE_GROUP" \
    --name stockcast-apim-function-key --template-file "$root/bicep/hooks/apim-function-key.bicep" \
    --parameters apimName="$APIM_NAME" functionAppName="$AZURE_FUNCTION_APP_NAME" \
    --only-show-errors --output none; then
    log "API Management $APIM_NAME: named value stockcast-function-key holds the Function App's key"
    exit 0
  fi
  ((attempt == attempts)) || sleep "$delay"
done
fail "could not store the function key in API Management after $attempts attempts; once the Function App runs, retry with 'azd hooks run postdeploy'"
