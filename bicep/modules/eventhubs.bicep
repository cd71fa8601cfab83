// Event Hubs Standard (Kafka endpoint on 9093): the hub Airbyte publishes the bars to, the consumer
// group of the ingest function, and a Send-only rule on the hub for Airbyte. Airbyte's Kafka client
// signs in with SASL PLAIN as $ConnectionString, so local (SAS) auth stays enabled on the namespace;
// the Function App reads with its managed identity. Only the rule's name leaves this module.

@description('Region of the namespace.')
param location string

@description('Tags of every resource.')
param tags object

@minLength(6)
@maxLength(50)
@description('Name of the Event Hubs namespace.')
param namespaceName string

@description('Name of the event hub (the Kafka topic; destination-kafka turns - into _).')
param eventHubName string = 'stock_bars'

@description('Consumer group of the ingest function (BARS_CONSUMER_GROUP).')
param consumerGroupName string = 'ingest'

@description('Name of the event hub the forecast stream publishes to (FORECASTS_EVENTHUB_NAME).')
param forecastsEventHubName string = 'stock_forecasts'

@description('Consumer group of the forecast stream function on the bars hub (FORECAST_CONSUMER_GROUP).')
param forecastConsumerGroupName string = 'forecast'

@description('Name of the Send-only authorization rule Airbyte signs in with.')
param sendRuleName string = 'airbyte-send'

@minValue(1)
@maxValue(32)
@description('Partitions of the hub (bounds the ingest function\'s parallelism).')
param partitionCount int = 4

@allowed([
  'Enabled'
  'Disabled'
])
@description('Public network access; Disabled is reserved for the private networking option.')
param publicNetworkAccess string = 'Enabled'

resource namespace 'Microsoft.EventHub/namespaces@2024-01-01' = {
  name: namespaceName
  location: location
  tags: tags
  sku: {
    name: 'Standard'
    tier: 'Standard'
    capacity: 1
  }
  properties: {
    minimumTlsVersion: '1.2'
    kafkaEnabled: true
    // Airbyte's Kafka client authenticates with the Send-only SAS rule below
    disableLocalAuth: false
    publicNetworkAccess: publicNetworkAccess
    isAutoInflateEnabled: false
  }
}

resource hub 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' = {
  parent: namespace
  name: eventHubName
  properties: {
    partitionCount: partitionCount
    messageRetentionInDays: 3
  }
}

resource consumerGroup 'Microsoft.EventHub/namespaces/eventhubs/consumergroups@2024-01-01' = {
  parent: hub
  name: consumerGroupName
  properties: {
    userMetadata: 'Stockcast ingest function'
  }
}

// The forecast stream reads the bars on its own consumer group: its own checkpoints and pace, so it
// never holds back or replays ingest.
resource forecastConsumerGroup 'Microsoft.EventHub/namespaces/eventhubs/consumergroups@2024-01-01' = {
  parent: hub
  name: forecastConsumerGroupName
  properties: {
    userMetadata: 'Stockcast forecast stream function'
  }
}

// The forecasts, one Kafka record per symbol and minute, keyed by symbol (readable on 9093 like the bars).
resource forecastsHub 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' = {
  parent: namespace
  name: forecastsEventHubName
  properties: {
    partitionCount: partitionCount
    messageRetentionInDays: 1
  }
}

// Scoped to the hub and limited to Send: the connection string can publish bars, nothing else.
resource sendRule 'Microsoft.EventHub/namespaces/eventhubs/authorizationRules@2024-01-01' = {
  parent: hub
  name: sendRuleName
  properties: {
    rights: [
      'Send'
    ]
  }
}

@description('Name of the namespace.')
output namespaceName string = namespace.name

@description('Host name of the namespace (<namespace>.servicebus.windows.net).')
output namespaceHost string = replace(replace(namespace.properties.serviceBusEndpoint, 'https://', ''), ':443/', '')

@description('Name of the event hub.')
output eventHubName string = hub.name

@description('Name of the ingest consumer group.')
output consumerGroupName string = consumerGroup.name

@description('Name of the Send-only rule (never its keys).')
output sendRuleName string = sendRule.name

@description('Name of the forecasts event hub.')
output forecastsEventHubName string = forecastsHub.name

@description('Name of the forecast stream consumer group on the bars hub.')
output forecastConsumerGroupName string = forecastConsumerGroup.name
