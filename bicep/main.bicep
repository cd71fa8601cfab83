// Stockcast on Azure: `azd up` provisions this template (subscription scope), then deploys the
// Function App tagged azd-service-name=api. Every resource lives in one resource group; the modules
// are plain resource blocks so the offline scan (pycep-parser + checkov, tests/infra) sees them all.
// What Bicep cannot do is in bicep/hooks/: the preprovision hook says which resources exist already
// (those Azure will not PUT again are created only when missing, so a second `azd up` changes nothing),
// postprovision applies the Kubernetes instance type, then attaches AKS as Kubernetes compute and
// creates the online endpoint, and prints the Airbyte settings; postdeploy stores the Function App's
// key in API Management once the app has its code.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; names the resource group and seeds every resource name.')
param environmentName string

@minLength(1)
@description('Azure region of every resource; it must offer Flex Consumption, AKS, Azure ML and API Management Consumption.')
param location string

@description('Object id of the deploying user (azd sets AZURE_PRINCIPAL_ID); it gets data access to the bars storage. Empty: no assignment.')
param principalId string = ''

@allowed([
  'User'
  'ServicePrincipal'
])
@description('Kind of principal principalId is: User for a person running azd, ServicePrincipal for a pipeline.')
param principalType string = 'User'

@description('Resource id of an existing action group the alerts notify. Empty: the alerts fire in the portal only.')
param alertActionGroupId string = ''

@minLength(1)
@description('Publisher e-mail of the API Management instance (Azure sends service notices there).')
param apimPublisherEmail string = 'stockcast@example.com'

@minLength(1)
@description('Publisher name of the API Management instance, shown in its developer portal.')
param apimPublisherName string = 'Stockcast'

@minLength(1)
@description('NCRONTAB schedule (six fields, seconds first) of the train_trigger timer: reconcile the rollout, then train.')
param trainSchedule string = '0 */15 * * * *'

@minLength(1)
@description('VM size of the AKS system node pool that hosts the Azure ML extension and the model deployments; it needs a local disk for the ephemeral OS disk. 8 vCPUs: two deployments of the stockcast-scoring instance type (2 vCPU, 4 GiB each) fit beside the extension during a swap.')
param aksNodeVmSize string = 'Standard_D8ds_v5'

@minValue(1)
@maxValue(5)
@description('Node count of the AKS system pool (1 node of the default size holds the DevTest inference router and two deployments during a swap).')
param aksNodeCount int = 1

@minLength(1)
@description('VM size of the Azure ML CPU compute cluster that runs the training job.')
param amlComputeVmSize string = 'Standard_DS3_v2'

@minValue(1)
@maxValue(4)
@description('Maximum node count of the Azure ML CPU compute cluster (it scales to 0 between jobs).')
param amlComputeMaxNodes int = 1

@minValue(1)
@maxValue(4)
@description('Nodes one training job runs on (TRAINING_NODES: Azure ML TensorFlow distribution, one worker per node); the cluster may scale to at least this many.')
param trainingNodes int = 1

@description('Whether the AKS cluster exists already (AKS_EXISTS, set by the preprovision hook): an existing cluster is read, never PUT again (a stopped cluster refuses updates; its pool size is fixed).')
param aksExists bool = false

@description('Whether the AzureML extension exists on the cluster already (AML_EXTENSION_EXISTS, set by the preprovision hook): then the postprovision hook checks it instead of a PUT that would reset its settings.')
param amlExtensionExists bool = false

@description('Whether the Azure ML CPU compute cluster exists already (AML_COMPUTE_EXISTS, set by the preprovision hook): a compute PUT overwrites the cluster, so an existing one is left as it is.')
param amlComputeExists bool = false

@description('Whether API Management\'s function-key named value exists already (APIM_NAMED_VALUE_EXISTS, set by the preprovision hook): an existing one keeps the key the postdeploy hook stored.')
param apimNamedValueExists bool = false

@allowed([
  false
])
@description('Reserved for private endpoints and VNet integration. Not implemented yet, so only false is accepted: every service keeps a public endpoint secured by Entra ID, keys or TLS.')
param enablePrivateNetworking bool = false

var abbrs = loadJsonContent('abbreviations.json')
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
  app: 'stockcast'
}
// The one switch private networking will turn; today it is always 'Enabled' (see the parameter).
var publicNetworkAccess = enablePrivateNetworking ? 'Disabled' : 'Enabled'

