// Every role assignment of the identities this template creates, least privilege, one comment per
// role (API Management's own is in apim.bicep, next to the logger that needs it). Names are
// guid(scope, principal, role), so a re-deployment never duplicates one. The Azure ML workspace's
// system-assigned identity is granted its roles on the linked storage, vault and registry by
// Azure ML itself when the workspace is created; declaring them too would collide.

@description('Name of the shared storage account.')
param storageAccountName string

@description('Name of the Event Hubs namespace.')
param eventHubsNamespaceName string

@description('Name of the event hub the ingest function reads.')
param eventHubName string

@description('Name of the event hub the forecast stream publishes to.')
param forecastsEventHubName string

@description('Name of the Azure ML workspace.')
param workspaceName string

@description('Name of the workspace container registry.')
param containerRegistryName string

@description('Name of Application Insights.')
param applicationInsightsName string

@description('Object id of the Function App identity.')
param functionPrincipalId string

@description('Object id of the training identity (the CPU compute cluster\'s).')
param trainingPrincipalId string

@description('Object id of the AKS kubelet identity.')
param kubeletPrincipalId string

@description('Object id of the deploying user; empty: no assignment.')
param userPrincipalId string = ''

@allowed([
  'User'
  'ServicePrincipal'
])
@description('Principal type of userPrincipalId.')
param userPrincipalType string = 'User'

// Built-in role definition ids (the same in every tenant).
var roleIds = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
  eventHubsDataReceiver: 'a638d3c7-ab3a-418d-83e6-5f17a39d4fde'
  eventHubsDataSender: '2b629674-e913-4c01-ae53-ef4638d8f975'
  azureMLDataScientist: 'f6c7c914-8db3-469d-8ca1-694a8f32e121'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
  acrPull: '7f951dda-4ed3-4680-a7ca-43fe172d538d'
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource eventHubsNamespace 'Microsoft.EventHub/namespaces@2024-01-01' existing = {
  name: eventHubsNamespaceName
}

resource eventHub 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' existing = {
  parent: eventHubsNamespace
  name: eventHubName
}

resource forecastsHub 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' existing = {
  parent: eventHubsNamespace
  name: forecastsEventHubName
}

resource workspace 'Microsoft.MachineLearningServices/workspaces@2025-06-01' existing = {
  name: workspaceName
}

resource containerRegistry 'Microsoft.ContainerRegistry/registries@2023-07-01' existing = {
  name: containerRegistryName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

// Storage Blob Data Owner: the Functions host on Flex Consumption (AzureWebJobsStorage: blob leases
// of the timer and Event Hubs checkpoints, host keys; the deployment package), the BarsStorage
// bindings and SDK writes, and azure-ai-ml uploading the job's code to the workspace datastore.
resource functionStorage 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, functionPrincipalId, roleIds.storageBlobDataOwner)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageBlobDataOwner)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Azure Event Hubs Data Receiver: the ingest trigger reads the one hub, nothing else in the namespace.
resource functionEventHub 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(eventHub.id, functionPrincipalId, roleIds.eventHubsDataReceiver)
  scope: eventHub
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.eventHubsDataReceiver)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Azure Event Hubs Data Sender: the forecast stream's Kafka producer (OAUTHBEARER) publishes to the forecasts hub only.
// (It reads the bars with the Data Receiver role above, on its own consumer group.)
resource functionForecastsHub 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(forecastsHub.id, functionPrincipalId, roleIds.eventHubsDataSender)
  scope: forecastsHub
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.eventHubsDataSender)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// AzureML Data Scientist: the timer submits jobs, reads models and tags, creates/updates/deletes the
// endpoint's deployments and traffic; predict reads the endpoint key. It cannot change computes or
// the workspace itself.
resource functionWorkspace 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workspace.id, functionPrincipalId, roleIds.azureMLDataScientist)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.azureMLDataScientist)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Monitoring Metrics Publisher: the host and azure-monitor-opentelemetry send telemetry with an
// Entra token (App Insights has local auth off).
resource functionTelemetry 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, functionPrincipalId, roleIds.monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.monitoringMetricsPublisher)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Storage Blob Data Contributor: the training job reads the bars through the identity datastore and
// writes its outputs and MLflow artifacts to the workspace's default (identity-based) datastore;
// Reader would not let it write.
resource trainingStorage 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, trainingPrincipalId, roleIds.storageBlobDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageBlobDataContributor)
    principalId: trainingPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// AzureML Data Scientist: the training job logs to MLflow and registers/tags model versions
// (champion/challenger) as the compute's identity.
resource trainingWorkspace 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workspace.id, trainingPrincipalId, roleIds.azureMLDataScientist)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.azureMLDataScientist)
    principalId: trainingPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// AcrPull: the compute cluster pulls the job's environment image (admin user is disabled).
resource trainingRegistry 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(containerRegistry.id, trainingPrincipalId, roleIds.acrPull)
  scope: containerRegistry
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.acrPull)
    principalId: trainingPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// AcrPull: the kubelet pulls the deployments' images from the workspace registry.
resource kubeletRegistry 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(containerRegistry.id, kubeletPrincipalId, roleIds.acrPull)
  scope: containerRegistry
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.acrPull)
    principalId: kubeletPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Storage Blob Data Contributor: the deploying user can list and read the bars (raw/, latest/,
// deadletter/) with Entra ID, since keys are off.
resource userStorage 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(userPrincipalId)) {
  name: guid(storage.id, userPrincipalId, roleIds.storageBlobDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageBlobDataContributor)
    principalId: userPrincipalId
    principalType: userPrincipalType
  }
}
