// Azure ML: the workspace (with Key Vault, Container Registry, App Insights and the shared storage
// account), its diagnostics, the CPU cluster the training job runs on, the identity-based datastore
// on the bars container, and serving: AKS with the Azure ML extension (inference only), attached as
// Kubernetes compute, and the Kubernetes online endpoint whose deployments the timer rolls out.

@description('Region of the Azure ML resources.')
param location string

@description('Tags of every resource.')
param tags object

@description('Name of the Azure ML workspace.')
param workspaceName string

@description('Name of the workspace Key Vault.')
param keyVaultName string

@description('Name of the workspace container registry (alphanumeric).')
param containerRegistryName string

@description('Name of the AKS cluster that serves the models.')
param aksName string

@description('Name of the shared storage account (workspace default storage and the bars).')
param storageAccountName string

@description('Name of the bars blob container the datastore points at.')
param barsContainerName string

@description('Resource id of Application Insights, linked to the workspace.')
param applicationInsightsId string

@description('Resource id of the Log Analytics workspace for diagnostics and container insights.')
param logAnalyticsId string

@description('Resource id of the user-assigned identity of the CPU compute cluster (the training job runs as it).')
param trainingIdentityId string

@description('Name of the CPU compute cluster (AML_COMPUTE).')
param computeName string = 'cpu-cluster'

@description('VM size of the CPU compute cluster.')
param computeVmSize string = 'Standard_DS3_v2'

@minValue(1)
@description('Maximum node count of the CPU compute cluster.')
param computeMaxNodes int = 1

@maxLength(16)
@description('Name of the AKS cluster as Azure ML Kubernetes compute.')
param kubernetesComputeName string = 'aks-inference'

@description('VM size of the AKS system node pool (with a local disk: the OS disk is ephemeral).')
param aksNodeVmSize string = 'Standard_D8ds_v5'

@minValue(1)
@description('Node count of the AKS system node pool.')
param aksNodeCount int = 1

@description('Name of the datastore on the bars container (AML_BARS_DATASTORE).')
param barsDatastoreName string = 'bars'

@maxLength(32)
@description('Name of the Kubernetes online endpoint (AML_ENDPOINT); unique in the region.')
param endpointName string

@description('Whether the online endpoint exists already (set by the preprovision hook): then it is read, not PUT again.')
param endpointExists bool = false

@allowed([
  'Enabled'
  'Disabled'
])
@description('Public network access of the workspace, vault and registry; Disabled is reserved for the private networking option.')
param publicNetworkAccess string = 'Enabled'

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_109:No VNet yet (enablePrivateNetworking), so no firewall rule set; the data plane is Azure RBAC only.
  // checkov:skip=CKV_AZURE_189:Same reason: public network access stays on until private endpoints exist; every call needs an Entra ID token with an RBAC role.
  name: keyVaultName
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 7
    enablePurgeProtection: true
    publicNetworkAccess: publicNetworkAccess
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource containerRegistry 'Microsoft.ContainerRegistry/registries@2023-07-01' = {
  // checkov:skip=CKV_AZURE_139:No VNet yet (enablePrivateNetworking): Azure ML image builds, the compute cluster and AKS reach the registry publicly, each with its identity (admin user off; Basic has no anonymous pull).
  // checkov:skip=CKV_AZURE_166:Image quarantine is a Premium feature; the Basic registry only holds images Azure ML builds from this repository's environment.
  // checkov:skip=CKV_AZURE_163:Vulnerability scanning is Microsoft Defender for Containers, enabled per subscription, not by this template.
  name: containerRegistryName
  location: location
  tags: tags
  sku: {
    name: 'Basic'
  }
  // anonymousPullEnabled does not exist in this API version (tests/infra/test_schemas.py); the Basic
  // tier has no anonymous pull at all, so nothing needs turning off.
  properties: {
    adminUserEnabled: false
    publicNetworkAccess: publicNetworkAccess
  }
}

