#!/usr/bin/env pwsh
# azd postprovision hook (Windows): the same steps as postprovision.sh, idempotently:
#   1. the AzureML extension on AKS: installed if missing with the settings `az k8s-extension create`
#      computes (as bicep/modules/ml.bicep declares them); if present it must be Succeeded, and any of
#      those settings it lacks are added;
#   2. the Kubernetes instance type of the deployments (bicep/hooks/instancetype.yaml), applied with
#      `az aks command invoke`;
#   3. AKS attached as Kubernetes compute, if missing (after the instance type: see postprovision.sh);
#   4. the online endpoint, if missing;
#   5. the Airbyte destination settings and the command that fetches the Send-only connection string.
# A stopped cluster skips steps 1-4 with a note. The connection string itself is never fetched,
# printed or logged here. Nothing is registered as an environment: the job and the deployments define
# theirs inline and Azure ML caches the build.
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
    $aks = @(& az aks show @Scope --name $env:AKS_CLUSTER_NAME --query '[id, location, powerState.code]' --output tsv --only-show-errors)
    if ($LASTEXITCODE -ne 0 -or $aks.Count -lt 2) { Fail "cannot read AKS $($env:AKS_CLUSTER_NAME)" }
    $aksId = $aks[0]
    $aksLocation = $aks[1].ToLowerInvariant()
    $aksPower = if ($aks.Count -ge 3) { $aks[2] } else { '' }
    if ($aksPower -eq 'Stopped') {
        Log ("AKS $($env:AKS_CLUSTER_NAME) is stopped: the extension, instance type, Kubernetes compute and endpoint " +
            "were left as they are; after 'az aks start --resource-group $($env:AZURE_RESOURCE_GROUP) --name " +
            "$($env:AKS_CLUSTER_NAME)', run 'azd hooks run postprovision'")
    }
    else {
        # 1. The AzureML extension on AKS (inference only), looked up by type so it is never duplicated.
        # What `az k8s-extension create` would send for this cluster, as bicep/modules/ml.bicep declares it.
        $settings = @(
            'enableTraining=False', 'enableInference=True', 'inferenceRouterServiceType=LoadBalancer',
            'allowInsecureConnections=True', 'inferenceRouterHA=False', 'clusterPurpose=DevTest',
            'installNvidiaDevicePlugin=False', 'installDcgmExporter=False', 'installVolcano=False',
            "cluster_name=$aksId", "clusterId=$aksId", "prometheus.prometheusSpec.externalLabels.cluster_name=$aksId",
            "cluster_name_friendly=$($env:AKS_CLUSTER_NAME)", "location=$aksLocation", "jobSchedulerLocation=$aksLocation",
            "domain=$aksLocation.cloudapp.azure.com", 'servicebus.enabled=false', 'relayserver.enabled=false',
            'nginxIngress.enabled=true'
        )
        $extension = @('--cluster-type', 'managedClusters', '--cluster-name', $env:AKS_CLUSTER_NAME)
        $rows = @(& az k8s-extension list @Scope @extension --query '[].[name, extensionType, provisioningState]' `
                --output tsv --only-show-errors)
        if ($LASTEXITCODE -ne 0) { Fail "cannot list the extensions of AKS $($env:AKS_CLUSTER_NAME)" }
        $found = $null
        foreach ($row in $rows) {
            $cells = $row -split "`t"
            if ($cells.Count -ge 3 -and $cells[1] -ieq 'microsoft.azureml.kubernetes') { $found = $cells }
        }
        if (-not $found) {
            Log "AzureML extension on AKS $($env:AKS_CLUSTER_NAME): installing (about 10 minutes)"
            Invoke-Az k8s-extension create @Scope @extension --name azureml --extension-type Microsoft.AzureML.Kubernetes `
                --scope cluster --release-namespace azureml --config @settings `
                --auto-upgrade-minor-version true --only-show-errors --output none
        }
        elseif ($found[2] -ne 'Succeeded') {
            Fail ("AzureML extension $($found[0]) on AKS $($env:AKS_CLUSTER_NAME) is $($found[2]), not Succeeded: see " +
                "'az k8s-extension show --resource-group $($env:AZURE_RESOURCE_GROUP) --cluster-type managedClusters " +
                "--cluster-name $($env:AKS_CLUSTER_NAME) --name $($found[0])', delete it with 'az k8s-extension delete' " +
                "(same options) and run 'azd provision' again")
        }
        else {
            $present = @(& az k8s-extension show @Scope @extension --name $found[0] `
                    --query 'keys(configurationSettings || `{}`)' --output tsv --only-show-errors)
            if ($LASTEXITCODE -ne 0) { Fail "cannot read the AzureML extension $($found[0])" }
            $missing = @($settings | Where-Object { $present -notcontains ($_ -split '=', 2)[0] })
            if ($missing.Count -gt 0) {
                Log "AzureML extension $($found[0]) on AKS $($env:AKS_CLUSTER_NAME): adding the settings it lacks: $(($missing | ForEach-Object { ($_ -split '=', 2)[0] }) -join ' ')"
                Invoke-Az k8s-extension update @Scope @extension --name $found[0] --config @missing --yes --only-show-errors --output none
            }
            else {
                Log "AzureML extension $($found[0]) on AKS $($env:AKS_CLUSTER_NAME): present, Succeeded, every setting in place"
            }
        }

        # 2. The instance type of the deployments, applied in the cluster by command invoke (kubectl's exit code first).
        $hooks = Join-Path $Root 'bicep/hooks'
        Push-Location $hooks
        try {
            $applied = @(& az aks command invoke @Scope --name $env:AKS_CLUSTER_NAME --command 'kubectl apply -f instancetype.yaml' `
                    --file instancetype.yaml --query '[to_string(exitCode), logs]' --output tsv --only-show-errors)
        }
        finally { Pop-Location }
        if ($LASTEXITCODE -ne 0 -or $applied.Count -eq 0 -or $applied[0] -ne '0') {
            Fail "instance type on AKS $($env:AKS_CLUSTER_NAME): kubectl apply failed: $($applied | Select-Object -Skip 1)"
        }
        Log "instance type on AKS $($env:AKS_CLUSTER_NAME): $($applied | Select-Object -Skip 1)"

        # 3. AKS attached to the workspace as Kubernetes compute, once the instance type is there.
        if (Test-Az ml compute show @Ml --name $env:AML_KUBERNETES_COMPUTE) {
            Log "Kubernetes compute $($env:AML_KUBERNETES_COMPUTE): present"
        }
        else {
            Log "Kubernetes compute $($env:AML_KUBERNETES_COMPUTE): attaching AKS $($env:AKS_CLUSTER_NAME)"
            Invoke-Az ml compute attach @Ml --type Kubernetes --name $env:AML_KUBERNETES_COMPUTE `
                --resource-id $aksId --identity-type SystemAssigned --namespace azureml --only-show-errors --output none
        }

        # 4. The Kubernetes online endpoint; the train_trigger timer manages its deployments.
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
    }
}
finally {
    Remove-Item -Recurse -Force -Path $Tmp -ErrorAction SilentlyContinue
}

# 5. Airbyte: the destination-kafka settings for Event Hubs. Only the *command* for the secret is shown.
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
