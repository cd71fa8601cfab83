"""The Azure ML control plane: the job and deployment requests, single-flight, and the rollout steps."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from functions.settings import load_settings
from functions.train_trigger.aml_jobs import TRAIN_COMMAND, AmlSubmitter, build_training_job
from functions.train_trigger.aml_rollout import (
    MAX_DEPLOYMENTS,
    AmlRollout,
    Deployment,
    EndpointState,
    build_deployment,
    deployment_name,
    plan,
    smoke_passed,
    smoke_request,
)
from tests.factories import AML_APP_SETTINGS

ROOT = Path(__file__).resolve().parents[3]
SETTINGS = load_settings(AML_APP_SETTINGS)
NOW = dt.datetime(2026, 11, 3, 15, 30, tzinfo=dt.UTC)


def test_training_job_spec():
    """The job as Azure ML receives it: code, command, inputs, environment, compute, identity, experiment, tags."""
    job = build_training_job(SETTINGS, "tick-1", NOW)
    spec = job._to_job()._to_dict()  # the job document the SDK sends
    assert Path(spec["code"]) == ROOT / "training_job"
    assert spec["command"] == TRAIN_COMMAND and "python -m training_job.train" in spec["command"]
    assert spec["inputs"] == {
        "bars": {"mode": "ro_mount", "type": "uri_folder", "path": "azureml://datastores/bars/paths/raw/"},
        "model_name": "stockcast-lstm-attention",
        "experiment": "stockcast",
    }
    assert spec["outputs"] == {"summary": {"type": "uri_folder"}}
    assert spec["environment"]["image"].startswith("mcr.microsoft.com/azureml/")
    assert "tensorflow-cpu==2.21.0" in spec["environment"]["conda_file"]["dependencies"][2]["pip"]
    assert (spec["compute"], spec["experiment_name"]) == ("azureml:cpu-cluster", "stockcast")
    assert spec["display_name"] == "stockcast-train-20261103-1530Z"
    assert spec["identity"] == {"type": "managed_identity"}
    assert spec["tags"] == {
        "app": "stockcast",
        "trigger": "timer",
        "tick": "tick-1",
        "model_name": "stockcast-lstm-attention",
    }


def test_job_yml_runs_the_same_command():
    """training_job/job.yml is the CLI twin of the submitted job."""
    spec = yaml.safe_load((ROOT / "training_job" / "job.yml").read_text())
    assert " ".join(spec["command"].split()) == " ".join(TRAIN_COMMAND.split())
    assert spec["inputs"]["bars"]["mode"] == "ro_mount" and spec["identity"]["type"] == "managed"


class FakeJobs:
    """The jobs operations of an MLClient: records submissions, reports them as running."""

    def __init__(self) -> None:
        self.created = []

    def list(self):
        return [SimpleNamespace(name=j.name, experiment_name="stockcast", status="Running") for j in self.created] + [
            SimpleNamespace(name="old", experiment_name="stockcast", status="Completed"),
            SimpleNamespace(name="other", experiment_name="elsewhere", status="Running"),
        ]

    def create_or_update(self, job):
        job.name = f"job-{len(self.created) + 1}"
        self.created.append(job)
        return job


def test_two_ticks_submit_one_job():
    """Single-flight: the second tick sees the first job active and submits nothing."""
    jobs = FakeJobs()
    submitter = AmlSubmitter(SimpleNamespace(jobs=jobs), SETTINGS)
    first = submitter.submit_unless_active("t1", NOW)
    second = submitter.submit_unless_active("t2", NOW)
    assert (first.submitted, first.job_name) == (True, "job-1")
    assert (second.submitted, second.job_name) == (False, "job-1")
    assert len(jobs.created) == 1


def test_deployment_spec():
    """The Kubernetes deployment as sent: model version, scoring code, environment, probes, tags."""
    spec = build_deployment(SETTINGS, "7")._to_dict()
    assert (spec["type"], spec["name"], spec["endpoint_name"]) == ("kubernetes", "model-v7", "stockcast-ep")
    assert spec["model"] == "azureml:stockcast-lstm-attention:7"
    assert Path(spec["code_configuration"]["code"]) == ROOT / "training_job"
    assert spec["code_configuration"]["scoring_script"] == "score.py"
    assert "azureml-inference-server-http==1.5.1" in spec["environment"]["conda_file"]["dependencies"][2]["pip"]
    assert spec["environment_variables"] == {
        "STOCKCAST_MODEL_NAME": "stockcast-lstm-attention",
        "STOCKCAST_MODEL_VERSION": "7",
        "WORKER_COUNT": "2",
        "TF_NUM_INTRAOP_THREADS": "1",
        "TF_NUM_INTEROP_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }
    assert (spec["instance_count"], spec["instance_type"], spec["tags"]) == (
        1,
        "stockcast-scoring",
        {"app": "stockcast", "model_version": "7"},
    )
    assert spec["readiness_probe"]["initial_delay"] == 10 and spec["request_settings"]["request_timeout_ms"] == 5000


def test_deployment_request_takes_its_resources_from_the_instance_type():
    """The REST body azure-ai-ml sends (after its own validation): the instance type, no resources of its own.

    Azure ML rejects a deployment whose limits are not below its instance type's, and the instance type
    (bicep/hooks/instancetype.yaml) already asks for what an MLflow model needs; so the deployment names
    it and sets no containerResourceRequirements.
    """
    body = build_deployment(SETTINGS, "7")._to_rest_object(location="eastus2").as_dict()
    properties = body["properties"]
    assert (properties["endpointComputeType"], properties["instanceType"]) == ("Kubernetes", "stockcast-scoring")
    assert "containerResourceRequirements" not in properties
    assert body["sku"] == {"name": "Default", "capacity": 1}
    assert properties["model"] == "azureml:stockcast-lstm-attention:7"
    assert properties["requestSettings"] == {"maxConcurrentRequestsPerInstance": 4, "requestTimeout": "PT5S"}


def test_instance_type_setting_names_the_applied_instance_type():
    """AML_INSTANCE_TYPE's default is the InstanceType the postprovision hook applies."""
    manifest = yaml.safe_load((ROOT / "bicep" / "hooks" / "instancetype.yaml").read_text())
    assert (manifest["apiVersion"], manifest["kind"]) == ("amlarc.azureml.com/v1alpha1", "InstanceType")
    assert SETTINGS.aml_instance_type == manifest["metadata"]["name"] == "stockcast-scoring"