// System-assigned identity: Azure ML grants it what it needs on the linked storage, vault and
// registry when the workspace is created, so none of those assignments is declared here.
resource workspace 'Microsoft.MachineLearningServices/workspaces@2025-06-01' = {
  // checkov:skip=CKV_AZURE_243:Private endpoints come with enablePrivateNetworking (not implemented yet); the workspace is reached with Entra ID tokens and RBAC.
  name: workspaceName
  location: location
  tags: tags
  sku: {
    name: 'Basic'
    tier: 'Basic'
  }
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    friendlyName: 'Stockcast'
    description: 'Stockcast: training jobs, model registry and the Kubernetes online endpoint'
    storageAccount: storage.id
    keyVault: keyVault.id
    containerRegistry: containerRegistry.id
    applicationInsights: applicationInsightsId
    // the storage account has shared keys off: the default datastores use identities, never keys
    systemDatastoresAuthMode: 'identity'
    publicNetworkAccess: publicNetworkAccess
    hbiWorkspace: false
  }
}

// Run status, job and cluster events to Log Analytics: the "training job failed" alert reads
// AmlRunStatusChangedEvent, the workbook lists the runs.
resource workspaceDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'stockcast-to-log-analytics'
  scope: workspace
  properties: {
    workspaceId: logAnalyticsId
    logAnalyticsDestinationType: 'Dedicated'
    logs: [
      {
        category: 'AmlRunStatusChangedEvent'
        enabled: true
      }
      {
        category: 'AmlComputeJobEvent'
        enabled: true
      }
      {
        category: 'AmlComputeClusterEvent'
        enabled: true
      }
    ]
  }
}

resource cpuCluster 'Microsoft.MachineLearningServices/workspaces/computes@2025-06-01' = {
  parent: workspace
  name: computeName
  location: location
  tags: tags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${trainingIdentityId}': {}
    }
  }
  properties: {
    computeType: 'AmlCompute'
    description: 'Stockcast training job (scales to 0 between jobs)'
    disableLocalAuth: true
    properties: {
      vmSize: computeVmSize
      vmPriority: 'Dedicated'
      osType: 'Linux'
      // no VNet (see enablePrivateNetworking): nodes need a public IP to reach Azure ML; SSH stays closed
      enableNodePublicIp: true
      remoteLoginPortPublicAccess: 'Disabled'
      scaleSettings: {
        minNodeCount: 0
        maxNodeCount: computeMaxNodes
        nodeIdleTimeBeforeScaleDown: 'PT5M'
      }
    }
  }
}

// Identity-based: no credentials are stored; jobs read with the compute's identity, the studio
// previews with the workspace's.
resource barsDatastore 'Microsoft.MachineLearningServices/workspaces/datastores@2025-06-01' = {
  parent: workspace
  name: barsDatastoreName
  properties: {
    datastoreType: 'AzureBlob'
    description: 'Stockcast bars: raw/ (training input), latest/ and deadletter/'
    accountName: storage.name
    containerName: barsContainerName
    endpoint: environment().suffixes.storage
    protocol: 'https'
    credentials: {
      credentialsType: 'None'
    }
    serviceDataAccessAuthIdentity: 'WorkspaceSystemAssignedIdentity'
  }
}

