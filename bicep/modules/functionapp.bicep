// The Function App (ingest, train_trigger, predict) on Flex Consumption: Python 3.11, a user-assigned
// identity for every connection (storage, Event Hubs, Azure ML, App Insights), and every app setting
// functions/settings.py reads in Azure. No setting holds a key or a connection string with a secret.

@description('Region of the plan and the app.')
param location string

@description('Tags of every resource; the app also gets azd-service-name.')
param tags object

@description('Name of the Flex Consumption plan.')
param planName string

@description('Name of the Function App.')
param functionAppName string

@description('Service name azd deploys to (azure.yaml services.api).')
param serviceName string = 'api'

@description('Resource id of the Function App\'s user-assigned identity.')
param identityId string

@description('Client id of that identity (AZURE_CLIENT_ID and every __clientId).')
param identityClientId string

@description('Name of the shared storage account.')
param storageAccountName string

@description('Name of the container holding the deployment package.')
param deploymentContainerName string

@description('Name of the bars container (BARS_CONTAINER).')
param barsContainerName string

@description('Name of the Event Hubs namespace.')
param eventHubsNamespaceName string

@description('Name of the event hub (BARS_EVENTHUB_NAME).')
param eventHubName string

@description('Consumer group of the ingest function (BARS_CONSUMER_GROUP).')
param consumerGroupName string

@description('Name of the event hub the forecast stream publishes to (FORECASTS_EVENTHUB_NAME).')
param forecastsEventHubName string

@description('Consumer group of the forecast stream function on the bars hub (FORECAST_CONSUMER_GROUP).')
param forecastConsumerGroupName string

@description('Name of Application Insights.')
param applicationInsightsName string

@description('Name of the Azure ML workspace (AML_WORKSPACE).')
param workspaceName string

@description('Name of the CPU compute cluster (AML_COMPUTE).')
param computeName string

@description('Name of the bars datastore (AML_BARS_DATASTORE).')
param barsDatastoreName string

@description('Name of the Kubernetes online endpoint (AML_ENDPOINT); the app reads its scoring URI and key from Azure ML at run time.')
param endpointName string

@description('NCRONTAB schedule of the train_trigger timer (TRAIN_SCHEDULE).')
param trainSchedule string

@description('Registered model name (MODEL_NAME).')
param modelName string = 'stockcast-lstm-attention'

@description('Azure ML experiment of the training jobs (EXPERIMENT_NAME).')
param experimentName string = 'stockcast'

@minValue(1)
@maxValue(4)
@description('Nodes of the CPU compute cluster one training job runs on (TRAINING_NODES); at most its maximum node count (amlComputeMaxNodes).')
param trainingNodes int = 1

@minValue(1)
@maxValue(1000)
@description('Most instances Flex Consumption may scale the app to.')
param maximumInstanceCount int = 40

