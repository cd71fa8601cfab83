// The AKS cluster that serves the models: one system pool, the Azure ML extension's needs (local
// accounts, see the skip below), Azure CNI overlay with Cilium, patch auto-upgrade, and container
// insights to Log Analytics with managed-identity ingestion. bicep/modules/ml.bicep deploys this file
// only when the cluster is missing (aksExists, from the preprovision hook): see the reasons there and in
// tests/infra/test_reprovision.py. Its extension and data collection rule association are in ml.bicep.

@description('Region of the cluster.')
param location string

@description('Tags of every resource.')
param tags object

@description('Name of the AKS cluster.')
param aksName string

@description('VM size of the AKS system node pool (with a local disk: the OS disk is ephemeral).')
param aksNodeVmSize string

@minValue(1)
@description('Node count of the AKS system node pool.')
param aksNodeCount int

@description('Resource id of the Log Analytics workspace for container insights.')
param logAnalyticsId string

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

@description('Object id of the AKS kubelet identity (pulls images from the registry).')
output kubeletPrincipalId string = aks.properties.identityProfile.kubeletidentity.objectId
