"""Serving capacity: the instance type of the deployments, and two of them fitting the AKS pool during a swap."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import pytest
import yaml

from functions.settings import Settings
from functions.train_trigger.aml_rollout import MAX_DEPLOYMENTS
from tests.infra.bicep_model import BICEP, one, param_default, render

INSTANCE_TYPE = yaml.safe_load((BICEP / "hooks" / "instancetype.yaml").read_text())
# vCPUs and GiB of the VM sizes the docs suggest for the AKS pool (Azure VM size tables, Dv5/Ddv5 series).
VM_SIZES = {
    "Standard_D4ds_v5": (4, 16),
    "Standard_D4s_v5": (4, 16),
    "Standard_D8ds_v5": (8, 32),
    "Standard_D8s_v5": (8, 32),
    "Standard_D16ds_v5": (16, 64),
}
# AKS kube-reserved CPU by core count (AKS "resource reservations"), in millicores.
KUBE_RESERVED_CPU = {4: 140, 8: 180, 16: 260}
EVICTION_MIB = 100  # kubelet hard eviction threshold, memory.available < 100Mi
# What runs besides the deployments, by request, rounded up: AKS system pods that run once per cluster
# (coredns, metrics-server, konnectivity, the Container insights ReplicaSet) and the AzureML extension
# in inference mode (its docs: "around 2 vCPU cores and 3 GB memory" for the extension and Arc agents);
# DaemonSets (Cilium, Container insights, CSI drivers) on every node. Deliberately generous estimates.
CLUSTER_ONCE = (2500, 4096)  # millicores, MiB
PER_NODE = (300, 768)


def millicores(quantity: str) -> int:
    """A Kubernetes CPU quantity ("2", "500m", "1.5") in millicores."""
    text = str(quantity)
    return int(text[:-1]) if text.endswith("m") else round(float(text) * 1000)


def mebibytes(quantity: str) -> int:
    """A Kubernetes memory quantity ("4Gi", "1500Mi", "2G") in MiB, rounded up."""
    found = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|K|M|G)?", str(quantity))
    assert found, quantity
    factor = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "K": 1000 / 1024**2, "M": 1000**2 / 1024**2, "G": 1000**3 / 1024**2}
    return math.ceil(float(found.group(1)) * factor.get(found.group(2) or "", 1 / 1024**2))


@dataclass(frozen=True)
class Pool:
    """An AKS node pool: size, count and max pods per node."""

    vm_size: str
    count: int
    max_pods: int

    def allocatable(self) -> tuple[int, int]:
        """(millicores, MiB) one node offers pods: capacity less kube-reserved and the eviction threshold."""
        vcpus, gib = VM_SIZES[self.vm_size]
        total = gib * 1024
        memory_reserved = min(20 * self.max_pods + 50, total // 4)  # AKS 1.29+: 20 MB per pod + 50 MB, <= 25 %
        return vcpus * 1000 - KUBE_RESERVED_CPU[vcpus], total - memory_reserved - EVICTION_MIB

    def deployments_that_fit(self, cpu: int, memory: int) -> int:
        """Pods of (cpu, memory) requests the pool holds, with everything else packed onto the first node."""
        node_cpu, node_memory = self.allocatable()
        free = [(node_cpu - PER_NODE[0], node_memory - PER_NODE[1])] * self.count
        free[0] = (free[0][0] - CLUSTER_ONCE[0], free[0][1] - CLUSTER_ONCE[1])
        return sum(max(0, min(c // cpu, m // memory)) for c, m in free)


def _requests() -> tuple[int, int]:
    requests = INSTANCE_TYPE["spec"]["resources"]["requests"]
    return millicores(requests["cpu"]), mebibytes(requests["memory"])


def _default_pool(main, module) -> Pool:
    pool = one(module("aks"), "Microsoft.ContainerService/managedClusters").config["properties"]["agentPoolProfiles"]
    assert [p["mode"] for p in pool] == ["System"]
    return Pool(param_default(main, "aksNodeVmSize"), param_default(main, "aksNodeCount"), pool[0]["maxPods"])


def test_instance_type_is_a_valid_custom_resource():
    """An amlarc InstanceType with the fields Azure ML requires: CPU and memory requests and limits, none zero."""
    assert (INSTANCE_TYPE["apiVersion"], INSTANCE_TYPE["kind"]) == ("amlarc.azureml.com/v1alpha1", "InstanceType")
    resources = INSTANCE_TYPE["spec"]["resources"]
    for part in ("requests", "limits"):
        assert set(resources[part]) == {"cpu", "memory"}
        assert all(isinstance(v, str) for v in resources[part].values())  # quoted, as the CRD's schema wants
    assert millicores(resources["limits"]["cpu"]) >= millicores(resources["requests"]["cpu"]) > 0
    assert mebibytes(resources["limits"]["memory"]) >= mebibytes(resources["requests"]["memory"]) > 0


def test_instance_type_requests_what_an_mlflow_model_needs():
    """Azure ML: "For MLflow model deployment, the resource request requires at least 2 CPU cores and 4 GB"."""
    cpu, memory = _requests()
    assert cpu >= 2000 and memory >= 4 * 1000**3 / 1024**2


def test_the_app_and_the_hook_name_the_same_instance_type(module):
    """AML_INSTANCE_TYPE in Bicep and in settings.py is the InstanceType the postprovision hook applies."""
    name = INSTANCE_TYPE["metadata"]["name"]
    site = one(module("functionapp"), "Microsoft.Web/sites")
    settings = {s["name"]: render(s["value"]) for s in site.config["properties"]["siteConfig"]["appSettings"]}
    assert settings["AML_INSTANCE_TYPE"] == name == Settings.__dataclass_fields__["aml_instance_type"].default
    for hook in ("postprovision.sh", "postprovision.ps1"):
        text = (BICEP / "hooks" / hook).read_text()
        assert "kubectl apply -f instancetype.yaml" in text and "--file instancetype.yaml" in text


def test_two_deployments_fit_the_default_pool_during_a_swap(main, module):
    """The serving deployment and the new one both schedule on the default pool beside the extension."""
    assert MAX_DEPLOYMENTS == 2
    pool = _default_pool(main, module)
    assert pool == Pool("Standard_D8ds_v5", 1, 110)
    assert pool.deployments_that_fit(*_requests()) >= MAX_DEPLOYMENTS


def test_the_old_default_pool_would_not_hold_a_swap(main, module):
    """One Standard_D4ds_v5 (the default before) holds no deployment of this size; the check bites."""
    assert Pool("Standard_D4ds_v5", 1, 110).deployments_that_fit(*_requests()) == 0
    assert Pool("Standard_D4ds_v5", 2, 110).deployments_that_fit(*_requests()) < MAX_DEPLOYMENTS
    assert Pool("Standard_D4ds_v5", 3, 110).deployments_that_fit(*_requests()) >= MAX_DEPLOYMENTS


def test_the_pool_default_is_the_same_everywhere(main, module):
    """main.bicep, ml.bicep, main.parameters.json and the example environment agree on the VM size."""
    mapped = json.loads((BICEP / "main.parameters.json").read_text())["parameters"]["aksNodeVmSize"]["value"]
    assert mapped == "${AKS_NODE_VM_SIZE=" + param_default(main, "aksNodeVmSize") + "}"
    assert param_default(module("ml"), "aksNodeVmSize") == param_default(main, "aksNodeVmSize")
    example = (BICEP.parent / ".azure" / "dev.env.example").read_text()
    assert f'AKS_NODE_VM_SIZE="{param_default(main, "aksNodeVmSize")}"' in example


@pytest.mark.parametrize(
    ("quantity", "cpu", "memory"),
    [("2", 2000, None), ("500m", 500, None), ("1.5", 1500, None), ("4Gi", None, 4096), ("1500Mi", None, 1500)],
)
def test_quantities(quantity, cpu, memory):
    """Kubernetes quantities as the capacity check reads them."""
    if cpu is not None:
        assert millicores(quantity) == cpu
    if memory is not None:
        assert mebibytes(quantity) == memory
