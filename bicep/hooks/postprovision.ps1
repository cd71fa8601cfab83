#!/usr/bin/env pwsh
# azd postprovision hook (Windows): the same steps as postprovision.sh, idempotently:
#   1. the AzureML extension on AKS, the Kubernetes compute and the online endpoint, if missing;
#   2. the training environment (job.yml's base image + conda.yaml) under a content-hash version;
#   3. the Airbyte destination settings and the command that fetches the Send-only connection string.
# The connection string itself is never fetched, printed or logged here.
$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest

$Root = (Resolve-Path (Join-Path $PSScriptRoot '..' '..')).Path

function Log([string]$Message) { Write-Host "postprovision: $Message" }
function Fail([string]$Message) {
    [Console]::Error.WriteLine("postprovision: $Message")
    exit 1
}
# Run az; stop with its exit code when it fails.
function Invoke-Az {
    & az @args
    if ($LASTEXITCODE -ne 0) { Fail "az $($args[0..2] -join ' ') failed (exit $LASTEXITCODE)" }
}
# Whether an `az ... show` finds the resource.
function Test-Az {
    & az @args --only-show-errors --output none 2>$null
    return ($LASTEXITCODE -eq 0)
}

# azd passes the environment's values to hooks; run by hand, read the unset ones from `azd env get-values`.
if (-not $env:AZURE_RESOURCE_GROUP -or -not $env:AML_WORKSPACE) {
    if (Get-Command azd -ErrorAction SilentlyContinue) {
        foreach ($line in (azd env get-values)) {
            if ($line -match '^([A-Z][A-Z0-9_]*)="?(.*?)"?$' -and -not [Environment]::GetEnvironmentVariable($Matches[1])) {
                [Environment]::SetEnvironmentVariable($Matches[1], $Matches[2])
            }
        }
    }
}

$required = @('AZURE_SUBSCRIPTION_ID', 'AZURE_RESOURCE_GROUP', 'AML_WORKSPACE', 'AML_ENDPOINT', 'AKS_CLUSTER_NAME',
    'AML_KUBERNETES_COMPUTE', 'EVENTHUBS_NAMESPACE', 'EVENTHUB_SEND_RULE_NAME')
$missing = @($required | Where-Object { -not [Environment]::GetEnvironmentVariable($_) })
if ($missing.Count -gt 0) {
    Fail "missing azd environment values: $($missing -join ' ') (run 'azd provision' first, or 'azd env select')"
}

$EventHub = if ($env:EVENTHUB_NAME) { $env:EVENTHUB_NAME } else { 'stock_bars' }
$Bootstrap = if ($env:EVENTHUBS_BOOTSTRAP_SERVER) { $env:EVENTHUBS_BOOTSTRAP_SERVER } else { "$($env:EVENTHUBS_NAMESPACE).servicebus.windows.net:9093" }
$Scope = @('--subscription', $env:AZURE_SUBSCRIPTION_ID, '--resource-group', $env:AZURE_RESOURCE_GROUP)
$Ml = $Scope + @('--workspace-name', $env:AML_WORKSPACE)

if (-not (Get-Command az -ErrorAction SilentlyContinue)) { Fail 'the Azure CLI (az) is not installed' }
if (-not (Test-Az account show --subscription $env:AZURE_SUBSCRIPTION_ID)) {
    Fail "the Azure CLI is not signed in to subscription $($env:AZURE_SUBSCRIPTION_ID): run 'az login', then 'azd hooks run postprovision'"
}

