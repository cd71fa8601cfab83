"""Roles on a real MLflow registry (SQLite), and again through a stand-in that refuses what Azure ML's refuses."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tests.training_job import azureml_mlflow
from training_job.registry import CHALLENGER, CHAMPION, KIND_TAG, PERSISTENCE, ModelRegistry

pytestmark = pytest.mark.integration

MLFLOW, AZUREML, AZUREML_ALIASES = "mlflow", "azureml", "azureml+aliases"


@dataclass
class Registry:
    """A client on a fresh store, the run that versions are registered from, and which backend it is."""

    backend: str
    client: MlflowClient
    run_id: str
    artifact_uri: str

    def roles(self, name: str = "m") -> ModelRegistry:
        return ModelRegistry(self.client, name)

    def register(self, roles: ModelRegistry, path: str, tags: dict[str, str] | None = None) -> str:
        """Register the run's artifacts under ``path``, as train.py does."""
        return roles.register(f"{self.artifact_uri}/{path}", self.run_id, tags or {})


def _client(backend: str, tmp_path) -> MlflowClient:
    db = tmp_path / "registry.db"
    if backend == MLFLOW:
        return MlflowClient(f"sqlite:///{db}")
    uri = azureml_mlflow.registry_uri(db, aliases=backend == AZUREML_ALIASES)
    return MlflowClient(f"sqlite:///{db}", registry_uri=uri)


