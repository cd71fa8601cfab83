// Azure ML: the workspace (with Key Vault, Container Registry, App Insights and the shared storage
// account), its diagnostics, the CPU cluster the training job runs on, the identity-based datastore
// on the bars container, and AKS with the Azure ML extension (inference only) for serving.
//
// A second `azd provision` must change nothing and fail nowhere, so what Azure will not PUT again is
// created only when missing (an *Exists parameter the preprovision hook sets from `az resource show`;
// tests/infra/test_reprovision.py holds the list and the reasons): the CPU cluster, AKS and its
// extension. The Kubernetes compute and the online endpoint are not here at all: the postprovision
// hook attaches the compute after it has applied the instance type (bicep/hooks/instancetype.yaml),
// then creates the endpoint, each only when missing. A Kubernetes compute cannot be updated
// (azureml-examples, infra/bootstrapping/sdk_helpers.sh, setup_compute: "Detach compute ... first,
// as k8s compute doesn't support update"), and the endpoint's traffic and tags belong to the rollout.

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

@description('Whether the CPU compute cluster exists already (set by the preprovision hook): then it is left as it is, never PUT again.')
param computeExists bool = false

@description('VM size of the AKS system node pool (with a local disk: the OS disk is ephemeral).')
param aksNodeVmSize string = 'Standard_D8ds_v5'

@minValue(1)
@description('Node count of the AKS system node pool.')
param aksNodeCount int = 1

@description('Whether the AKS cluster exists already (set by the preprovision hook): then it is read, never PUT again.')
param aksExists bool = false

@description('Whether the AzureML extension exists on the cluster already (set by the preprovision hook): then the postprovision hook checks it, Bicep does not PUT it again.')
param amlExtensionExists bool = false

@description('Name of the datastore on the bars container (AML_BARS_DATASTORE).')
param barsDatastoreName string = 'bars'

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

// Created only when missing: a compute PUT "will overwrite a compute if it exists. This is a
// nonrecoverable operation" (azure-rest-api-specs, machinelearningservices, Compute_CreateOrUpdate),
// and the only update Azure ML offers is the scale settings (Compute_Update, ClusterUpdateParameters).
// AML_COMPUTE_VM_SIZE therefore applies when the cluster is created; docs/deploy.md says how to change it.
resource cpuCluster 'Microsoft.MachineLearningServices/workspaces/computes@2025-06-01' = if (!computeExists) {
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

// AKS, in its own file (bicep/modules/aks.bicep) so that it can be deployed only when missing while the
// scanners still read it as a plain resource (checkov does not look inside a conditional resource). It
// is read otherwise: a stopped cluster (`az aks stop`, docs/deploy.md) takes no PUT ("You can only start
// or delete a stopped AKS cluster. To perform any operation like scale or upgrade, start your cluster
// first": AKS docs, start-stop-cluster), and an existing pool's vmSize and OS disk cannot change in place
// (AKS docs, resize-node-pools: a new pool replaces it). So AKS_NODE_VM_SIZE and the node count apply
// when the cluster is created.
module aks 'aks.bicep' = if (!aksExists) {
  name: 'aks'
  params: {
    location: location
    tags: tags
    aksName: aksName
    aksNodeVmSize: aksNodeVmSize
    aksNodeCount: aksNodeCount
    logAnalyticsId: logAnalyticsId
  }
}

// The cluster, created by the aks module above or found: the scope of its extension and data
// collection rule association, and where its kubelet identity is read.
resource cluster 'Microsoft.ContainerService/managedClusters@2024-09-01' existing = {
  name: aksName
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
  scope: cluster
  properties: {
    description: 'Container insights of the Stockcast AKS cluster'
    dataCollectionRuleId: containerInsightsRule.id
  }
  dependsOn: [
    aks
  ]
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
// Created only when missing: afterwards the postprovision hook owns it (checks it is Succeeded, adds
// settings it lacks with `az k8s-extension update`). A PUT replaces the whole configuration, protected
// settings included (the CLI's AzureMLKubernetes.Update: settings not sent again "would be considered
// obsolete and deleted"), so it would drop a TLS certificate configured later (docs/deploy.md, "Known
// limits"), and a stopped cluster cannot apply it.
resource amlExtension 'Microsoft.KubernetesConfiguration/extensions@2023-05-01' = if (!amlExtensionExists) {
  name: 'azureml'
  scope: cluster
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
      cluster_name: cluster.id
      clusterId: cluster.id
      'prometheus.prometheusSpec.externalLabels.cluster_name': cluster.id
      cluster_name_friendly: cluster.name
      location: toLower(location)
      jobSchedulerLocation: toLower(location)
      domain: '${toLower(location)}.cloudapp.azure.com'
      'servicebus.enabled': 'false'
      'relayserver.enabled': 'false'
      'nginxIngress.enabled': 'true'
    }
  }
  dependsOn: [
    aks
  ]
}

@description('Name of the workspace.')
output workspaceName string = workspace.name

@description('Name of the CPU compute cluster.')
output computeName string = computeName

@description('Name of the bars datastore.')
output barsDatastoreName string = barsDatastore.name

@description('Name of the AKS cluster.')
output aksName string = aksName

@description('Object id of the AKS kubelet identity (pulls images from the registry).')
output kubeletPrincipalId string = aksExists ? cluster.properties.identityProfile.kubeletidentity.objectId : aks.outputs.kubeletPrincipalId

@description('Name of the container registry.')
output containerRegistryName string = containerRegistry.name

@description('Name of the Key Vault.')
output keyVaultName string = keyVault.name
