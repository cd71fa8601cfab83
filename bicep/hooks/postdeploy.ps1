#!/usr/bin/env pwsh
# azd postdeploy hook (Windows): the same as postdeploy.sh. Once the Function App has its code, deploy
# bicep/hooks/apim-function-key.bicep: Resource Manager reads the host's default function key itself
# and stores it in API Management's secret named value; the key never reaches this machine and is never
# printed. Retries while the freshly deployed host starts. Re-run after a key rotation:
# `azd hooks run postdeploy`.
$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest

$Root = (Resolve-Path (Join-Path $PSScriptRoot '..' '..')).Path

function Log([string]$Message) { Write-Host "postdeploy: $Message" }
function Fail([string]$Message) {
    [Console]::Error.WriteLine("postdeploy: $Message")
    exit 1
}

# azd passes the environment's values to hooks; run by hand, read the unset ones from `azd env get-values`.
if (-not $env:AZURE_RESOURCE_GROUP -or -not $env:APIM_NAME) {
    if (Get-Command azd -ErrorAction SilentlyContinue) {
        foreach ($line in (azd env get-values)) {
            if ($line -match '^([A-Z][A-Z0-9_]*)="?(.*?)"?$' -and -not [Environment]::GetEnvironmentVariable($Matches[1])) {
                [Environment]::SetEnvironmentVariable($Matches[1], $Matches[2])
            }
        }
    }
}

$required = @('AZURE_SUBSCRIPTION_ID', 'AZURE_RESOURCE_GROUP', 'APIM_NAME', 'AZURE_FUNCTION_APP_NAME')
$missing = @($required | Where-Object { -not [Environment]::GetEnvironmentVariable($_) })
if ($missing.Count -gt 0) {
    Fail "missing azd environment values: $($missing -join ' ') (run 'azd provision' first, or 'azd env select')"
}
if (-not (Get-Command az -ErrorAction SilentlyContinue)) { Fail 'the Azure CLI (az) is not installed' }
az account show --subscription $env:AZURE_SUBSCRIPTION_ID --only-show-errors --output none 2>$null
if ($LASTEXITCODE -ne 0) {
    Fail "the Azure CLI is not signed in to subscription $($env:AZURE_SUBSCRIPTION_ID): run 'az login', then 'azd hooks run postdeploy'"
}

$template = Join-Path $Root 'bicep/hooks/apim-function-key.bicep'
$attempts = 6
$delay = if ($env:STOCKCAST_HOOK_RETRY_SECONDS) { [int]$env:STOCKCAST_HOOK_RETRY_SECONDS } else { 30 }
for ($attempt = 1; $attempt -le $attempts; $attempt++) {
    Log "API Management $($env:APIM_NAME): storing the default host key of $($env:AZURE_FUNCTION_APP_NAME) (attempt $attempt of $attempts)"
    az deployment group create --subscription $env:AZURE_SUBSCRIPTION_ID --resource-group $env:AZURE_RESOURCE_GROUP `
        --name stockcast-apim-function-key --template-file $template `
        --parameters "apimName=$($env:APIM_NAME)" "functionAppName=$($env:AZURE_FUNCTION_APP_NAME)" `
        --only-show-errors --output none
    if ($LASTEXITCODE -eq 0) {
        Log "API Management $($env:APIM_NAME): named value stockcast-function-key holds the Function App's key"
        exit 0
    }
    if ($attempt -lt $attempts) { Start-Sleep -Seconds $delay }
}
Fail "could not store the function key in API Management after $attempts attempts; once the Function App runs, retry with 'azd hooks run postdeploy'"
