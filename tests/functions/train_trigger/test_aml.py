"""The Azure ML control plane: the job and deployment requests, single-flight, and the rollout steps."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from functions.settings import SettingsError, load_settings
from functions.train_trigger.aml_jobs import (
    MISSING,
    TRAIN_COMMAND,
    AmlSubmitter,
    build_training_job,
    should_submit,
    training_command,
)
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
from functions.train_trigger.job_record import (
    FULL,
    WARM,
    JobRecord,
    JobRecordStore,
    decode_record,
    encode_record,
    job_name,
    training_mode,
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
    assert spec["command"] == f"{TRAIN_COMMAND} --mode warm" and "python -m training_job.train" in spec["command"]
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
    assert spec["limits"] == {"timeout": 7200}
    assert spec["description"] == "LSTM-Attention forecaster: train on stored bars, compare with the champion"
    assert build_training_job(SETTINGS, "tick-1", NOW, "stockcast-train-x")._to_job()._to_dict()["name"] == (
        "stockcast-train-x"
    )  # Azure ML cancels a job this old: an unreadable one never blocks
    assert spec["tags"] == {
        "app": "stockcast",
        "trigger": "timer",
        "tick": "tick-1",
        "model_name": "stockcast-lstm-attention",
        "mode": "warm",
    }


def test_a_full_retrain_job_differs_only_in_its_mode():
    """--mode full in the command and the mode tag; inputs, outputs, time limit and the rest are the warm job's."""
    warm = build_training_job(SETTINGS, "tick-1", NOW, "j")._to_job()._to_dict()
    full = build_training_job(SETTINGS, "tick-1", NOW, "j", FULL)._to_job()._to_dict()
    assert full["command"].endswith(" --summary-out ${{outputs.summary}}/summary.json --mode full")
    assert full["command"] == TRAIN_COMMAND + " --mode full" and full["tags"]["mode"] == "full"
    assert full["inputs"] == warm["inputs"] and full["limits"] == warm["limits"] == {"timeout": 7200}
    assert {k: v for k, v in full.items() if k not in ("command", "tags")} == {
        k: v for k, v in warm.items() if k not in ("command", "tags")
    }


@pytest.mark.parametrize("mode", ["cold", "warm; rm -rf /", ""])
def test_only_the_two_modes_reach_the_command(mode):
    """The mode becomes part of a shell command: anything but warm or full is refused."""
    with pytest.raises(ValueError, match="is not one of"):
        training_command(mode)


def test_one_training_node_submits_no_distribution():
    """TRAINING_NODES=1 (the default): no distribution and no instance count, so Azure ML sets no TF_CONFIG."""
    spec = build_training_job(SETTINGS, "tick-1", NOW)._to_job()._to_dict()
    assert SETTINGS.training_nodes == 1
    assert "distribution" not in spec and "resources" not in spec


def test_two_training_nodes_submit_a_tensorflow_distribution_with_one_worker_a_node():
    """TRAINING_NODES=2: Azure ML's TensorFlow distribution of 2 workers, no parameter server, on 2 instances."""
    settings = load_settings({**AML_APP_SETTINGS, "TRAINING_NODES": "2"})
    spec = build_training_job(settings, "tick-1", NOW, "j")._to_job()._to_dict()
    one = build_training_job(SETTINGS, "tick-1", NOW, "j")._to_job()._to_dict()
    assert dict(spec["distribution"]) == {"type": "tensorflow", "worker_count": 2, "parameter_server_count": 0}
    assert spec["resources"]["instance_count"] == 2
    # the rest is the one-node job's: the same command on every node, the same inputs, outputs and limit
    assert {k: v for k, v in spec.items() if k not in ("distribution", "resources")} == {
        k: v for k, v in one.items() if k not in ("distribution", "resources")
    }