@pytest.mark.parametrize("version", ["1", "7", "123456"])
def test_deployment_names_are_valid_for_azure_ml(version):
    """3-32 characters, a letter first: azure-ai-ml refuses "v1" before sending anything."""
    name = deployment_name(version)
    build_deployment(SETTINGS, version)._to_rest_object(location="eastus2")  # raises on an invalid name
    assert 3 <= len(name) <= 32 and name[0].isalpha()


def _state(deployments: dict[str, str], traffic: dict[str, int], failed=()) -> EndpointState:
    """Deployments and traffic written with short names (v1) as the endpoint names them (model-v1)."""
    return EndpointState(
        {deployment_name(n[1:]): Deployment(deployment_name(n[1:]), n[1:], s) for n, s in deployments.items()},
        {deployment_name(n[1:]): share for n, share in traffic.items()},
        frozenset(failed),
    )


@pytest.mark.parametrize(
    ("deployments", "traffic", "champion", "failed", "action"),
    [
        ({}, {}, None, (), "blocked"),
        ({}, {}, "1", (), "create"),
        ({"v1": "Creating"}, {}, "1", (), "wait"),
        ({"v1": "Succeeded"}, {}, "1", (), "smoke_and_shift"),
        ({"v1": "Succeeded"}, {"v1": 100}, "1", (), "done"),
        ({"v1": "Succeeded"}, {"v1": 100}, "2", (), "create"),
        ({"v1": "Succeeded", "v2": "Updating"}, {"v1": 100}, "2", (), "wait"),
        ({"v1": "Succeeded", "v2": "Succeeded"}, {"v1": 100}, "2", (), "smoke_and_shift"),
        ({"v1": "Succeeded", "v2": "Succeeded"}, {"v1": 100}, "2", ("2",), "blocked"),
        ({"v1": "Succeeded", "v2": "Failed"}, {"v1": 100}, "2", (), "blocked"),
        ({"v1": "Succeeded", "v2": "Succeeded"}, {"v2": 100, "v1": 0}, "2", (), "delete"),
        ({"v1": "Deleting", "v2": "Succeeded"}, {"v2": 100}, "2", (), "done"),
        # a third version never joins two: idle deployments go (or finish what they do) first
        ({"v1": "Succeeded", "v2": "Succeeded"}, {"v1": 100}, "3", ("2",), "delete"),
        ({"v1": "Succeeded", "v2": "Creating"}, {"v1": 100}, "3", (), "wait"),
        ({"v1": "Succeeded", "v2": "Deleting"}, {"v1": 100}, "3", (), "wait"),
        ({"v1": "Succeeded", "v2": "Failed"}, {"v1": 100}, "3", (), "delete"),
        ({"v1": "Failed"}, {}, "2", (), "delete"),
    ],
)
def test_rollout_plan(deployments, traffic, champion, failed, action):
    """Each endpoint state leads to the one right next step."""
    assert plan(_state(deployments, traffic, failed), champion).action == action


