// The one storage account: the bars container (raw/, latest/, deadletter/), the Function host
// (AzureWebJobsStorage: leases, keys, Event Hubs checkpoints), the Flex Consumption deployment
// package, and the Azure ML workspace's default datastores. Shared keys are off: every client signs
// in with Microsoft Entra ID (identity-based connections, identity datastores).

@description('Region of the storage account.')
param location string

@description('Tags of every resource.')
param tags object

@minLength(3)
@maxLength(24)
@description('Name of the storage account (3-24 lowercase letters and digits).')
param storageAccountName string

@description('Name of the blob container of the bars (BARS_CONTAINER).')
param barsContainerName string = 'bars'

@description('Name of the blob container holding the Flex Consumption deployment package.')
param deploymentContainerName string = 'deploymentpackage'

@allowed([
  'Enabled'
  'Disabled'
])
@description('Public network access; Disabled is reserved for the private networking option.')
param publicNetworkAccess string = 'Enabled'

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35:No VNet yet (enablePrivateNetworking): Flex Consumption, the Azure ML cluster and AKS reach the account over its public endpoint; every request needs an Entra ID token since shared keys are off.
  // checkov:skip=CKV_AZURE_59:Same reason: public network access stays on until private endpoints exist; anonymous blob access and shared keys are disabled.
  // checkov:skip=CKV_AZURE_43:The name is computed in main.bicep ('st' + uniqueString token: 15 lowercase letters and digits); checkov cannot evaluate a module parameter.
  name: storageAccountName
  location: location
  tags: tags
  kind: 'StorageV2'
  // geo-redundant: raw/ is the only copy of the bars (Yahoo serves minute bars for a few days only)
  sku: {
    name: 'Standard_GRS'
  }
  properties: {
    accessTier: 'Hot'
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: publicNetworkAccess
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource barsContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: barsContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

@description('Name of the storage account.')
output name string = storage.name

@description('Resource id of the storage account.')
output id string = storage.id

@description('Blob endpoint of the storage account, with a trailing slash.')
output blobEndpoint string = storage.properties.primaryEndpoints.blob

@description('Name of the bars container.')
output barsContainer string = barsContainer.name

@description('Name of the deployment package container.')
output deploymentContainer string = deploymentContainer.name