$Tmp = Join-Path ([IO.Path]::GetTempPath()) ("stockcast-" + [Guid]::NewGuid().ToString('N'))
New-Item -ItemType Directory -Path $Tmp | Out-Null
try {
    # 1a. The AzureML extension on AKS (inference only), looked up by type so it is never duplicated.
    $types = & az k8s-extension list @Scope --cluster-type managedClusters --cluster-name $env:AKS_CLUSTER_NAME `
        --query '[].extensionType' --output tsv --only-show-errors
    if ($LASTEXITCODE -ne 0) { Fail "cannot list the extensions of AKS $($env:AKS_CLUSTER_NAME)" }
    if (@($types | Where-Object { $_ -ieq 'microsoft.azureml.kubernetes' }).Count -gt 0) {
        Log "AzureML extension on AKS $($env:AKS_CLUSTER_NAME): present"
    }
    else {
        Log "AzureML extension on AKS $($env:AKS_CLUSTER_NAME): installing (about 10 minutes)"
        # The same settings as bicep/modules/ml.bicep (one node: DevTest, no router HA).
        Invoke-Az k8s-extension create @Scope --name azureml --extension-type Microsoft.AzureML.Kubernetes `
            --cluster-type managedClusters --cluster-name $env:AKS_CLUSTER_NAME --scope cluster --release-namespace azureml `
            --config enableTraining=False enableInference=True inferenceRouterServiceType=LoadBalancer `
            allowInsecureConnections=True inferenceRouterHA=False clusterPurpose=DevTest `
            --auto-upgrade-minor-version true --only-show-errors --output none
    }

    # 1b. AKS attached to the workspace as Kubernetes compute.
    if (Test-Az ml compute show @Ml --name $env:AML_KUBERNETES_COMPUTE) {
        Log "Kubernetes compute $($env:AML_KUBERNETES_COMPUTE): present"
    }
    else {
        Log "Kubernetes compute $($env:AML_KUBERNETES_COMPUTE): attaching AKS $($env:AKS_CLUSTER_NAME)"
        $aksId = & az aks show @Scope --name $env:AKS_CLUSTER_NAME --query id --output tsv --only-show-errors
        if ($LASTEXITCODE -ne 0) { Fail "cannot read AKS $($env:AKS_CLUSTER_NAME)" }
        Invoke-Az ml compute attach @Ml --type Kubernetes --name $env:AML_KUBERNETES_COMPUTE `
            --resource-id $aksId --identity-type SystemAssigned --namespace azureml --only-show-errors --output none
    }

    # 1c. The Kubernetes online endpoint; the train_trigger timer manages its deployments.
    if (Test-Az ml online-endpoint show @Ml --name $env:AML_ENDPOINT) {
        Log "online endpoint $($env:AML_ENDPOINT): present"
    }
    else {
        Log "online endpoint $($env:AML_ENDPOINT): creating on $($env:AML_KUBERNETES_COMPUTE)"
        $endpointFile = Join-Path $Tmp 'endpoint.yml'
        @(
            '$schema: https://azuremlschemas.azureedge.net/latest/kubernetesOnlineEndpoint.schema.json'
            "name: $($env:AML_ENDPOINT)"
            "compute: azureml:$($env:AML_KUBERNETES_COMPUTE)"
            'auth_mode: key'
            'description: Stockcast champion model; the train_trigger timer rolls deployments out blue/green.'
            'tags:'
            '  app: stockcast'
        ) | Set-Content -Path $endpointFile -Encoding utf8
        Invoke-Az ml online-endpoint create @Ml --file $endpointFile --only-show-errors --output none
    }

    # 2. The training environment, versioned by a hash of the base image and conda.yaml (as postprovision.sh).
    $condaFile = Join-Path $Root 'training_job/environment/conda.yaml'
    $imageLine = Select-String -Path (Join-Path $Root 'training_job/job.yml') -Pattern '^\s*image:\s*(\S+)' | Select-Object -First 1
    if (-not $imageLine -or -not (Test-Path $condaFile)) { Fail 'cannot read the base image from training_job/job.yml or conda.yaml' }
    $image = $imageLine.Matches[0].Groups[1].Value
    $bytes = [Text.Encoding]::UTF8.GetBytes("$image`n") + [IO.File]::ReadAllBytes($condaFile)
    $hash = [Security.Cryptography.SHA256]::Create().ComputeHash([byte[]]$bytes)
    $envVersion = (-join ($hash | ForEach-Object { $_.ToString('x2') })).Substring(0, 12)
    if (Test-Az ml environment show @Ml --name stockcast --version $envVersion) {
        Log "environment stockcast:${envVersion}: present"
    }
    else {
        Log "environment stockcast:${envVersion}: registering ($image + training_job/environment/conda.yaml)"
        Invoke-Az ml environment create @Ml --name stockcast --version $envVersion --image $image `
            --conda-file $condaFile --description 'Stockcast training job and scoring script' --only-show-errors --output none
    }
}
finally {
    Remove-Item -Recurse -Force -Path $Tmp -ErrorAction SilentlyContinue
}

# 3. Airbyte: the destination-kafka settings for Event Hubs. Only the *command* for the secret is shown.
$rule = $env:EVENTHUB_SEND_RULE_NAME
Write-Host @"

Airbyte destination (Kafka) for Event Hubs
  Bootstrap servers  $Bootstrap
  Topic pattern      $EventHub
  Test topic         $EventHub
  Security protocol  SASL_SSL
  SASL mechanism     PLAIN
  SASL username      `$ConnectionString
  SASL JAAS config   org.apache.kafka.common.security.plain.PlainLoginModule required username="`$ConnectionString" password="<Send-only connection string>";

The Send-only connection string (rule $rule on hub $EventHub) is not stored anywhere; fetch it when you need it:
  az eventhubs eventhub authorization-rule keys list --resource-group $($env:AZURE_RESOURCE_GROUP) --namespace-name $($env:EVENTHUBS_NAMESPACE) --eventhub-name $EventHub --name $rule --query primaryConnectionString -o tsv --subscription $($env:AZURE_SUBSCRIPTION_ID)

Or let the script configure Airbyte (source, destination, connection) through its API:
  .venv\Scripts\python bicep\hooks\airbyte.py --api-url http://localhost:8000/api/public/v1 --tickers AAPL,MSFT,NVDA,AMZN,GOOG
"@
