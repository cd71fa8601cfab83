#!/usr/bin/env bash
# azd postprovision hook: what Bicep cannot declare, done idempotently, then the Airbyte settings.
#
#   1. the AzureML extension on AKS, the Kubernetes compute and the online endpoint, if missing
#      (bicep/ declares them; this is the safety net, so a re-run changes nothing that exists);
#   2. the training environment (training_job/environment/conda.yaml on the job's base image),
#      registered under a version derived from its content;
#   3. the Airbyte destination settings, with the command that fetches the Send-only connection
#      string. The connection string itself is never fetched, printed or logged here.
#
# azd passes the environment's values (bicep outputs + AZURE_ENV_NAME, AZURE_SUBSCRIPTION_ID, ...)
# to hooks; run by hand (`bash bicep/hooks/postprovision.sh`), it reads them from `azd env get-values`.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

log() { printf 'postprovision: %s\n' "$*"; }
fail() {
  printf 'postprovision: %s\n' "$*" >&2
  exit 1
}

# Fill unset variables from `azd env get-values` (KEY="value" lines); values azd already passed win.
load_azd_env() {
  local key value
  command -v azd >/dev/null 2>&1 || return 0
  while IFS='=' read -r key value; do
    [[ "$key" =~ ^[A-Z][A-Z0-9_]*$ ]] || continue
    value="${value#\"}"
    value="${value%\"}"
    if [[ -z "${!key:-}" ]]; then
      export "$key=$value"
    fi
  done < <(azd env get-values 2>/dev/null || true)
}

if [[ -z "${AZURE_RESOURCE_GROUP:-}" || -z "${AML_WORKSPACE:-}" ]]; then
  load_azd_env
fi

missing=()
for name in AZURE_SUBSCRIPTION_ID AZURE_RESOURCE_GROUP AML_WORKSPACE AML_ENDPOINT AKS_CLUSTER_NAME \
  AML_KUBERNETES_COMPUTE EVENTHUBS_NAMESPACE EVENTHUB_SEND_RULE_NAME; do
  [[ -n "${!name:-}" ]] || missing+=("$name")