@pytest.fixture(params=[MLFLOW, AZUREML, AZUREML_ALIASES])
def registry(request, tmp_path) -> Registry:
    """Plain MLflow, the Azure ML stand-in refusing aliases, and the stand-in accepting them."""
    client = _client(request.param, tmp_path)
    experiment = client.create_experiment("tests", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(experiment)
    return Registry(request.param, client, run.info.run_id, run.info.artifact_uri)


def test_roles_move_like_aliases(registry):
    """Champion moves only on promotion; challenger always marks the newest version."""
    roles = registry.roles()
    assert roles.version_for(CHAMPION) is None
    v1 = registry.register(roles, "a")
    roles.assign(CHALLENGER, v1)
    roles.assign(CHAMPION, v1)
    v2 = registry.register(roles, "b")
    roles.assign(CHALLENGER, v2)  # retained
    assert (roles.version_for(CHAMPION), roles.version_for(CHALLENGER)) == ("1", "2")
    v3 = registry.register(roles, "c")
    roles.assign(CHALLENGER, v3)
    roles.assign(CHAMPION, v3)  # promoted
    assert (roles.version_for(CHAMPION), roles.version_for(CHALLENGER)) == ("3", "3")
    assert roles.uses_tags is (registry.backend == AZUREML)


def test_role_tags_are_written_on_every_backend(registry):
    """Each version carries role=champion|challenger|retired, with or without aliases."""
    roles = registry.roles()
    for i, promote in enumerate((True, False, True)):
        v = registry.register(roles, f"v{i}")
        roles.assign(CHALLENGER, v)
        if promote:
            roles.assign(CHAMPION, v)
    tags = {v: registry.client.get_model_version("m", v).tags.get("role") for v in ("1", "2", "3")}
    assert tags == {"1": "retired", "2": "retired", "3": "champion"}


def test_a_training_run_s_registry_calls_fit_the_subset(registry):
    """train.run's sequence: persistence first, a retained version, a promotion, a demotion back to persistence."""
    roles = registry.roles()
    assert roles.persistence_version() is None
    persistence = registry.register(roles, "persistence_model", {KIND_TAG: PERSISTENCE, "interval_q": "1.5"})
    assert roles.version_for(CHAMPION) is None
    roles.assign(CHAMPION, persistence)
    for path, champion_after in (("model-1", "1"), ("model-2", "3"), ("model-3", "1")):
        champion = roles.version_for(CHAMPION) or roles.persistence_version()
        assert roles.kind_of(champion) in (PERSISTENCE, "lstm_attention")
        version = registry.register(roles, path, {KIND_TAG: "lstm_attention", "decision": "-"})
        roles.assign(CHALLENGER, version)
        if champion_after != champion or roles.version_for(CHAMPION) != champion_after:
            roles.assign(CHAMPION, champion_after)
        assert (roles.version_for(CHAMPION), roles.version_for(CHALLENGER)) == (champion_after, version)
    assert roles.persistence_version() == "1" and roles.kind_of("4") == "lstm_attention"
    assert roles.role_of("1") == CHAMPION and roles.role_of("4") == CHALLENGER


def test_persistence_is_found_past_the_first_page(registry):
    """The oldest version is on the last page of a search (the stand-in answers two a page); it is still found."""
    roles = registry.roles()
    registry.register(roles, "persistence_model", {KIND_TAG: PERSISTENCE})
    for i in range(3):
        registry.register(roles, f"model-{i}", {KIND_TAG: "lstm_attention"})
    assert roles.persistence_version() == "1"


def test_the_newest_version_with_a_tag_is_found_by_comparing_tags_here(registry):
    """The newest version carrying a tag, past the first page and past newer versions without it, with its tags."""
    roles = registry.roles()
    assert roles.newest_tagged("evidence") is None
    registry.register(roles, "persistence_model", {KIND_TAG: PERSISTENCE})
    for i, record in enumerate(('{"a":1}', '{"a":2}', None)):
        registry.register(roles, f"model-{i}", {KIND_TAG: "lstm_attention", **({"evidence": record} if record else {})})
    assert roles.newest_tagged("evidence") == ("3", {KIND_TAG: "lstm_attention", "evidence": '{"a":2}'})
    assert roles.newest_tagged(KIND_TAG)[0] == "4" and roles.newest_tagged("absent") is None


def test_a_version_of_an_unknown_run_is_refused_by_the_stand_in(tmp_path):
    """Azure ML registers only from a run of its own workspace (or an upload), so the stand-in does too."""
    client = _client(AZUREML, tmp_path)
    roles = ModelRegistry(client, "m")
    with pytest.raises(MlflowException, match="Provided model source") as refused:
        roles.register(str(tmp_path / "model"), run_id=None, tags={})
    assert refused.value.error_code == "INVALID_PARAMETER_VALUE"


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.search_model_versions("name='m' and tag.role='champion'"),
        lambda c: c.search_model_versions("tags.kind='persistence'"),
        lambda c: c.search_model_versions("name LIKE 'm%'"),
        lambda c: c.search_model_versions("name='m'", order_by=["version_number DESC"]),
        lambda c: c.search_registered_models(),  # MLflow 3 adds a prompt tag filter
        lambda c: c.search_registered_models("name='m'"),
        lambda c: c.rename_registered_model("m", "n"),
        lambda c: c.delete_registered_model("m"),
    ],
    ids=["tag-and-name", "tag", "like", "order-by", "models", "models-by-name", "rename", "delete"],
)
def test_the_stand_in_refuses_what_azure_ml_does_not_support(tmp_path, call):
    """A tag filter, LIKE, a model search, renaming or deleting a model: INVALID_PARAMETER_VALUE, as Azure ML."""
    client = _client(AZUREML, tmp_path)
    client.create_registered_model("m")
    with pytest.raises(MlflowException) as refused:
        call(client)
    assert refused.value.error_code == "INVALID_PARAMETER_VALUE"


def test_the_stand_in_refuses_aliases_unless_asked_and_accepts_a_name_search(tmp_path):
    """Aliases answer 404 (ENDPOINT_NOT_FOUND); a search by name alone goes through."""
    client = _client(AZUREML, tmp_path)
    client.create_registered_model("m")
    for call in (
        lambda: client.set_registered_model_alias("m", CHAMPION, "1"),
        lambda: client.get_model_version_by_alias("m", CHAMPION),
        lambda: client.delete_registered_model_alias("m", CHAMPION),
    ):
        with pytest.raises(MlflowException) as refused:
            call()
        assert refused.value.error_code == "ENDPOINT_NOT_FOUND"
    assert list(client.search_model_versions("name='m'")) == []
