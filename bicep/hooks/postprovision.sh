#!/usr/bin/env bash
# azd postprovision hook: what Bicep cannot declare, done idempotently, then the Airbyte settings.
#
#   1. the AzureML extension on AKS, checked: installed if missing, with the settings
#      `az k8s-extension create` computes (the same as bicep/modules/ml.bicep declares); if present, it
#      must be healthy (Succeeded) and any of those settings it lacks are added;
#   2. the Kubernetes instance type of the model deployments (bicep/hooks/instancetype.yaml), applied
#      with `az aks command invoke` (no kubectl or kubeconfig needed here; unchanged means no change);
#   3. AKS attached as Kubernetes compute, if missing;
#   4. the online endpoint on that compute, if missing;
#   5. the Airbyte destination settings, with the command that fetches the Send-only connection
#      string. The connection string itself is never fetched, printed or logged here.
#
# Steps 3 and 4 are here, not in Bicep, and in this order: the instance type exists before the compute
# is attached and the endpoint created, so the first deployment the timer creates finds it; a
# Kubernetes compute cannot be updated (azureml-examples, infra/bootstrapping/sdk_helpers.sh,
# setup_compute, detaches before attaching again "as k8s compute doesn't support update"), so it is
# attached once and never PUT again; and the endpoint's traffic and tags belong to the rollout. A
# stopped cluster (`az aks stop`) takes none of steps 1-4: they are skipped with a note, and the next
# run after `az aks start` does them.
#
# The training job and the deployments define their environment inline (job.yml's base image +
# training_job/environment/conda.yaml); Azure ML builds and caches it by content, so nothing is
# registered here.
#
# azd passes the environment's values (bicep outputs + AZURE_ENV_NAME, AZURE_SUBSCRIPTION_ID, ...)
# to hooks; run by hand (`bash bicep/hooks/postprovision.sh`), it reads them from `azd env get-values`.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

HOOK=postprovision
# shellcheck source=bicep/hooks/lib.sh
source "$root/bicep/hooks/lib.sh"

if [[ -z "${AZURE_RESOURCE_GROUP:-}" || -z "${AML_WORKSPACE:-}" ]]; then
  load_azd_env
fi

require_values AZURE_SUBSCRIPTION_ID AZURE_RESOURCE_GROUP AML_WORKSPACE AML_ENDPOINT AKS_CLUSTER_NAME \
  AML_KUBERNETES_COMPUTE EVENTHUBS_NAMESPACE EVENTHUB_SEND_RULE_NAME

eventhub="${EVENTHUB_NAME:-stock_bars}"
bootstrap="${EVENTHUBS_BOOTSTRAP_SERVER:-${EVENTHUBS_NAMESPACE}.servicebus.windows.net:9093}"
scope=(--subscription "$AZURE_SUBSCRIPTION_ID" --resource-group "$AZURE_RESOURCE_GROUP")
ml=("${scope[@]}" --workspace-name "$AML_WORKSPACE")

command -v az >/dev/null 2>&1 || fail "the Azure CLI (az) is not installed"
az account show --subscription "$AZURE_SUBSCRIPTION_ID" --only-show-errors --output none ||
  fail "the Azure CLI is not signed in to subscription $AZURE_SUBSCRIPTION_ID: run 'az login', then 'azd hooks run postprovision'"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# The cluster's id, region and power state (steps 1-4 need it running).
aks_info="$(az aks show "${scope[@]}" --name "$AKS_CLUSTER_NAME" --query "[id, location, powerState.code]" \
  --output tsv --only-show-errors)" || fail "cannot read AKS $AKS_CLUSTER_NAME"
{
  read -r aks_id
  read -r aks_location
  read -r aks_power || true
} <<<"$aks_info"
[[ -n "${aks_id:-}" && -n "${aks_location:-}" ]] || fail "cannot read the id and region of AKS $AKS_CLUSTER_NAME"
aks_location="$(printf '%s' "$aks_location" | tr '[:upper:]' '[:lower:]')"