done
if ((${#missing[@]})); then
  fail "missing azd environment values: ${missing[*]} (run 'azd provision' first, or select the environment with 'azd env select')"
fi

eventhub="${EVENTHUB_NAME:-stock_bars}"
bootstrap="${EVENTHUBS_BOOTSTRAP_SERVER:-${EVENTHUBS_NAMESPACE}.servicebus.windows.net:9093}"
scope=(--subscription "$AZURE_SUBSCRIPTION_ID" --resource-group "$AZURE_RESOURCE_GROUP")
ml=("${scope[@]}" --workspace-name "$AML_WORKSPACE")

command -v az >/dev/null 2>&1 || fail "the Azure CLI (az) is not installed"
az account show --subscription "$AZURE_SUBSCRIPTION_ID" --only-show-errors --output none ||
  fail "the Azure CLI is not signed in to subscription $AZURE_SUBSCRIPTION_ID: run 'az login', then 'azd hooks run postprovision'"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# 1a. The AzureML extension on AKS (inference only: training runs on the AML compute cluster).
# Looked up by type, not by name, so a differently named extension from Bicep is never duplicated.
extension_types="$(az k8s-extension list "${scope[@]}" --cluster-type managedClusters \
  --cluster-name "$AKS_CLUSTER_NAME" --query "[].extensionType" --output tsv --only-show-errors)"
if grep -qix 'microsoft.azureml.kubernetes' <<<"$extension_types"; then
  log "AzureML extension on AKS $AKS_CLUSTER_NAME: present"
else
  log "AzureML extension on AKS $AKS_CLUSTER_NAME: installing (about 10 minutes)"
  # allowInsecureConnections: the inference router serves HTTP until a TLS certificate is configured
  # (sslCname + sslCertPemFile/sslKeyPemFile); see docs/deploy.md, "Known limits".
  # The same settings as bicep/modules/ml.bicep (one node: DevTest, no router HA).
  az k8s-extension create "${scope[@]}" --name azureml --extension-type Microsoft.AzureML.Kubernetes \
    --cluster-type managedClusters --cluster-name "$AKS_CLUSTER_NAME" --scope cluster --release-namespace azureml \
    --config enableTraining=False enableInference=True inferenceRouterServiceType=LoadBalancer \
    allowInsecureConnections=True inferenceRouterHA=False clusterPurpose=DevTest \
    --auto-upgrade-minor-version true --only-show-errors --output none
fi

# 1b. AKS attached to the workspace as Kubernetes compute.
if az ml compute show "${ml[@]}" --name "$AML_KUBERNETES_COMPUTE" --only-show-errors --output none 2>/dev/null; then
  log "Kubernetes compute $AML_KUBERNETES_COMPUTE: present"
else
  log "Kubernetes compute $AML_KUBERNETES_COMPUTE: attaching AKS $AKS_CLUSTER_NAME"
  aks_id="$(az aks show "${scope[@]}" --name "$AKS_CLUSTER_NAME" --query id --output tsv --only-show-errors)"
  az ml compute attach "${ml[@]}" --type Kubernetes --name "$AML_KUBERNETES_COMPUTE" \
    --resource-id "$aks_id" --identity-type SystemAssigned --namespace azureml --only-show-errors --output none
fi

# 1c. The Kubernetes online endpoint; the train_trigger timer creates and swaps its deployments.
if az ml online-endpoint show "${ml[@]}" --name "$AML_ENDPOINT" --only-show-errors --output none 2>/dev/null; then
  log "online endpoint $AML_ENDPOINT: present"
else
  log "online endpoint $AML_ENDPOINT: creating on $AML_KUBERNETES_COMPUTE"
  cat >"$tmp/endpoint.yml" <<YAML
\$schema: https://azuremlschemas.azureedge.net/latest/kubernetesOnlineEndpoint.schema.json
name: $AML_ENDPOINT
compute: azureml:$AML_KUBERNETES_COMPUTE
auth_mode: key
description: Stockcast champion model; the train_trigger timer rolls deployments out blue/green.
tags:
  app: stockcast
YAML
  az ml online-endpoint create "${ml[@]}" --file "$tmp/endpoint.yml" --only-show-errors --output none
fi

# 2. The training environment: the job's base image (training_job/job.yml) + conda.yaml. The version is a
# hash of both, so an unchanged environment is never registered twice and a changed one gets a new version.
conda_file="$root/training_job/environment/conda.yaml"
image="$(sed -n 's/^[[:space:]]*image:[[:space:]]*//p' "$root/training_job/job.yml" | head -n 1)"
[[ -n "$image" && -f "$conda_file" ]] || fail "cannot read the base image from training_job/job.yml or $conda_file"
if command -v sha256sum >/dev/null 2>&1; then hasher=(sha256sum); else hasher=(shasum -a 256); fi
env_version="$({
  printf '%s\n' "$image"
  cat "$conda_file"
} | "${hasher[@]}" | cut -c1-12)"
if az ml environment show "${ml[@]}" --name stockcast --version "$env_version" --only-show-errors --output none 2>/dev/null; then
  log "environment stockcast:$env_version: present"
else
  log "environment stockcast:$env_version: registering ($image + training_job/environment/conda.yaml)"
  az ml environment create "${ml[@]}" --name stockcast --version "$env_version" --image "$image" \
    --conda-file "$conda_file" --description "Stockcast training job and scoring script" \
    --only-show-errors --output none
fi

# 3. Airbyte: the destination-kafka settings for Event Hubs. Only the *command* for the secret is shown.
cat <<EOF

Airbyte destination (Kafka) for Event Hubs
  Bootstrap servers  $bootstrap
  Topic pattern      $eventhub
  Test topic         $eventhub
  Security protocol  SASL_SSL
  SASL mechanism     PLAIN
  SASL username      \$ConnectionString
  SASL JAAS config   org.apache.kafka.common.security.plain.PlainLoginModule required username="\$ConnectionString" password="<Send-only connection string>";

The Send-only connection string (rule $EVENTHUB_SEND_RULE_NAME on hub $eventhub) is not stored anywhere; fetch it when you need it:
  az eventhubs eventhub authorization-rule keys list --resource-group $AZURE_RESOURCE_GROUP --namespace-name $EVENTHUBS_NAMESPACE --eventhub-name $eventhub --name $EVENTHUB_SEND_RULE_NAME --query primaryConnectionString -o tsv --subscription $AZURE_SUBSCRIPTION_ID

Or let the script configure Airbyte (source, destination, connection) through its API:
  .venv/bin/python bicep/hooks/airbyte.py --api-url http://localhost:8000/api/public/v1 --tickers AAPL,MSFT,NVDA,AMZN,GOOG
EOF
