"""Azure ML rollout: blue/green on the Kubernetes online endpoint, one step per tick if need be.

Every tick reads the state from the endpoint itself (its deployments and traffic) and the
champion from the registry, plans the next step with the pure :func:`plan`, and carries it out.
A crash between steps is finished by the next tick; a deployment whose smoke request fails never
gets traffic. At most :data:`MAX_DEPLOYMENTS` deployments exist at once (the one serving and the
new one): the AKS node pool is sized for that many pods of the instance type.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from functions.settings import Settings
from functions.train_trigger.aml_jobs import CONDA_FILE, TRAINING_CODE
from functions.train_trigger.ports import ModelSnapshot, ModelVersion

log = logging.getLogger(__name__)
SMOKE_FAILED_TAG = "smoke_failed"
# The serving deployment and the new one during a swap; tests/infra/test_serving.py checks that this
# many pods of the instance type (bicep/hooks/instancetype.yaml) fit on the default AKS node pool.
MAX_DEPLOYMENTS = 2
BUSY_STATES = ("Creating", "Updating", "Deleting")


@dataclass(frozen=True)
class Deployment:
    """What the rollout needs to know of one deployment."""

    name: str
    version: str | None
    state: str  # provisioning state: Creating, Updating, Succeeded, Failed, Deleting


@dataclass(frozen=True)
class EndpointState:
    """Deployments and traffic of the endpoint, and versions whose smoke request failed."""

    deployments: dict[str, Deployment]
    traffic: dict[str, int]
    smoke_failed: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Step:
    """The next thing to do: create, wait, smoke_and_shift, delete, done or blocked."""

    action: str
    deployment: str | None = None
    version: str | None = None
    others: tuple[str, ...] = ()
    reason: str = ""


def deployment_name(version: str) -> str:
    """Deployment name for a model version (names are per endpoint; Azure ML wants 3-32 characters)."""
    return f"model-v{version}"


def plan(state: EndpointState, champion: str | None) -> Step:
    """Decide the next rollout step from the endpoint's state and the champion's version."""
    if champion is None:
        return Step("blocked", reason="no champion yet")
    target = deployment_name(champion)
    others = tuple(sorted(n for n, d in state.deployments.items() if n != target and d.state != "Deleting"))
    current = state.deployments.get(target)
    if current is None:
        if champion in state.smoke_failed:
            return Step("blocked", target, champion, reason=f"v{champion} failed its smoke request")
        # Room first: deployments without traffic (an older challenger, one whose smoke request failed)
        # go before a new one is created, so a swap never runs more than MAX_DEPLOYMENTS pods.
        idle = {n: d for n, d in state.deployments.items() if n != target and state.traffic.get(n, 0) == 0}
        busy = sorted(n for n, d in idle.items() if d.state in BUSY_STATES)
        if busy:
            return Step("wait", target, champion, tuple(busy), reason=f"{', '.join(busy)} busy; room first")
        if idle:
            return Step("delete", target, champion, tuple(sorted(idle)), reason="idle deployments make room")
        return Step("create", target, champion, reason="champion has no deployment")
    if current.state in ("Creating", "Updating"):
        return Step("wait", target, champion, reason=f"deployment {current.state.lower()}")
    if current.state != "Succeeded":
        return Step("blocked", target, champion, others, reason=f"deployment {current.state}; it gets no traffic")
    if state.traffic.get(target, 0) < 100:
        if champion in state.smoke_failed:
            return Step("blocked", target, champion, reason=f"v{champion} failed its smoke request")
        return Step("smoke_and_shift", target, champion, others, reason="healthy, not yet serving")
    if others:
        return Step("delete", target, champion, others, reason="old deployments hold no traffic")
    return Step("done", target, champion, reason=f"serving v{champion}")


def scoring_worker_environment(workers: int) -> dict[str, str]:
    """The scoring server's worker count, and one TensorFlow thread per worker so they never fight for CPUs.

    A single-window forecast gains nothing from intra-op threads; ``workers`` processes each with
    the default thread pools (one thread per CPU) oversubscribed the instance.
    """
    return {
        "WORKER_COUNT": str(workers),
        "TF_NUM_INTRAOP_THREADS": "1",
        "TF_NUM_INTEROP_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }


def build_deployment(settings: Settings, version: str) -> Any:
    """The Kubernetes online deployment of one model version (the request sent to Azure ML)."""
    from azure.ai.ml.entities import (
        CodeConfiguration,
        Environment,
        KubernetesOnlineDeployment,
        OnlineRequestSettings,
        ProbeSettings,
    )

    return KubernetesOnlineDeployment(
        name=deployment_name(version),
        endpoint_name=settings.aml_endpoint,
        model=f"azureml:{settings.model_name}:{version}",
        code_configuration=CodeConfiguration(code=str(TRAINING_CODE), scoring_script="score.py"),
        environment=Environment(image=settings.aml_environment_image, conda_file=str(CONDA_FILE)),
        instance_type=settings.aml_instance_type,
        instance_count=1,
        environment_variables={
            "STOCKCAST_MODEL_NAME": settings.model_name,
            "STOCKCAST_MODEL_VERSION": version,
            **scoring_worker_environment(settings.scoring_workers),
        },
        request_settings=OnlineRequestSettings(request_timeout_ms=5000, max_concurrent_requests_per_instance=4),
        liveness_probe=ProbeSettings(initial_delay=30, period=10, timeout=2, failure_threshold=5),
        readiness_probe=ProbeSettings(initial_delay=10, period=5, timeout=2, failure_threshold=3),
        # No resources section: the instance type's requests and limits apply as they are (a deployment's
        # own limits would have to stay below the instance type's, and Azure ML wants 2 CPU / 4 GiB
        # requested for an MLflow model), so bicep/hooks/instancetype.yaml is the one place that sizes it.
        tags={"app": "stockcast", "model_version": version},
    )


def smoke_request(bars_needed: int = 80, symbol: str = "SMOKE") -> dict:
    """A request the scoring script must answer with a finite forecast: a smooth synthetic session."""
    ts0 = 1_767_364_200  # a 09:30 New York open; any contiguous minutes do
    close = 100 * np.exp(np.cumsum(np.sin(np.arange(bars_needed) / 7) * 0.001))
    return {
        "bars": [
            {
                "symbol": symbol,
                "ts": ts0 + 60 * i,
                "open": float(c),
                "high": float(c) * 1.0005,
                "low": float(c) * 0.9995,
                "close": float(c),
                "volume": 1000 + i,
            }
            for i, c in enumerate(close)
        ]
    }


def smoke_passed(response: str | bytes | dict) -> bool:
    """Whether a smoke response holds one finite forecast."""
    body = json.loads(response) if isinstance(response, (str, bytes)) else response
    try:
        value = float(body["forecasts"][0]["predicted_close"])
    except (KeyError, IndexError, TypeError, ValueError):
        return False
    return bool(np.isfinite(value)) and value > 0


class AmlRollout:
    """Carries out :func:`plan` with an MLClient."""

    def __init__(self, ml_client: Any, settings: Settings) -> None:
        self.ml_client = ml_client
        self.settings = settings

    def champion(self) -> str | None:
        """The version tagged ``role=champion`` (the training job writes the tag with the alias)."""
        found = AmlModels(self.ml_client, self.settings).snapshot().champion
        return found.version if found else None

    def state(self) -> tuple[Any, EndpointState]:
        """The endpoint object and the state the plan needs."""
        endpoint = self.ml_client.online_endpoints.get(self.settings.aml_endpoint)
        deployments = {
            d.name: Deployment(d.name, (d.tags or {}).get("model_version"), d.provisioning_state)
            for d in self.ml_client.online_deployments.list(self.settings.aml_endpoint)
        }
        failed = frozenset(v for v in (endpoint.tags or {}).get(SMOKE_FAILED_TAG, "").split(",") if v)
        return endpoint, EndpointState(deployments, dict(endpoint.traffic or {}), failed)

    def reconcile(self, tick_id: str) -> str:
        """Take the next step(s) towards serving the champion; returns what was done."""
        done = []
        for _ in range(3):  # at most create, or smoke+shift then delete, in one tick
            endpoint, state = self.state()
            step = plan(state, self.champion())
            log.info("tick=%s rollout step=%s deployment=%s %s", tick_id, step.action, step.deployment, step.reason)
            done.append(f"{step.action}: {step.reason}")
            if step.action == "create":
                self.ml_client.online_deployments.begin_create_or_update(
                    build_deployment(self.settings, str(step.version))
                )
                break
            if step.action == "smoke_and_shift":
                if not self._smoke(step):
                    tags = dict(endpoint.tags or {})
                    tags[SMOKE_FAILED_TAG] = ",".join(sorted(state.smoke_failed | {str(step.version)}))
                    endpoint.tags = tags
                    self.ml_client.online_endpoints.begin_create_or_update(endpoint).result()
                    done.append(f"smoke request failed for {step.deployment}: no traffic")
                    break
                endpoint.traffic = {step.deployment: 100, **{n: 0 for n in step.others}}
                self.ml_client.online_endpoints.begin_create_or_update(endpoint).result()
                continue
            if step.action == "delete":
                for name in step.others:
                    self.ml_client.online_deployments.begin_delete(name=name, endpoint_name=self.settings.aml_endpoint)
            break
        return "; ".join(done)

    def _smoke(self, step: Step) -> bool:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
            json.dump(smoke_request(), fh)
        try:
            response = self.ml_client.online_endpoints.invoke(
                endpoint_name=self.settings.aml_endpoint, request_file=fh.name, deployment_name=step.deployment
            )
        except Exception as exc:  # any failure of the call is a failed smoke test
            log.warning("smoke request to %s failed: %s", step.deployment, exc)
            return False
        return smoke_passed(response)


def _version_number(version: str) -> int:
    return int(version) if str(version).isdigit() else -1


class AmlModels:
    """The champion and the newest version from the workspace registry, with azure-ai-ml alone."""

    def __init__(self, ml_client: Any, settings: Settings) -> None:
        self.ml_client = ml_client
        self.settings = settings

    def snapshot(self) -> ModelSnapshot:
        """One ``models.list`` call: each listed version carries its tags (the role and the decision)."""
        listed = [
            ModelVersion(str(m.version), dict(m.tags or {}))
            for m in self.ml_client.models.list(name=self.settings.model_name)
        ]
        champions = [m for m in listed if m.tags.get("role") == "champion"]
        newest = max(listed, key=lambda m: _version_number(m.version), default=None)
        champion = max(champions, key=lambda m: _version_number(m.version), default=None)
        return ModelSnapshot(champion, newest)