def test_training_nodes_is_a_positive_integer():
    """TRAINING_NODES: 1 by default, a positive integer when set."""
    assert load_settings({**AML_APP_SETTINGS, "TRAINING_NODES": "3"}).training_nodes == 3
    with pytest.raises(SettingsError, match="TRAINING_NODES='0'"):
        load_settings({**AML_APP_SETTINGS, "TRAINING_NODES": "0"})


def test_job_yml_runs_the_same_command():
    """training_job/job.yml is the CLI twin of the submitted job."""
    spec = yaml.safe_load((ROOT / "training_job" / "job.yml").read_text())
    assert " ".join(spec["command"].split()) == " ".join(TRAIN_COMMAND.split())
    assert spec["inputs"]["bars"]["mode"] == "ro_mount" and spec["identity"]["type"] == "managed"


class FakeJobs:
    """The jobs operations of an MLClient: jobs by name with a state; ``list`` is never needed."""

    def __init__(self) -> None:
        self.created: list = []
        self.states: dict[str, object] = {}  # name -> status, or an exception jobs.get raises
        self.gets: list[str] = []

    def list(self, **kwargs):
        raise AssertionError("a tick must not walk the workspace's jobs")

    def get(self, name):
        from azure.core.exceptions import ResourceNotFoundError

        self.gets.append(name)
        state = self.states.get(name)
        if state is None:
            raise ResourceNotFoundError(f"job {name} not found")
        if isinstance(state, Exception):
            raise state
        return SimpleNamespace(name=name, status=state)

    def create_or_update(self, job):
        assert job.name, "the job is submitted under the name its tick recorded"
        self.created.append(job)
        self.states[job.name] = "Queued"
        return job


@pytest.fixture
def records(container):
    """The job record in the real (Azurite) bars container, empty."""
    return JobRecordStore(container, SETTINGS.training_record_blob)


def _submitter(jobs: FakeJobs, records: JobRecordStore) -> AmlSubmitter:
    return AmlSubmitter(SimpleNamespace(jobs=jobs), SETTINGS, records)


@pytest.mark.integration
def test_two_ticks_submit_one_job(records):
    """Single-flight: the second tick reads the recorded job, finds it active, and submits nothing."""
    jobs = FakeJobs()
    submitter = _submitter(jobs, records)
    first = submitter.submit_unless_active("tick-aaaa", NOW)
    second = submitter.submit_unless_active("tick-bbbb", NOW + dt.timedelta(minutes=15))
    assert (first.submitted, first.job_name) == (True, "stockcast-train-20261103-153000-aaaa")
    assert first.reason == "submitted full: no full retrain recorded"
    assert (second.submitted, second.job_name, second.reason) == (
        False,
        first.job_name,
        f"job {first.job_name} is still active (Queued)",
    )
    assert [j.name for j in jobs.created] == [first.job_name]
    assert jobs.gets == [first.job_name]  # one jobs.get a tick, whatever the workspace holds


@pytest.mark.integration
def test_a_finished_job_lets_the_next_tick_submit(records):
    """Once the recorded job ends, the next tick submits a new one and records it."""
    jobs = FakeJobs()
    submitter = _submitter(jobs, records)
    first = submitter.submit_unless_active("tick-aaaa", NOW)
    jobs.states[first.job_name] = "Failed"
    second = submitter.submit_unless_active("tick-bbbb", NOW + dt.timedelta(minutes=15))
    assert (second.submitted, second.job_name) == (True, "stockcast-train-20261103-154500-bbbb")
    assert records.read("t").record.job_name == second.job_name


@pytest.mark.integration
def test_a_tick_killed_between_record_and_submit_is_finished_by_the_next(records):
    """The record names a job Azure ML never got (the tick died): the next tick sees a 404 and submits."""
    records.write(JobRecord("stockcast-train-20261103-150000-dead", "tick-dead", NOW), None)
    jobs = FakeJobs()
    found = _submitter(jobs, records).submit_unless_active("tick-cccc", NOW)
    assert found.submitted and [j.name for j in jobs.created] == ["stockcast-train-20261103-153000-cccc"]