def test_room_is_made_before_a_create():
    """The idle deployment is deleted, the serving one is kept; then the new one is created."""
    state = _state({"v1": "Succeeded", "v2": "Succeeded"}, {"v1": 100}, ("2",))
    step = plan(state, "3")
    assert (step.action, step.others) == ("delete", ("model-v2",))
    assert plan(_state({"v1": "Succeeded"}, {"v1": 100}), "3").action == "create"


@pytest.mark.parametrize("ticks_per_champion", [1, 2, 3, 5])
def test_a_swap_never_runs_more_than_two_deployments(ticks_per_champion):
    """Champions that change faster than a swap completes: never more than MAX_DEPLOYMENTS at once."""
    ops = FakeOps("1")
    ops.deployments["model-v1"] = SimpleNamespace(
        name="model-v1", tags={"model_version": "1"}, provisioning_state="Succeeded"
    )
    ops.endpoint.traffic = {"model-v1": 100}
    rollout = AmlRollout(ops, SETTINGS)
    peak, tick = 1, 0
    for champion in ["2", "3", "4", "4", "4", "4", "4", "4"]:
        ops.champion = champion
        for _ in range(ticks_per_champion):
            rollout.reconcile(f"t{tick}")
            peak = max(peak, len(ops.deployments))
            if tick % 2:  # the service finishes what it was asked every other tick
                ops.finish_provisioning()
                ops.finish_deleting()
            tick += 1
    assert rollout.reconcile("last") == "done: serving v4"
    assert peak == MAX_DEPLOYMENTS == 2


