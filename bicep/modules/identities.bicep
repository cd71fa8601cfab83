// User-assigned identities, created first so their role assignments exist before the services that
// use them start (a system-assigned identity only exists once its resource does).

@description('Region of the identities.')
param location string

@description('Tags of every resource.')
param tags object

@description('Name of the Function App identity (storage, Event Hubs, Azure ML, App Insights).')
param functionIdentityName string

@description('Name of the training identity, assigned to the Azure ML CPU compute cluster.')
param trainingIdentityName string

resource functionIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: functionIdentityName
  location: location
  tags: tags
}

resource trainingIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: trainingIdentityName
  location: location
  tags: tags
}

@description('Resource id of the Function App identity.')
output functionIdentityId string = functionIdentity.id

@description('Client id of the Function App identity (AZURE_CLIENT_ID, the __clientId of every connection).')
output functionClientId string = functionIdentity.properties.clientId

@description('Object id of the Function App identity, for role assignments.')
output functionPrincipalId string = functionIdentity.properties.principalId

@description('Resource id of the training identity.')
output trainingIdentityId string = trainingIdentity.id

@description('Object id of the training identity, for role assignments.')
output trainingPrincipalId string = trainingIdentity.properties.principalId