resource aks 'Microsoft.ContainerService/managedClusters@2024-09-01' = {
  // checkov:skip=CKV_AZURE_141:The Azure ML extension does not support AKS with local accounts disabled (Azure ML "Deploy Kubernetes extension" limitations).
  // checkov:skip=CKV_AZURE_6:Authorized API server IP ranges would have to list the Azure ML control plane ranges of two paired regions; not maintained in this template.
  // checkov:skip=CKV_AZURE_8:The Kubernetes dashboard add-on no longer exists on supported AKS versions, so there is nothing to disable.
  // checkov:skip=CKV_AZURE_227:Encryption at host needs the EncryptionAtHost feature registered on the subscription, which a fresh subscription does not have.
  // checkov:skip=CKV_AZURE_172:No Secrets Store CSI driver is installed: no pod reads Key Vault (the endpoint key is fetched by the Function App).
  name: aksName
  location: location
  tags: tags
  sku: {
    name: 'Base'
    tier: 'Free'
  }
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    dnsPrefix: aksName
    enableRBAC: true
    // the Azure ML extension requires local accounts (see the checkov skip above)
    disableLocalAccounts: false
    agentPoolProfiles: [
      {
        name: 'system'
        mode: 'System'
        count: aksNodeCount
        vmSize: aksNodeVmSize
        osType: 'Linux'
        osSKU: 'AzureLinux'
        type: 'VirtualMachineScaleSets'
        maxPods: 110
        enableAutoScaling: false
        // OS disk on the VM's local SSD (64 GB fits the local disk of a D8ds_v5): faster starts, no managed disk
        osDiskType: 'Ephemeral'
        osDiskSizeGB: 64
      }
    ]
    networkProfile: {
      networkPlugin: 'azure'
      networkPluginMode: 'overlay'
      networkDataplane: 'cilium'
      networkPolicy: 'cilium'
      loadBalancerSku: 'standard'
    }
    autoUpgradeProfile: {
      upgradeChannel: 'patch'
      nodeOSUpgradeChannel: 'NodeImage'
    }
    addonProfiles: {
      omsagent: {
        enabled: true
        config: {
          logAnalyticsWorkspaceResourceID: logAnalyticsId
          useAADAuth: 'true'
        }
      }
    }
  }
}

// Container insights with managed-identity ingestion (useAADAuth) needs an explicit data collection
// rule, associated with the cluster: pod logs and Kubernetes events of the deployments go to Log Analytics.
resource containerInsightsRule 'Microsoft.Insights/dataCollectionRules@2023-03-11' = {
  name: 'dcr-ci-${aksName}'
  location: location
  tags: tags
  kind: 'Linux'
  properties: {
    description: 'Container insights of the Stockcast AKS cluster'
    dataSources: {
      extensions: [
        {
          name: 'ContainerInsightsExtension'
          extensionName: 'ContainerInsights'
          streams: [
            'Microsoft-ContainerInsights-Group-Default'
          ]
          extensionSettings: {
            dataCollectionSettings: {
              interval: '5m'
              namespaceFilteringMode: 'Off'
              enableContainerLogV2: true
            }
          }
        }
      ]
    }
    destinations: {
      logAnalytics: [
        {
          name: 'ciworkspace'
          workspaceResourceId: logAnalyticsId
        }
      ]
    }
    dataFlows: [
      {
        streams: [
          'Microsoft-ContainerInsights-Group-Default'
        ]
        destinations: [
          'ciworkspace'
        ]
      }
    ]
  }
}

resource containerInsightsAssociation 'Microsoft.Insights/dataCollectionRuleAssociations@2023-03-11' = {
  name: 'ContainerInsightsExtension'
  scope: aks
  properties: {
    description: 'Container insights of the Stockcast AKS cluster'
    dataCollectionRuleId: containerInsightsRule.id
  }
}

