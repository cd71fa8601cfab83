// API Management (Consumption) in front of the predict functions and the live page: the API is
// imported from functions/predict/openapi.yaml (the page's two GETs are added as operations), every
// call needs a subscription key, the policy rate-limits, validates POST bodies and adds the function
// key from a secret named value. Telemetry goes to Application Insights through a logger that signs
// in with APIM's managed identity.
// The function key itself is not read here: at provision time the Flex Consumption app has no code
// yet and its host may have no keys (azure-functions-host #5722, #11379), so listKeys would fail the
// first `azd up`. The named value is created with a placeholder; the postdeploy hook fills it from
// bicep/hooks/apim-function-key.bicep once the code is deployed.

@description('Region of API Management.')
param location string

@description('Tags of every resource.')
param tags object

@description('Name of the API Management instance.')
param apimName string

@description('Publisher e-mail (service notices).')
param publisherEmail string

@description('Publisher name (developer portal).')
param publisherName string

@description('Name of the Function App behind the API.')
param functionAppName string

@description('Name of Application Insights (APIM logger target).')
param applicationInsightsName string

@description('URL path of the API on the gateway.')
param apiPath string = 'stockcast'

@description('Whether the function-key named value exists already (set by the preprovision hook): then it keeps the key the postdeploy hook stored.')
param functionKeyNamedValueExists bool = false

// Names the policy file refers to ({{stockcast-function-key}}, backend-id="stockcast-functions").
var functionKeyNamedValue = 'stockcast-function-key'
var backendName = 'stockcast-functions'
// Monitoring Metrics Publisher (built-in role id)
var monitoringMetricsPublisherRoleId = '3913510d-42f4-4e42-8a64-420c390055eb'

resource functionApp 'Microsoft.Web/sites@2024-04-01' existing = {
  name: functionAppName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource apim 'Microsoft.ApiManagement/service@2024-05-01' = {
  // checkov:skip=CKV_AZURE_107:The Consumption tier cannot join a virtual network.
  // checkov:skip=CKV_AZURE_174:The gateway is the public front door of the API; callers need a subscription key and are rate-limited.
  name: apimName
  location: location
  tags: tags
  sku: {
    name: 'Consumption'
    capacity: 0
  }
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    publisherEmail: publisherEmail
    publisherName: publisherName
  }
}

// Monitoring Metrics Publisher: the logger sends to App Insights with APIM's identity (local auth is off).
resource apimTelemetry 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, apim.id, monitoringMetricsPublisherRoleId)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisherRoleId)
    principalId: apim.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

// Secret named value the policy sends as x-functions-key. Created with a placeholder only when missing
// (the policy below cannot refer to a named value that does not exist); the postdeploy hook replaces
// the value with the host's default key, read by ARM (listKeys) after the code is deployed, and a
// re-provision leaves it alone. The key is never an output, a parameter or a value a hook sees.
resource functionKey 'Microsoft.ApiManagement/service/namedValues@2024-05-01' = if (!functionKeyNamedValueExists) {
  parent: apim
  name: functionKeyNamedValue
  properties: {
    displayName: functionKeyNamedValue
    secret: true
    value: 'set-by-the-postdeploy-hook'
  }
}

resource backend 'Microsoft.ApiManagement/service/backends@2024-05-01' = {
  parent: apim
  name: backendName
  properties: {
    description: 'Stockcast Function App (predict functions)'
    protocol: 'http'
    url: 'https://${functionApp.properties.defaultHostName}/api'
    resourceId: '${environment().resourceManager}${substring(functionApp.id, 1)}'
    tls: {
      validateCertificateChain: true
      validateCertificateName: true
    }
  }
}

resource api 'Microsoft.ApiManagement/service/apis@2024-05-01' = {
  parent: apim
  name: 'stockcast'
  properties: {
    displayName: 'Stockcast predictions'
    path: apiPath
    protocols: [
      'https'
    ]
    apiType: 'http'
    format: 'openapi'
    value: loadTextContent('../../functions/predict/openapi.yaml')
    serviceUrl: 'https://${functionApp.properties.defaultHostName}/api'
    subscriptionRequired: true
  }
}

// The live page (functions/page) beside the imported predict operations: the page and the JSON it
// polls. A browser sends the subscription key as the subscription-key query parameter; the page
// forwards its own query string to live/data, so one key in the address serves both.
resource livePage 'Microsoft.ApiManagement/service/apis/operations@2024-05-01' = {
  parent: api
  name: 'live-page'
  properties: {
    displayName: 'Live page'
    description: 'The live page: closes, forecasts with their band, versions, ingest health (HTML).'
    method: 'GET'
    urlTemplate: '/live'
    responses: [
      {
        statusCode: 200
        description: 'The page'
      }
    ]
  }
}

resource liveData 'Microsoft.ApiManagement/service/apis/operations@2024-05-01' = {
  parent: api
  name: 'live-data'
  properties: {
    displayName: 'Live page data'
    description: 'The JSON document the live page polls.'
    method: 'GET'
    urlTemplate: '/live/data'
    responses: [
      {
        statusCode: 200
        description: 'The page data'
      }
    ]
  }
}

resource apiPolicy 'Microsoft.ApiManagement/service/apis/policies@2024-05-01' = {
  parent: api
  name: 'policy'
  properties: {
    format: 'rawxml'
    value: loadTextContent('apim-api-policy.xml')
  }
  dependsOn: [
    functionKey
    backend
  ]
}

resource logger 'Microsoft.ApiManagement/service/loggers@2024-05-01' = {
  parent: apim
  name: 'appinsights'
  properties: {
    loggerType: 'applicationInsights'
    description: 'Application Insights, signed in with the APIM managed identity'
    resourceId: appInsights.id
    credentials: {
      // the connection string only names the resource; ingestion is authorised by the identity
      connectionString: appInsights.properties.ConnectionString
      identityClientId: 'SystemAssigned'
    }
  }
  dependsOn: [
    apimTelemetry
  ]
}

resource diagnostics 'Microsoft.ApiManagement/service/diagnostics@2024-05-01' = {
  parent: apim
  name: 'applicationinsights'
  properties: {
    loggerId: logger.id
    alwaysLog: 'allErrors'
    httpCorrelationProtocol: 'W3C'
    verbosity: 'information'
    logClientIp: false
    sampling: {
      samplingType: 'fixed'
      percentage: 100
    }
  }
}

@description('Name of the API Management instance.')
output name string = apim.name

@description('Gateway URL of API Management.')
output gatewayUrl string = apim.properties.gatewayUrl

@description('Base URL of the Stockcast API on the gateway.')
output apiUrl string = '${apim.properties.gatewayUrl}/${apiPath}'