@allowed([
  2048
  4096
])
@description('Memory of each instance in MB.')
param instanceMemoryMB int = 2048

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource eventHubsNamespace 'Microsoft.EventHub/namespaces@2024-01-01' existing = {
  name: eventHubsNamespaceName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225:Zone redundancy of Flex Consumption depends on the region and needs always-ready instances; a scale-to-zero single-region app does without.
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222:API Management Consumption has no VNet, so it calls the app over its public endpoint; the HTTP functions require a function key that only APIM holds.
  // checkov:skip=CKV_AZURE_212:Flex Consumption scales to zero on purpose; the Event Hubs trigger and the timer wake it, so no always-ready instance is paid for.
  // checkov:skip=CKV_AZURE_213:Flex Consumption does not support the App Service health check; the alerts (no bars, predict 5xx) watch the app instead.
  // checkov:skip=CKV_AZURE_17:Client certificates would need every caller (APIM included) to present one; the HTTP functions take function keys instead.
  name: functionAppName
  location: location
  tags: union(tags, {
    'azd-service-name': serviceName
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    publicNetworkAccess: 'Enabled'
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: [
        // Host storage (AzureWebJobsStorage) with the identity
        {
          name: 'AzureWebJobsStorage__accountName'
          value: storage.name
        }
        {
          name: 'AzureWebJobsStorage__credential'
          value: 'managedidentity'
        }
        {
          name: 'AzureWebJobsStorage__clientId'
          value: identityClientId
        }
        // Event Hubs trigger connection "BarsEventHub"
        {
          name: 'BarsEventHub__fullyQualifiedNamespace'
          value: replace(replace(eventHubsNamespace.properties.serviceBusEndpoint, 'https://', ''), ':443/', '')
        }
        {
          name: 'BarsEventHub__credential'
          value: 'managedidentity'
        }
        {
          name: 'BarsEventHub__clientId'
          value: identityClientId
        }
        // the forecast stream's Kafka producer (functions/forecast/producer.py): the namespace's Kafka endpoint,
        // signed in with the managed identity (OAUTHBEARER; Data Sender on the forecasts hub), no key
        {
          name: 'FORECASTS_KAFKA_BOOTSTRAP'
          value: '${replace(replace(eventHubsNamespace.properties.serviceBusEndpoint, 'https://', ''), ':443/', '')}:9093'
        }
        {
          name: 'FORECASTS_KAFKA_SECURITY'
          value: 'SASL_SSL'
        }
        // Blob bindings and SDK connection "BarsStorage"
        {
          name: 'BarsStorage__blobServiceUri'
          value: storage.properties.primaryEndpoints.blob
        }
        {
          name: 'BarsStorage__credential'
          value: 'managedidentity'
        }
        {
          name: 'BarsStorage__clientId'
          value: identityClientId
        }
        // functions/settings.py
        {
          name: 'BARS_CONTAINER'
          value: barsContainerName
        }
        {
          name: 'BARS_EVENTHUB_NAME'
          value: eventHubName
        }
        {
          name: 'BARS_CONSUMER_GROUP'
          value: consumerGroupName
        }
        {
          name: 'FORECASTS_EVENTHUB_NAME'
          value: forecastsEventHubName
        }
        {
          name: 'FORECAST_CONSUMER_GROUP'
          value: forecastConsumerGroupName
        }
        {
          name: 'TRAIN_SCHEDULE'
          value: trainSchedule
        }
        // raw/ compaction (functions/compact): every 15 minutes, 7 minutes after train_trigger's default ticks;
        // an hour is closed 30 minutes after it ends (functionTimeout is 10); at most a day of hours per run
        {
          name: 'COMPACT_SCHEDULE'
          value: '0 7-59/15 * * * *'
        }
        {
          name: 'COMPACT_MARGIN_SECONDS'
          value: '1800'
        }
        {
          name: 'COMPACT_MAX_HOURS'
          value: '24'
        }
        {
          name: 'ML_BACKEND'
          value: 'aml'
        }
        {
          name: 'MODEL_NAME'
          value: modelName
        }
        {
          name: 'EXPERIMENT_NAME'
          value: experimentName
        }
        // train_trigger submits a full retrain (from scratch, longer history) when none was submitted
        // within this many hours; every other submission is a warm one (docs/design.md, training)
        {
          name: 'TRAINING_FULL_EVERY_HOURS'
          value: '24'
        }
        // more than one: the job runs under Azure ML's TensorFlow distribution, one worker a node
        {
          name: 'TRAINING_NODES'
          value: string(trainingNodes)
        }
        {
          name: 'AZURE_SUBSCRIPTION_ID'
          value: subscription().subscriptionId
        }
        {
          name: 'AZURE_RESOURCE_GROUP'
          value: resourceGroup().name
        }
        {
          name: 'AML_WORKSPACE'
          value: workspaceName
        }
        {
          name: 'AML_COMPUTE'
          value: computeName
        }
        {
          name: 'AML_BARS_DATASTORE'
          value: barsDatastoreName
        }
        // the endpoint the postprovision hook creates; predict reads its scoring_uri and key from Azure
        // ML with the identity (no SCORING_URL: the address changes when the extension is reinstalled)
        {
          name: 'AML_ENDPOINT'
          value: endpointName
        }
        // the Kubernetes instance type the postprovision hook applies (bicep/hooks/instancetype.yaml)
        {
          name: 'AML_INSTANCE_TYPE'
          value: 'stockcast-scoring'
        }
        {
          name: 'SCORING_AUTH'
          value: 'key'
        }
        {
          name: 'AZURE_CLIENT_ID'
          value: identityClientId
        }
        // Telemetry: App Insights has local auth off, so the host signs in with the identity
        {
          name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
          value: appInsights.properties.ConnectionString
        }
        {
          name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
          value: 'Authorization=AAD;ClientId=${identityClientId}'
        }
      ]
    }
  }
}

// Deployments go through the Flex publish API with Entra ID; basic (FTP/SCM) credentials are off.
resource ftpCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'scm'
  properties: {
    allow: false
  }
}

@description('Name of the Function App.')
output name string = functionApp.name

@description('Resource id of the Function App.')
output id string = functionApp.id

@description('Default host name of the Function App.')
output defaultHostName string = functionApp.properties.defaultHostName

@description('HTTPS base URL of the Function App.')
output url string = 'https://${functionApp.properties.defaultHostName}'
