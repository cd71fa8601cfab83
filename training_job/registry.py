"""Model versions and their roles: the ``champion`` and ``challenger`` aliases.

Every role is also written as a version tag ``role=champion|challenger|retired``: where the
registry refuses aliases (the Azure ML registry may) the tags alone carry the roles, and the
Function App's Azure ML rollout reads them through azure-ai-ml, which does not see MLflow aliases.

Only calls that Azure ML's MLflow registry supports are made (its support matrix:
https://learn.microsoft.com/azure/machine-learning/how-to-manage-models-mlflow): get and create the
registered model, create a version from the run's own artifacts, get a version, set version tags,
and search versions by name alone. It refuses searches by tag, so versions are found by name and
their tags compared here; aliases are not in the matrix, so each alias call may be refused.
"""

from __future__ import annotations

import logging

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
ROLE_TAG = "role"
KIND_TAG = "kind"
PERSISTENCE = "persistence"
DEFAULT_KIND = "lstm_attention"  # versions registered before kinds were tagged


class ModelRegistry:
    """Roles of the versions of one registered model."""

    def __init__(self, client: MlflowClient, name: str) -> None:
        self.client = client
        self.name = name
        self.uses_tags = False

    def register(self, source: str, run_id: str, tags: dict[str, str]) -> str:
        """Register ``source`` as a new version; return its version number."""
        try:
            self.client.get_registered_model(self.name)
        except MlflowException:
            self.client.create_registered_model(self.name)
        version = self.client.create_model_version(self.name, source, run_id=run_id, tags=tags)
        return str(version.version)

    def assign(self, role: str, version: str) -> None:
        """Give ``role`` to ``version``, taking it from any other version."""
        if not self.uses_tags:
            try:
                self.client.set_registered_model_alias(self.name, role, version)
            except MlflowException as exc:
                log.warning("model=%s registry refuses aliases (%s); using version tags", self.name, exc)
                self.uses_tags = True
        for other in self._with_role(role):
            if other != version:
                self.client.set_model_version_tag(self.name, other, ROLE_TAG, "retired")
        if self.role_of(version) != CHAMPION:  # a champion stays tagged champion when it is also the challenger
            self.client.set_model_version_tag(self.name, version, ROLE_TAG, role)

    def version_for(self, role: str) -> str | None:
        """The version that holds ``role``, if any."""
        if not self.uses_tags:
            try:
                return str(self.client.get_model_version_by_alias(self.name, role).version)
            except MlflowException as exc:  # no such alias yet, or no aliases at all: tags may know
                log.info("model=%s alias %s not found (%s)", self.name, role, exc.error_code)
        versions = self._with_role(role)
        if role == CHALLENGER and not versions:  # the champion tag also marks the newest challenger
            versions = self._with_role(CHAMPION)
        return max(versions, key=int) if versions else None

    def kind_of(self, version: str) -> str:
        """What ``version`` is (``persistence`` or a trained kind), from its ``kind`` tag."""
        return self.tags_of(version).get(KIND_TAG, DEFAULT_KIND)

    def tags_of(self, version: str) -> dict[str, str]:
        """Every tag of ``version`` (one read: its kind, roles and what a warm start is decided on)."""
        return dict(self.client.get_model_version(self.name, version).tags)

    def persistence_version(self) -> str | None:
        """The newest version tagged ``kind=persistence``, if any."""
        return max(self._tagged(KIND_TAG, PERSISTENCE), key=int, default=None)

    def newest_tagged(self, key: str) -> tuple[str, dict[str, str]] | None:
        """The newest version that has a tag ``key``, with all its tags; None if none has."""
        tagged = [v for v in self._versions() if key in v.tags]
        newest = max(tagged, key=lambda v: int(v.version), default=None)
        return None if newest is None else (str(newest.version), dict(newest.tags))

    def role_of(self, version: str) -> str | None:
        """The role tag of ``version`` (tag mode)."""
        return self.client.get_model_version(self.name, version).tags.get(ROLE_TAG)

    def _exists(self) -> bool:
        try:
            self.client.get_registered_model(self.name)
            return True
        except MlflowException:
            return False

    def _with_role(self, role: str) -> list[str]:
        return self._tagged(ROLE_TAG, role)

    def _tagged(self, key: str, value: str) -> list[str]:
        """The versions whose tag ``key`` is ``value``, compared here: Azure ML refuses tag filters."""
        return [str(v.version) for v in self._versions() if v.tags.get(key) == value]

    def _versions(self) -> list[ModelVersion]:
        """Every version of the model, searched by name alone and read page by page."""
        if not self._exists():
            return []
        found: list[ModelVersion] = []
        token = None
        while True:
            page = self.client.search_model_versions(f"name='{self.name}'", page_token=token)
            found.extend(page)
            token = page.token
            if not token:
                return found