@pytest.mark.integration
def test_a_failed_submission_is_retried_by_the_next_tick(records):
    """create_or_update raises after the record was written: the error surfaces and the next tick submits."""
    jobs = FakeJobs()

    def refused(job):
        raise ConnectionError("503")

    submitter = AmlSubmitter(
        SimpleNamespace(jobs=SimpleNamespace(get=jobs.get, create_or_update=refused)), SETTINGS, records
    )
    with pytest.raises(ConnectionError):
        submitter.submit_unless_active("tick-aaaa", NOW)
    retried = _submitter(jobs, records).submit_unless_active("tick-bbbb", NOW + dt.timedelta(minutes=15))
    assert retried.submitted and retried.job_name.endswith("-bbbb")


@pytest.mark.integration
@pytest.mark.parametrize(
    "stored", [b"{not json", b"[]", b'{"job_name": "x"}', b'{"job_name": "x", "submitted_at": "no"}']
)
def test_an_unreadable_record_is_replaced(records, stored):
    """A corrupt record blob never blocks training: the tick submits and writes a good record over it."""
    records.blob.upload_blob(stored, overwrite=True)
    jobs = FakeJobs()
    found = _submitter(jobs, records).submit_unless_active("tick-aaaa", NOW)
    assert found.submitted and records.read("t").record == JobRecord(found.job_name, "tick-aaaa", NOW, FULL, NOW)


def _command_mode(job) -> str:
    return job._to_job()._to_dict()["command"].rsplit(" --mode ", 1)[1]


@pytest.mark.integration
def test_full_retrains_run_on_their_own_schedule_recorded_before_each_submission(records):
    """First tick: full; then warm while the last full is younger than TRAINING_FULL_EVERY_HOURS; then full again."""
    jobs = FakeJobs()
    submitter = _submitter(jobs, records)
    modes, recorded = [], []
    for hours in (0, 1, 23.75, 24, 25):
        at = NOW + dt.timedelta(hours=hours)
        for job in jobs.created:
            jobs.states[job.name] = "Completed"
        found = submitter.submit_unless_active(f"tick-{int(hours * 60):04d}", at)
        assert found.submitted
        modes.append(_command_mode(jobs.created[-1]))
        record = records.read("t").record
        recorded.append((record.mode, record.last_full_at))
    full_again = NOW + dt.timedelta(hours=24)
    assert modes == ["full", "warm", "warm", "full", "warm"]
    assert recorded == [
        ("full", NOW),
        ("warm", NOW),
        ("warm", NOW),
        ("full", full_again),
        ("warm", full_again),
    ]
    assert [j.tags["mode"] for j in jobs.created] == modes


@pytest.mark.integration
def test_the_full_retrain_is_recorded_even_when_its_submission_fails(records):
    """The record (with the full retrain's time) is written before submitting: a failed full one is not retried full."""
    jobs = FakeJobs()

    def refused(job):
        raise ConnectionError("503")

    failing = AmlSubmitter(
        SimpleNamespace(jobs=SimpleNamespace(get=jobs.get, create_or_update=refused)), SETTINGS, records
    )
    with pytest.raises(ConnectionError):
        failing.submit_unless_active("tick-aaaa", NOW)
    assert records.read("t").record.last_full_at == NOW
    retried = _submitter(jobs, records).submit_unless_active("tick-bbbb", NOW + dt.timedelta(minutes=15))
    assert retried.submitted and _command_mode(jobs.created[-1]) == "warm"


