"""A local MLflow registry that refuses what Azure ML's MLflow registry does not support.

azureml-mlflow sends every registry call through MLflow's own REST store, so Azure ML answers the
MLflow protocol, but only part of it. Its support matrix ("Review supported capabilities for
managing models", https://learn.microsoft.com/azure/machine-learning/how-to-manage-models-mlflow)
marks as unsupported: searching registered models by tag or with ``LIKE``/``ILIKE``, registering
from another workspace's run, renaming or deleting a registered model (they are immutable). It does
not list aliases at all. This stand-in is MLflow's SQLite registry behind a URI scheme of its own
(``azureml-sim:///path/to.db``) that refuses all of that, and the search forms that neither the
matrix nor Microsoft's examples show, the way the service does:

- a search filter other than ``name = '...'``, an ``order_by`` on versions: ``INVALID_PARAMETER_VALUE``
  with the service's message, as quoted in
  https://github.com/Azure/azure-sdk-for-python/issues/42155. MLflow 3's client adds
  ``tag.`mlflow.prompt.is_prompt` != 'true'`` to every ``search_registered_models``, so that call is
  refused whatever its filter, as it is on Azure ML;
- a version whose source is neither the artifacts of its ``run_id`` in this workspace (what
  ``mlflow.register_model("runs:/...")`` sends) nor an upload: ``INVALID_PARAMETER_VALUE`` with the
  service's message, as quoted in https://github.com/mlflow/mlflow/issues/15329;
- renaming, deleting, editing or tagging a registered model, and registering a logged model
  (``model_id``: Azure ML's tracking server answers MLflow's logged-models endpoint with a 404):
  ``INVALID_PARAMETER_VALUE``;
- alias calls, unless the scheme is ``azureml-sim+aliases``: the 404 of an endpoint the server does
  not have, as MLflow's REST client reports it (``ENDPOINT_NOT_FOUND``);
- version searches answer at most two versions a page, with a token for the rest, as any paged
  server may.

Point a client at it with ``MlflowClient(sqlite_uri, registry_uri=registry_uri(db))``.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import ENDPOINT_NOT_FOUND, INVALID_PARAMETER_VALUE
from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository
from mlflow.store.model_registry import SEARCH_MODEL_VERSION_MAX_RESULTS_DEFAULT as VERSIONS_MAX
from mlflow.store.model_registry import SEARCH_REGISTERED_MODEL_MAX_RESULTS_DEFAULT as MODELS_MAX
from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore
from mlflow.tracking._model_registry.utils import _get_store_registry
from mlflow.tracking._tracking_service.utils import _get_store as _get_tracking_store
from mlflow.utils.search_utils import SearchModelUtils, SearchModelVersionUtils

DOCS = "https://learn.microsoft.com/azure/machine-learning/how-to-manage-models-mlflow"
SCHEME = "azureml-sim"
SCHEME_WITH_ALIASES = "azureml-sim+aliases"
PAGE_SIZE = 2
REGISTERED_MODEL_ORDER_BY = {"name", "version", "creation_timestamp", "last_updated_timestamp"}


def registry_uri(db: Path, aliases: bool = False) -> str:
    """The stand-in's registry URI over the SQLite file ``db``; ``aliases`` lets alias calls through."""
    return f"{SCHEME_WITH_ALIASES if aliases else SCHEME}:///{Path(db).resolve()}"


def _unsupported_filter(filter_string: str | None) -> MlflowException:
    return MlflowException(
        "Currently unsupported filter string format (we currently do not support OR). "
        f"Provided filter string: {filter_string}",
        error_code=INVALID_PARAMETER_VALUE,
    )


def _unsupported(what: str) -> MlflowException:
    return MlflowException(f"{what} is not supported by Azure Machine Learning ({DOCS})", INVALID_PARAMETER_VALUE)


def _by_name_only(comparisons: list[dict]) -> bool:
    return [(c["type"], c["key"], c["comparator"]) for c in comparisons] == [("attribute", "name", "=")]