// Names the app reads as settings and the hooks read as outputs.
var barsContainerName = 'bars'
var eventHubName = 'stock_bars'
var forecastsEventHubName = 'stock_forecasts'
var forecastConsumerGroupName = 'forecast'
var consumerGroupName = 'ingest'
var amlComputeName = 'cpu-cluster'
// the postprovision hook attaches AKS under this name (Azure ML compute names: at most 16 characters)
var amlKubernetesComputeName = 'aks-inference'
var amlBarsDatastoreName = 'bars'
// the postprovision hook creates it (online endpoint names: at most 32 characters, unique in the region)
var amlEndpointName = 'stockcast-${resourceToken}'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: '${abbrs.resourcesResourceGroups}${environmentName}'
  location: location
  tags: tags
}

module identities 'modules/identities.bicep' = {
  name: 'identities'
  scope: rg
  params: {
    location: location
    tags: tags
    functionIdentityName: '${abbrs.managedIdentityUserAssignedIdentities}func-${resourceToken}'
    trainingIdentityName: '${abbrs.managedIdentityUserAssignedIdentities}train-${resourceToken}'
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    location: location
    tags: tags
    logAnalyticsName: '${abbrs.operationalInsightsWorkspaces}${resourceToken}'
    applicationInsightsName: '${abbrs.insightsComponents}${resourceToken}'
    alertActionGroupId: alertActionGroupId
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    location: location
    tags: tags
    storageAccountName: '${abbrs.storageStorageAccounts}${resourceToken}'
    barsContainerName: barsContainerName
    publicNetworkAccess: publicNetworkAccess
  }
}

module eventhubs 'modules/eventhubs.bicep' = {
  name: 'eventhubs'
  scope: rg
  params: {
    location: location
    tags: tags
    namespaceName: '${abbrs.eventHubNamespaces}${resourceToken}'
    eventHubName: eventHubName
    consumerGroupName: consumerGroupName
    forecastsEventHubName: forecastsEventHubName
    forecastConsumerGroupName: forecastConsumerGroupName
    publicNetworkAccess: publicNetworkAccess
  }
}

module ml 'modules/ml.bicep' = {
  name: 'ml'
  scope: rg
  params: {
    location: location
    tags: tags
    workspaceName: '${abbrs.machineLearningServicesWorkspaces}${resourceToken}'
    keyVaultName: '${abbrs.keyVaultVaults}${resourceToken}'
    containerRegistryName: '${abbrs.containerRegistryRegistries}${resourceToken}'
    aksName: '${abbrs.containerServiceManagedClusters}${resourceToken}'
    storageAccountName: storage.outputs.name
    barsContainerName: storage.outputs.barsContainer
    applicationInsightsId: monitoring.outputs.applicationInsightsId
    logAnalyticsId: monitoring.outputs.logAnalyticsId
    trainingIdentityId: identities.outputs.trainingIdentityId
    computeName: amlComputeName
    computeVmSize: amlComputeVmSize
    computeMaxNodes: max(amlComputeMaxNodes, trainingNodes)
    computeExists: amlComputeExists
    aksNodeVmSize: aksNodeVmSize
    aksNodeCount: aksNodeCount
    aksExists: aksExists
    amlExtensionExists: amlExtensionExists
    barsDatastoreName: amlBarsDatastoreName
    publicNetworkAccess: publicNetworkAccess
  }
}

module roles 'modules/roles.bicep' = {
  name: 'roles'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    eventHubsNamespaceName: eventhubs.outputs.namespaceName
    eventHubName: eventhubs.outputs.eventHubName
    forecastsEventHubName: eventhubs.outputs.forecastsEventHubName
    workspaceName: ml.outputs.workspaceName
    containerRegistryName: ml.outputs.containerRegistryName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    functionPrincipalId: identities.outputs.functionPrincipalId
    trainingPrincipalId: identities.outputs.trainingPrincipalId
    kubeletPrincipalId: ml.outputs.kubeletPrincipalId
    userPrincipalId: principalId
    userPrincipalType: principalType
  }
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  scope: rg
  params: {
    location: location
    tags: tags
    planName: '${abbrs.webServerFarms}${resourceToken}'
    functionAppName: '${abbrs.webSitesFunctions}${resourceToken}'
    identityId: identities.outputs.functionIdentityId
    identityClientId: identities.outputs.functionClientId
    storageAccountName: storage.outputs.name
    deploymentContainerName: storage.outputs.deploymentContainer
    barsContainerName: storage.outputs.barsContainer
    eventHubsNamespaceName: eventhubs.outputs.namespaceName
    eventHubName: eventhubs.outputs.eventHubName
    consumerGroupName: eventhubs.outputs.consumerGroupName
    forecastsEventHubName: eventhubs.outputs.forecastsEventHubName
    forecastConsumerGroupName: eventhubs.outputs.forecastConsumerGroupName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    workspaceName: ml.outputs.workspaceName
    computeName: ml.outputs.computeName
    barsDatastoreName: ml.outputs.barsDatastoreName
    endpointName: amlEndpointName
    trainSchedule: trainSchedule
    trainingNodes: trainingNodes
  }
  // the host starts with its identity: storage, Event Hubs and Azure ML access must exist first
  dependsOn: [
    roles
  ]
}

