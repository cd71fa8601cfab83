// Deployed by the postdeploy hook (bicep/hooks/postdeploy.*) once the Function App has its code: ARM
// reads the host's default function key (listKeys on Microsoft.Web/sites/host) and stores it in the
// secret named value API Management's policy sends as x-functions-key ({{stockcast-function-key}}).
// The key stays inside Azure Resource Manager: this template has no output, the hook passes names
// only and never sees the value. bicep/modules/apim.bicep creates the named value with a placeholder
// when it is missing; rotating the host key needs `azd hooks run postdeploy` (or `azd deploy`).
targetScope = 'resourceGroup'

@minLength(1)
@description('Name of the API Management instance (APIM_NAME).')
param apimName string

@minLength(1)
@description('Name of the Function App whose default host key API Management sends (AZURE_FUNCTION_APP_NAME).')
param functionAppName string

@description('Name of the secret named value the API policy reads; the same as in bicep/modules/apim.bicep.')
param namedValueName string = 'stockcast-function-key'

resource apim 'Microsoft.ApiManagement/service@2024-05-01' existing = {
  name: apimName
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' existing = {
  name: functionAppName
}

resource functionKey 'Microsoft.ApiManagement/service/namedValues@2024-05-01' = {
  parent: apim
  name: namedValueName
  properties: {
    displayName: namedValueName
    secret: true
    value: listKeys(resourceId('Microsoft.Web/sites/host', functionApp.name, 'default'), '2023-12-01').functionKeys.default
  }
}