class AzureMLRegistryStore(SqlAlchemyStore):
    """MLflow's SQL registry, less what Azure ML's MLflow registry refuses (see the module docstring)."""

    def __init__(self, db_uri: str, tracking_uri: str | None, aliases: bool) -> None:
        super().__init__(db_uri)
        self.tracking_uri = tracking_uri
        self.aliases = aliases

    # searches: by name only

    def search_model_versions(self, filter_string=None, max_results=VERSIONS_MAX, order_by=None, page_token=None):
        """Versions of one model by ``name = '...'``; any other filter or an ``order_by`` is refused."""
        if not _by_name_only(SearchModelVersionUtils.parse_search_filter(filter_string)):
            raise _unsupported_filter(filter_string)
        if order_by:
            raise _unsupported("order_by in search_model_versions")
        return super().search_model_versions(filter_string, min(max_results, PAGE_SIZE), None, page_token)

    def search_registered_models(self, filter_string=None, max_results=MODELS_MAX, order_by=None, page_token=None):
        """Registered models by ``name = '...'`` or none; tags and ``LIKE``/``ILIKE`` are refused."""
        comparisons = SearchModelUtils.parse_search_filter(filter_string)
        if comparisons and not _by_name_only(comparisons):
            raise _unsupported_filter(filter_string)
        for clause in order_by or []:
            if clause.split()[0] not in REGISTERED_MODEL_ORDER_BY:
                raise _unsupported(f"order_by {clause!r}")
        return super().search_registered_models(filter_string, max_results, order_by, page_token)

    # versions: from this workspace's runs (or an upload) only

    def create_model_version(
        self,
        name,
        source,
        run_id=None,
        tags=None,
        run_link=None,
        description=None,
        local_model_path=None,
        model_id=None,
    ):
        """A version from the artifacts of ``run_id`` in this workspace, or from an uploaded folder."""
        if model_id is not None:
            raise _unsupported("registering a logged model (models:/<model_id>)")
        if not self._source_allowed(source, run_id):
            raise MlflowException(
                "Model source from file must be in the following format: "
                f"azureml://artifacts/<origin>/<container>/<artifact_prefix>. Provided model source: {source}",
                INVALID_PARAMETER_VALUE,
            )
        return super().create_model_version(
            name, source, run_id, tags, run_link, description, local_model_path=local_model_path
        )

    def _source_allowed(self, source: str, run_id: str | None) -> bool:
        if source.startswith("azureml://artifacts/"):  # what azureml-mlflow uploads a file:// folder to
            return True
        if run_id is None:  # azureml-mlflow uploads a local MLflow model folder first
            return source.startswith("file://") and os.path.isfile(os.path.join(urlparse(source).path, "MLmodel"))
        try:
            artifact_uri = _get_tracking_store(self.tracking_uri).get_run(run_id).info.artifact_uri.rstrip("/")
        except MlflowException:  # a run of another workspace: cross-workspace registration is unsupported
            return False
        if RunsArtifactRepository.is_runs_uri(source):
            return RunsArtifactRepository.parse_runs_uri(source)[0] == run_id
        return source == artifact_uri or source.startswith(f"{artifact_uri}/")

    # aliases: not in the support matrix

    def set_registered_model_alias(self, name, alias, version):
        """Refused unless the stand-in was asked to let aliases through."""
        self._alias_endpoint("POST")
        return super().set_registered_model_alias(name, alias, version)

    def delete_registered_model_alias(self, name, alias):
        """Refused unless the stand-in was asked to let aliases through."""
        self._alias_endpoint("DELETE")
        return super().delete_registered_model_alias(name, alias)

    def get_model_version_by_alias(self, name, alias):
        """Refused unless the stand-in was asked to let aliases through."""
        self._alias_endpoint("GET")
        return super().get_model_version_by_alias(name, alias)

    def _alias_endpoint(self, method: str) -> None:
        if not self.aliases:
            raise MlflowException(
                f"API request to endpoint /api/2.0/mlflow/registered-models/alias ({method}) failed with "
                "error code 404 != 200. Response body: ''",
                ENDPOINT_NOT_FOUND,
            )

    # registered models are immutable

    def rename_registered_model(self, name, new_name):
        """Refused: registered models are immutable in Azure ML."""
        raise _unsupported("renaming a registered model")

    def delete_registered_model(self, name):
        """Refused: delete its versions instead."""
        raise _unsupported("deleting a registered model")

    def update_registered_model(self, name, description, deployment_job_id=None):
        """Refused: registered models are immutable in Azure ML."""
        raise _unsupported("editing a registered model")

    def set_registered_model_tag(self, name, tag):
        """Refused: registered models are immutable in Azure ML; versions carry the tags."""
        raise _unsupported("tagging a registered model")

    def delete_registered_model_tag(self, name, key):
        """Refused: registered models are immutable in Azure ML; versions carry the tags."""
        raise _unsupported("untagging a registered model")


def _build(store_uri: str, tracking_uri: str | None = None) -> AzureMLRegistryStore:
    parsed = urlparse(store_uri)
    return AzureMLRegistryStore(f"sqlite://{parsed.path}", tracking_uri, aliases=parsed.scheme == SCHEME_WITH_ALIASES)


for _scheme in (SCHEME, SCHEME_WITH_ALIASES):
    _get_store_registry().register(_scheme, _build)