// Inference only (training runs on the CPU cluster); one node, so no router HA. The router serves
// HTTP on a public load balancer until a TLS certificate is configured (sslCname, sslCertPemFile).
// `az k8s-extension create` computes settings of its own before it PUTs the extension
// (azure-cli-extensions, k8s-extension, partner_extensions/AzureMLKubernetes.py: Create); through ARM
// nothing fills them in, so they are all declared here, with the CLI's values for an AKS cluster:
// the cluster's resource id (cluster_name, then copied to clusterId and the Prometheus label), its
// name, its region (lower case) as location, jobSchedulerLocation and '<region>.cloudapp.azure.com',
// Service Bus and Relay off, nginx ingress on. The CLI sends no identity for managedClusters.
// bicep/hooks/postprovision.* passes the same settings (tests/infra/test_azd.py compares them).
resource amlExtension 'Microsoft.KubernetesConfiguration/extensions@2023-05-01' = {
  name: 'azureml'
  scope: aks
  properties: {
    extensionType: 'Microsoft.AzureML.Kubernetes'
    autoUpgradeMinorVersion: true
    releaseTrain: 'stable'
    scope: {
      cluster: {
        releaseNamespace: 'azureml'
      }
    }
    configurationSettings: {
      enableTraining: 'False'
      enableInference: 'True'
      inferenceRouterServiceType: 'LoadBalancer'
      allowInsecureConnections: 'True'
      inferenceRouterHA: 'False'
      clusterPurpose: 'DevTest'
      installNvidiaDevicePlugin: 'False'
      installDcgmExporter: 'False'
      installVolcano: 'False'
      cluster_name: aks.id
      clusterId: aks.id
      'prometheus.prometheusSpec.externalLabels.cluster_name': aks.id
      cluster_name_friendly: aks.name
      location: toLower(location)
      jobSchedulerLocation: toLower(location)
      domain: '${toLower(location)}.cloudapp.azure.com'
      'servicebus.enabled': 'false'
      'relayserver.enabled': 'false'
      'nginxIngress.enabled': 'true'
    }
  }
}

resource kubernetesCompute 'Microsoft.MachineLearningServices/workspaces/computes@2025-06-01' = {
  parent: workspace
  name: kubernetesComputeName
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    computeType: 'Kubernetes'
    computeLocation: location
    description: 'AKS with the Azure ML extension: Stockcast model deployments'
    resourceId: aks.id
    properties: {
      // the extension's release namespace; it exists once the extension is installed
      namespace: 'azureml'
    }
  }
  dependsOn: [
    amlExtension
  ]
}

// Key auth: the predict function fetches the key with its identity (online_endpoints.get_keys),
// caches it for an hour and re-reads it on 401 (functions/predict/client.py).
// Created only when missing: the train_trigger rollout owns its traffic and tags (smoke_failed), which a
// PUT on every `azd provision` would reset. The preprovision hook sets AML_ENDPOINT_EXISTS (main.bicep's
// amlEndpointExists) from `az resource show`; the scoring URI is read from whichever exists.
resource endpoint 'Microsoft.MachineLearningServices/workspaces/onlineEndpoints@2025-06-01' = if (!endpointExists) {
  parent: workspace
  name: endpointName
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    authMode: 'Key'
    compute: kubernetesCompute.id
    description: 'Stockcast champion model; the train_trigger timer rolls its deployments out blue/green'
  }
}

resource existingEndpoint 'Microsoft.MachineLearningServices/workspaces/onlineEndpoints@2025-06-01' existing = if (endpointExists) {
  parent: workspace
  name: endpointName
}

@description('Name of the workspace.')
output workspaceName string = workspace.name

@description('Name of the CPU compute cluster.')
output computeName string = cpuCluster.name

@description('Name of the bars datastore.')
output barsDatastoreName string = barsDatastore.name

@description('Name of the AKS cluster.')
output aksName string = aks.name

@description('Object id of the AKS kubelet identity (pulls images from the registry).')
output kubeletPrincipalId string = aks.properties.identityProfile.kubeletidentity.objectId

@description('Name of the Kubernetes compute.')
output kubernetesComputeName string = kubernetesCompute.name

@description('Name of the online endpoint.')
output endpointName string = endpointName

@description('Scoring URI of the online endpoint (SCORING_URL); a URL, no credential.')
output scoringUri string = endpointExists ? existingEndpoint.properties.scoringUri : endpoint.properties.scoringUri

@description('Name of the container registry.')
output containerRegistryName string = containerRegistry.name

@description('Name of the Key Vault.')
output keyVaultName string = keyVault.name
