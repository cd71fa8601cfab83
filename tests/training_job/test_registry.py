"""Roles by alias on a real MLflow registry, and the tag fallback where aliases are refused."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from training_job.registry import CHALLENGER, CHAMPION, ModelRegistry

pytestmark = pytest.mark.integration


class NoAliasClient(MlflowClient):
    """A registry that refuses aliases, as the Azure ML registry may."""

    def set_registered_model_alias(self, *args, **kwargs):
        """Refuse."""
        raise MlflowException("aliases are not supported by this registry", error_code="ENDPOINT_NOT_FOUND")

    def get_model_version_by_alias(self, *args, **kwargs):
        """Refuse."""
        raise MlflowException("aliases are not supported by this registry", error_code="ENDPOINT_NOT_FOUND")


@pytest.fixture
def client(tmp_path):
    return MlflowClient(f"sqlite:///{tmp_path}/registry.db")


@pytest.mark.parametrize("client_class", [MlflowClient, NoAliasClient])
def test_roles_move_like_aliases(tmp_path, client_class):
    """Champion moves only on promotion; challenger always marks the newest version."""
    registry = ModelRegistry(client_class(f"sqlite:///{tmp_path}/registry.db"), "m")
    assert registry.version_for(CHAMPION) is None
    v1 = registry.register(str(tmp_path / "a"), run_id=None, tags={})
    registry.assign(CHALLENGER, v1)
    registry.assign(CHAMPION, v1)
    v2 = registry.register(str(tmp_path / "b"), run_id=None, tags={})
    registry.assign(CHALLENGER, v2)  # retained
    assert (registry.version_for(CHAMPION), registry.version_for(CHALLENGER)) == ("1", "2")
    v3 = registry.register(str(tmp_path / "c"), run_id=None, tags={})
    registry.assign(CHALLENGER, v3)
    registry.assign(CHAMPION, v3)  # promoted
    assert (registry.version_for(CHAMPION), registry.version_for(CHALLENGER)) == ("3", "3")
    assert registry.uses_tags is (client_class is NoAliasClient)


def test_tag_fallback_writes_role_tags(tmp_path):
    """Without aliases each version carries role=champion|challenger|retired."""
    client = NoAliasClient(f"sqlite:///{tmp_path}/registry.db")
    registry = ModelRegistry(client, "m")
    for promote in (True, False, True):
        v = registry.register(str(tmp_path), run_id=None, tags={})
        registry.assign(CHALLENGER, v)
        if promote:
            registry.assign(CHAMPION, v)
    roles = {v: client.get_model_version("m", v).tags.get("role") for v in ("1", "2", "3")}
    assert roles == {"1": "retired", "2": "retired", "3": "champion"}