serving() {
  # 1. The AzureML extension on AKS (inference only: training runs on the AML compute cluster).
  # Looked up by type, not by name, so a differently named extension is never duplicated.
  # What `az k8s-extension create` would send for this cluster (its AzureMLKubernetes.Create), as
  # bicep/modules/ml.bicep declares it. allowInsecureConnections: the inference router serves HTTP until
  # a TLS certificate is configured (sslCname + sslCertPemFile/sslKeyPemFile); see docs/deploy.md, "Known
  # limits". One node: DevTest, no router HA.
  local extension_settings=(
    enableTraining=False enableInference=True inferenceRouterServiceType=LoadBalancer allowInsecureConnections=True
    inferenceRouterHA=False clusterPurpose=DevTest installNvidiaDevicePlugin=False installDcgmExporter=False
    installVolcano=False "cluster_name=$aks_id" "clusterId=$aks_id"
    "prometheus.prometheusSpec.externalLabels.cluster_name=$aks_id" "cluster_name_friendly=$AKS_CLUSTER_NAME"
    "location=$aks_location" "jobSchedulerLocation=$aks_location" "domain=$aks_location.cloudapp.azure.com"
    servicebus.enabled=false relayserver.enabled=false nginxIngress.enabled=true
  )
  local extension=(--cluster-type managedClusters --cluster-name "$AKS_CLUSTER_NAME")
  local extensions name type state extension_name="" extension_state="" present setting missing=()
  extensions="$(az k8s-extension list "${scope[@]}" "${extension[@]}" \
    --query "[].[name, extensionType, provisioningState]" --output tsv --only-show-errors)" ||
    fail "cannot list the extensions of AKS $AKS_CLUSTER_NAME"
  while IFS=$'\t' read -r name type state; do
    if [[ "$(printf '%s' "$type" | tr '[:upper:]' '[:lower:]')" == microsoft.azureml.kubernetes ]]; then
      extension_name="$name"
      extension_state="$state"
    fi
  done <<<"$extensions"
  if [[ -z "$extension_name" ]]; then
    log "AzureML extension on AKS $AKS_CLUSTER_NAME: installing (about 10 minutes)"
    az k8s-extension create "${scope[@]}" "${extension[@]}" --name azureml --extension-type Microsoft.AzureML.Kubernetes \
      --scope cluster --release-namespace azureml --config "${extension_settings[@]}" \
      --auto-upgrade-minor-version true --only-show-errors --output none
  elif [[ "$extension_state" != Succeeded ]]; then
    fail "AzureML extension $extension_name on AKS $AKS_CLUSTER_NAME is ${extension_state:-in an unknown state}, not Succeeded: see 'az k8s-extension show --resource-group $AZURE_RESOURCE_GROUP --cluster-type managedClusters --cluster-name $AKS_CLUSTER_NAME --name $extension_name', delete it with 'az k8s-extension delete' (same options) and run 'azd provision' again"
  else
    present="$(az k8s-extension show "${scope[@]}" "${extension[@]}" --name "$extension_name" \
      --query 'keys(configurationSettings || `{}`)' --output tsv --only-show-errors)" ||
      fail "cannot read the settings of the AzureML extension $extension_name"
    for setting in "${extension_settings[@]}"; do
      grep -qxF "${setting%%=*}" <<<"$present" || missing+=("$setting")
    done
    if ((${#missing[@]})); then
      log "AzureML extension $extension_name on AKS $AKS_CLUSTER_NAME: adding the settings it lacks: ${missing[*]%%=*}"
      az k8s-extension update "${scope[@]}" "${extension[@]}" --name "$extension_name" --config "${missing[@]}" \
        --yes --only-show-errors --output none
    else
      log "AzureML extension $extension_name on AKS $AKS_CLUSTER_NAME: present, Succeeded, every setting in place"
    fi
  fi

  # 2. The instance type of the deployments (the InstanceType CRD comes with the extension). command
  # invoke runs kubectl in a pod of the cluster with the caller's Azure RBAC; it reports kubectl's exit code.
  local instance_type applied
  instance_type="$(sed -n 's/^  name: *//p' "$root/bicep/hooks/instancetype.yaml" | head -n 1)"
  applied="$(cd "$root/bicep/hooks" && az aks command invoke "${scope[@]}" --name "$AKS_CLUSTER_NAME" \
    --command "kubectl apply -f instancetype.yaml" --file instancetype.yaml \
    --query "[to_string(exitCode), logs]" --output tsv --only-show-errors)" ||
    fail "instance type $instance_type on AKS $AKS_CLUSTER_NAME: az aks command invoke failed"
  if [[ "${applied%%$'\n'*}" != 0 ]]; then
    fail "instance type $instance_type on AKS $AKS_CLUSTER_NAME: kubectl apply failed: ${applied#*$'\n'}"
  fi
  log "instance type $instance_type on AKS $AKS_CLUSTER_NAME: ${applied#*$'\n'}"

  # 3. AKS attached to the workspace as Kubernetes compute, once the instance type is there.
  if az ml compute show "${ml[@]}" --name "$AML_KUBERNETES_COMPUTE" --only-show-errors --output none 2>/dev/null; then
    log "Kubernetes compute $AML_KUBERNETES_COMPUTE: present"
  else
    log "Kubernetes compute $AML_KUBERNETES_COMPUTE: attaching AKS $AKS_CLUSTER_NAME"
    az ml compute attach "${ml[@]}" --type Kubernetes --name "$AML_KUBERNETES_COMPUTE" \
      --resource-id "$aks_id" --identity-type SystemAssigned --namespace azureml --only-show-errors --output none
  fi

  # 4. The Kubernetes online endpoint (key auth: predict fetches the key and the scoring URI with its
  # identity); the train_trigger timer creates and swaps its deployments.
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
}

if [[ "${aks_power:-}" == Stopped ]]; then
  log "AKS $AKS_CLUSTER_NAME is stopped: the extension, instance type, Kubernetes compute and endpoint were left as they are; after 'az aks start --resource-group $AZURE_RESOURCE_GROUP --name $AKS_CLUSTER_NAME', run 'azd hooks run postprovision'"
else
  serving
fi

# 5. Airbyte: the destination-kafka settings for Event Hubs. Only the *command* for the secret is shown.
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