@pytest.mark.integration
def test_a_tick_that_loses_the_record_race_submits_nothing(records):
    """Another tick replaced the record between this tick's read and write: only the other submits."""
    jobs = FakeJobs()
    submitter = _submitter(jobs, records)
    real_read = records.read

    def read_then_overtaken(tick_id):
        stored = real_read(tick_id)
        records.blob.upload_blob(encode_record(JobRecord("other", "tick-other", NOW)), overwrite=True)
        return stored

    records.read = read_then_overtaken
    found = submitter.submit_unless_active("tick-aaaa", NOW)
    assert (found.submitted, jobs.created) == (False, [])


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("Running", "Running"),
        (None, MISSING),  # FakeJobs raises ResourceNotFoundError for a job it has no state for
        ("", None),  # a job without a status
        ("parse", None),  # the SDK cannot read the job it got
        ("unknown type", None),  # a job type this SDK does not know
    ],
)
def test_job_status_reads_one_job(state, expected):
    """jobs.get's answer as a state: a status, MISSING for a 404, None when the job cannot be read."""
    from azure.ai.ml.exceptions import ErrorCategory, JobException, JobParsingError

    errors = {
        "parse": JobParsingError(
            message="bad", no_personal_data_message="bad", error_category=ErrorCategory.SYSTEM_ERROR
        ),
        "unknown type": JobException(message="Unsupported job type", no_personal_data_message="x"),
    }
    jobs = FakeJobs()
    if state is not None:
        jobs.states["j"] = errors.get(state, state)
    assert AmlSubmitter(SimpleNamespace(jobs=jobs), SETTINGS, None).job_status("j", "tick-1") == expected


RECORD = JobRecord("j", "tick-1", NOW)
LIMIT = 7200


@pytest.mark.parametrize(
    ("record", "status", "now", "expected"),
    [
        (None, None, NOW, (True, "no job recorded")),
        (RECORD, MISSING, NOW, (True, "job j was recorded but never created")),
        (RECORD, "Completed", NOW, (True, "job j ended Completed")),
        (RECORD, "Failed", NOW, (True, "job j ended Failed")),
        (RECORD, "Canceled", NOW, (True, "job j ended Canceled")),
        (RECORD, "Running", NOW, (False, "job j is still active (Running)")),
        (RECORD, "NotResponding", NOW, (False, "job j is still active (NotResponding)")),
        (RECORD, "CancelRequested", NOW, (False, "job j is still active (CancelRequested)")),
        # unreadable or unknown: active until the limit and the grace have passed, then submit
        (
            RECORD,
            None,
            NOW + dt.timedelta(seconds=LIMIT + 3599),
            (False, "job j's state (None) is unknown; it counts as active until 2026-11-03T18:30Z"),
        ),
        (
            RECORD,
            None,
            NOW + dt.timedelta(seconds=LIMIT + 3600),
            (True, "job j's state (None) is unknown and its time limit has passed"),
        ),
        (
            RECORD,
            "Unknown",
            NOW,
            (False, "job j's state (Unknown) is unknown; it counts as active until 2026-11-03T18:30Z"),
        ),
    ],
)
def test_should_submit(record, status, now, expected):
    """The single-flight decision from the recorded job and its state."""
    assert should_submit(record, status, now, LIMIT) == expected


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", "^not JSON: "),
        (b"3", "^not a JSON object$"),
        (b'{"job_name": "", "submitted_at": "2026-11-03T15:30:00+00:00"}', "^job_name missing$"),
        (b'{"job_name": 7, "submitted_at": "2026-11-03T15:30:00+00:00"}', "^job_name missing$"),
        (b'{"job_name": "j"}', "^submitted_at missing$"),
        (b'{"job_name": "j", "submitted_at": "yesterday"}', "^submitted_at 'yesterday' is not an ISO time$"),
        (b'{"job_name": "j", "submitted_at": "2026-11-03T15:30:00"}', "^submitted_at has no time zone$"),
    ],
)
def test_decode_record_rejects(data, error):
    """Each malformed record names what is wrong."""
    with pytest.raises(ValueError, match=error):
        decode_record(data)