class FakeOps:
    """Just enough of MLClient for the rollout: it applies what it is asked, like the service would."""

    def __init__(self, champion: str, smoke_ok: bool = True) -> None:
        self.calls: list[tuple] = []
        self.deployments: dict[str, SimpleNamespace] = {}
        self.endpoint = SimpleNamespace(name="stockcast-ep", traffic={}, tags={})
        self.smoke_ok = smoke_ok
        self.champion = champion
        self.models = SimpleNamespace(
            list=lambda name: [SimpleNamespace(version=self.champion, tags={"role": "champion"})]
        )
        self.online_endpoints = SimpleNamespace(
            get=self._get, begin_create_or_update=self._update_endpoint, invoke=self._invoke
        )
        self.online_deployments = SimpleNamespace(
            list=lambda ep: list(self.deployments.values()),
            begin_create_or_update=self._create,
            begin_delete=self._delete,
        )

    def _get(self, name):
        return SimpleNamespace(name=name, traffic=dict(self.endpoint.traffic), tags=dict(self.endpoint.tags))

    def _update_endpoint(self, endpoint):
        self.calls.append(("traffic", dict(endpoint.traffic)))
        self.endpoint.traffic, self.endpoint.tags = dict(endpoint.traffic), dict(endpoint.tags)
        return SimpleNamespace(result=lambda: endpoint)

    def _invoke(self, endpoint_name, request_file, deployment_name):
        self.calls.append(("smoke", deployment_name))
        return '{"forecasts": [{"predicted_close": 101.5}]}' if self.smoke_ok else '{"error": {"code": "boom"}}'

    def _create(self, deployment):
        self.calls.append(("create", deployment.name))
        self.deployments[deployment.name] = SimpleNamespace(
            name=deployment.name, tags=deployment.tags, provisioning_state="Creating"
        )

    def _delete(self, name, endpoint_name):
        self.calls.append(("delete", name))
        self.deployments[name].provisioning_state = "Deleting"

    def finish_provisioning(self):
        for d in self.deployments.values():
            if d.provisioning_state == "Creating":
                d.provisioning_state = "Succeeded"

    def finish_deleting(self):
        for name in [n for n, d in self.deployments.items() if d.provisioning_state == "Deleting"]:
            del self.deployments[name]


def test_blue_green_across_ticks():
    """Create → (provisioning) wait → smoke, shift 100% → delete old → done, state read each tick."""
    ops = FakeOps("2")
    ops.deployments["model-v1"] = SimpleNamespace(
        name="model-v1", tags={"model_version": "1"}, provisioning_state="Succeeded"
    )
    ops.endpoint.traffic = {"model-v1": 100}
    rollout = AmlRollout(ops, SETTINGS)
    rollout.reconcile("t1")
    assert ops.calls == [("create", "model-v2")]
    assert rollout.reconcile("t2").startswith("wait")
    ops.finish_provisioning()
    rollout.reconcile("t3")
    assert ops.calls[1:] == [
        ("smoke", "model-v2"),
        ("traffic", {"model-v2": 100, "model-v1": 0}),
        ("delete", "model-v1"),
    ]
    del ops.deployments["model-v1"]
    assert rollout.reconcile("t4") == "done: serving v2"


def test_failed_smoke_never_gets_traffic():
    """A deployment whose smoke request fails keeps 0% and is not retried every tick."""
    ops = FakeOps("1", smoke_ok=False)
    ops.deployments["model-v1"] = SimpleNamespace(
        name="model-v1", tags={"model_version": "1"}, provisioning_state="Succeeded"
    )
    rollout = AmlRollout(ops, SETTINGS)
    rollout.reconcile("t1")
    assert ("smoke", "model-v1") in ops.calls and ops.endpoint.traffic == {}
    assert ops.endpoint.tags == {"smoke_failed": "1"}
    assert rollout.reconcile("t2").startswith("blocked")
    assert [c for c in ops.calls if c[0] == "smoke"] == [("smoke", "model-v1")]


def test_smoke_request_and_check():
    """The smoke payload is a contiguous session; only a finite positive forecast passes."""
    bars = smoke_request()["bars"]
    assert len(bars) == 80 and all(b["ts"] - a["ts"] == 60 for a, b in itertools.pairwise(bars))
    assert smoke_passed({"forecasts": [{"predicted_close": 10.0}]})
    assert not smoke_passed({"forecasts": [{"predicted_close": float("nan")}]})
    assert not smoke_passed('{"error": {}}')