module apim 'modules/apim.bicep' = {
  name: 'apim'
  scope: rg
  params: {
    location: location
    tags: tags
    apimName: '${abbrs.apiManagementService}${resourceToken}'
    publisherEmail: apimPublisherEmail
    publisherName: apimPublisherName
    functionAppName: functionApp.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    functionKeyNamedValueExists: apimNamedValueExists
  }
}

@description('Region of every resource.')
output AZURE_LOCATION string = location

@description('Microsoft Entra tenant of the subscription.')
output AZURE_TENANT_ID string = tenant().tenantId

@description('The resource group that holds everything.')
output AZURE_RESOURCE_GROUP string = rg.name

@description('Storage account of the bars, the Function host and the Azure ML workspace (shared keys off).')
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name

@description('Blob container of raw/, latest/ and deadletter/.')
output BARS_CONTAINER string = storage.outputs.barsContainer

@description('Event Hubs namespace (Standard, Kafka endpoint on 9093).')
output EVENTHUBS_NAMESPACE string = eventhubs.outputs.namespaceName

@description('Kafka bootstrap server for Airbyte destination-kafka.')
output EVENTHUBS_BOOTSTRAP_SERVER string = '${eventhubs.outputs.namespaceHost}:9093'

@description('Event hub (Kafka topic) the bars are published to.')
output EVENTHUB_NAME string = eventhubs.outputs.eventHubName

@description('Name of the Send-only rule on the hub; its connection string is fetched on demand, never output.')
output EVENTHUB_SEND_RULE_NAME string = eventhubs.outputs.sendRuleName

@description('The Function App azd deploys to.')
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name

@description('Base URL of the Function App (its HTTP functions need a function key; call them through APIM).')
output AZURE_FUNCTION_APP_URL string = functionApp.outputs.url

@description('Application Insights resource (workbook and alerts live beside it).')
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.applicationInsightsName

@description('Log Analytics workspace behind Application Insights, AKS and Azure ML diagnostics.')
output LOG_ANALYTICS_WORKSPACE_NAME string = monitoring.outputs.logAnalyticsName

@description('Azure ML workspace.')
output AML_WORKSPACE string = ml.outputs.workspaceName

@description('Azure ML CPU compute cluster of the training job.')
output AML_COMPUTE string = ml.outputs.computeName

@description('Kubernetes online endpoint serving the champion (the postprovision hook creates it; the app reads its scoring URI from Azure ML).')
output AML_ENDPOINT string = amlEndpointName

@description('AKS cluster attached to the workspace.')
output AKS_CLUSTER_NAME string = ml.outputs.aksName

@description('Name of the AKS cluster as Azure ML Kubernetes compute (the postprovision hook attaches it).')
output AML_KUBERNETES_COMPUTE string = amlKubernetesComputeName

@description('Container registry of the workspace (admin user disabled).')
output AZURE_CONTAINER_REGISTRY_NAME string = ml.outputs.containerRegistryName

@description('Key Vault of the workspace (RBAC, purge protection).')
output AZURE_KEY_VAULT_NAME string = ml.outputs.keyVaultName

@description('API Management instance (Consumption).')
output APIM_NAME string = apim.outputs.name

@description('Gateway URL of API Management.')
output APIM_GATEWAY_URL string = apim.outputs.gatewayUrl

@description('Base URL of the predictions API behind API Management: append /predict/{symbol}; send Ocp-Apim-Subscription-Key.')
output APIM_API_URL string = apim.outputs.apiUrl
