#!/usr/bin/env pwsh
# azd preprovision hook (Windows): the same checks as preprovision.sh. The hooks use the Azure CLI,
# which needs its own `az login`, the ml and k8s-extension CLI extensions and az's Bicep CLI; then
# AKS_EXISTS, AML_EXTENSION_EXISTS, AML_COMPUTE_EXISTS and APIM_NAMED_VALUE_EXISTS tell Bicep which of
# the resources Azure will not PUT again exist already (each is created only when missing).
$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest

function Fail([string]$Message) {
    [Console]::Error.WriteLine("preprovision: $Message")
    exit 1
}

if (-not (Get-Command az -ErrorAction SilentlyContinue)) {
    Fail 'the Azure CLI (az) is not installed: https://learn.microsoft.com/cli/azure/install-azure-cli'
}

az account show --only-show-errors --output none 2>$null
if ($LASTEXITCODE -ne 0) {
    Fail "the Azure CLI is not signed in: run 'az login' (add --tenant <tenant-id> if you use several tenants)"
}

if ($env:AZURE_SUBSCRIPTION_ID) {
    az account show --subscription $env:AZURE_SUBSCRIPTION_ID --only-show-errors --output none 2>$null
    if ($LASTEXITCODE -ne 0) {
        Fail "the Azure CLI cannot see subscription $($env:AZURE_SUBSCRIPTION_ID): run 'az login' with an account that can"
    }
}

foreach ($extension in @('ml', 'k8s-extension')) {
    az extension show --name $extension --only-show-errors --output none 2>$null
    if ($LASTEXITCODE -ne 0) {
        Write-Host "preprovision: installing the Azure CLI extension $extension"
        az extension add --name $extension --yes --only-show-errors
        if ($LASTEXITCODE -ne 0) { Fail "could not install the Azure CLI extension $extension" }
    }
}

# The postdeploy hook deploys bicep/hooks/apim-function-key.bicep, which needs the Bicep CLI of az.
az bicep version --only-show-errors 2>$null | Out-Null
if ($LASTEXITCODE -ne 0) {
    Write-Host 'preprovision: installing the Bicep CLI for az'
    az bicep install --only-show-errors
    if ($LASTEXITCODE -ne 0) { Fail 'could not install the Bicep CLI for az' }
}

# 'true' when Resource Manager has the resource, 'false' when it answers NotFound (also after
# `azd down`: ResourceGroupNotFound); any other failure stops the hook, since 'false' would reset it.
function Test-Exists([string]$Id, [string]$ApiVersion) {
    $errors = & az resource show --ids $Id --api-version $ApiVersion --only-show-errors --output none 2>&1
    if ($LASTEXITCODE -eq 0) { return 'true' }
    if ("$errors" -match 'NotFound') { return 'false' }
    Fail "cannot tell whether $Id exists: $errors"
}

$aksExists = 'false'
$extensionExists = 'false'
$computeExists = 'false'
$namedValueExists = 'false'
if ($env:AZURE_SUBSCRIPTION_ID -and $env:AZURE_RESOURCE_GROUP) {
    $group = "/subscriptions/$($env:AZURE_SUBSCRIPTION_ID)/resourceGroups/$($env:AZURE_RESOURCE_GROUP)/providers"
    if ($env:AKS_CLUSTER_NAME) {
        $cluster = "$group/Microsoft.ContainerService/managedClusters/$($env:AKS_CLUSTER_NAME)"
        $aksExists = Test-Exists $cluster '2024-09-01'
        if ($aksExists -eq 'true') {
            $extensionExists = Test-Exists "$cluster/providers/Microsoft.KubernetesConfiguration/extensions/azureml" '2023-05-01'
        }
    }
    if ($env:AML_WORKSPACE -and $env:AML_COMPUTE) {
        $computeExists = Test-Exists "$group/Microsoft.MachineLearningServices/workspaces/$($env:AML_WORKSPACE)/computes/$($env:AML_COMPUTE)" '2025-06-01'
    }
    if ($env:APIM_NAME) {
        $namedValueExists = Test-Exists "$group/Microsoft.ApiManagement/service/$($env:APIM_NAME)/namedValues/stockcast-function-key" '2024-05-01'
    }
}
azd env set AKS_EXISTS $aksExists
if ($LASTEXITCODE -ne 0) { Fail 'azd env set AKS_EXISTS failed' }
azd env set AML_EXTENSION_EXISTS $extensionExists
if ($LASTEXITCODE -ne 0) { Fail 'azd env set AML_EXTENSION_EXISTS failed' }
azd env set AML_COMPUTE_EXISTS $computeExists
if ($LASTEXITCODE -ne 0) { Fail 'azd env set AML_COMPUTE_EXISTS failed' }
azd env set APIM_NAMED_VALUE_EXISTS $namedValueExists
if ($LASTEXITCODE -ne 0) { Fail 'azd env set APIM_NAMED_VALUE_EXISTS failed' }

Write-Host 'preprovision: az is signed in; extensions ml and k8s-extension and the Bicep CLI are available'
Write-Host "preprovision: exists already (created only when missing): AKS $aksExists, its AzureML extension $extensionExists, compute cluster $computeExists, API Management function-key named value $namedValueExists"