@pytest.mark.parametrize(
    ("extra", "mode", "last_full_at"),
    [
        ("", WARM, None),  # a record written before modes: no full retrain known
        (', "mode": "full", "last_full_at": "2026-11-03T14:30:00+00:00"', FULL, NOW - dt.timedelta(hours=1)),
        (', "mode": "cold", "last_full_at": "yesterday"', WARM, None),  # odd values read as unknown
        (', "mode": 3, "last_full_at": "2026-11-03T14:30:00"', WARM, None),  # no time zone: unknown
    ],
)
def test_decode_record_reads_the_mode_and_the_last_full_retrain(extra, mode, last_full_at):
    """Mode and last full retrain are read when valid; missing or odd ones never make a record unreadable."""
    data = b'{"job_name": "j", "tick": "tick-1", "submitted_at": "2026-11-03T15:30:00+00:00"' + extra.encode() + b"}"
    assert decode_record(data) == JobRecord("j", "tick-1", NOW, mode, last_full_at)


EVERY = dt.timedelta(hours=24)
WAITING = "the last full retrain was submitted at 2026-11-03T15:30Z; the next is due at 2026-11-04T15:30Z"


@pytest.mark.parametrize(
    ("last_full_at", "now", "expected"),
    [
        (None, NOW, (FULL, "no full retrain recorded")),
        (
            NOW,
            NOW,
            (WARM, WAITING),
        ),
        (
            NOW,
            NOW + EVERY - dt.timedelta(seconds=1),
            (WARM, WAITING),
        ),
        (NOW, NOW + EVERY, (FULL, "the last full retrain was submitted at 2026-11-03T15:30Z, 24 h or more ago")),
        (NOW, NOW + 3 * EVERY, (FULL, "the last full retrain was submitted at 2026-11-03T15:30Z, 24 h or more ago")),
        (
            NOW + dt.timedelta(minutes=1),  # no tick could have written it: it must not hold off full retrains
            NOW,
            (FULL, "the last full retrain is recorded at 2026-11-03T15:31Z, after now"),
        ),
    ],
)
def test_training_mode(last_full_at, now, expected):
    """Full when no full retrain was submitted within the setting's hours, else warm; each with its reason."""
    assert training_mode(last_full_at, now, EVERY) == expected


def test_the_full_retrain_schedule_is_a_setting_of_whole_hours():
    """TRAINING_FULL_EVERY_HOURS: 24 by default, a positive integer when set."""
    assert SETTINGS.training_full_every_hours == 24
    assert load_settings({**AML_APP_SETTINGS, "TRAINING_FULL_EVERY_HOURS": "6"}).training_full_every_hours == 6
    with pytest.raises(SettingsError, match="TRAINING_FULL_EVERY_HOURS='0'"):
        load_settings({**AML_APP_SETTINGS, "TRAINING_FULL_EVERY_HOURS": "0"})


@pytest.mark.parametrize(("tick", "expected"), [('"tick-1"', "tick-1"), ("5", ""), ("null", "")])
def test_decode_record_keeps_only_a_string_tick(tick, expected):
    """The tick is informative: a missing or odd one reads as empty, never as an error."""
    data = b'{"job_name": "j", "submitted_at": "2026-11-03T15:30:00+00:00", "tick": ' + tick.encode() + b"}"
    assert decode_record(data) == JobRecord("j", expected, NOW)


def test_record_round_trips_and_names_are_unique_per_tick():
    """What is written reads back; two ticks in the same second get different job names."""
    assert decode_record(encode_record(RECORD)) == RECORD
    full = JobRecord("j", "tick-1", NOW, FULL, NOW - dt.timedelta(hours=1))
    assert decode_record(encode_record(full)) == full
    assert job_name(NOW, "tick-0123456789abcdef") == "stockcast-train-20261103-153000-0123456789ab"
    assert job_name(NOW, "tick-a") != job_name(NOW, "tick-b")


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
