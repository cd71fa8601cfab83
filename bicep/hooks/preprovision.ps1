#!/usr/bin/env pwsh
# azd preprovision hook (Windows): the same checks as preprovision.sh. The hooks use the Azure CLI,
# which needs its own `az login`, and the ml and k8s-extension CLI extensions.
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

Write-Host 'preprovision: az is signed in; extensions ml and k8s-extension are available'
