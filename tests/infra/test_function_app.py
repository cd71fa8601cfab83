"""The Function App module: Flex Consumption, identity-based connections, and every setting the code reads."""

from __future__ import annotations

import re

import pytest

from devhost.app.host import registered_functions
from functions.settings import BACKEND_FIELDS, setting_specs
from tests.infra.bicep_model import app_settings, keys, one, render

# App settings the code reads that Azure deliberately leaves unset, and why.
NOT_SET_IN_AZURE = {
    "BarsStorage": "a connection string: Azure uses the identity-based BarsStorage__* settings instead",
    "STOCKCAST_HOME": "local backend only (devhost)",
    "MLFLOW_TRACKING_URI": "local backend only (devhost); Azure ML is the registry",
    "SCORING_PORT": "local scoring server only",
    "SCORING_WORKERS": "WORKER_COUNT of the deployments the timer creates; the default fits the instance type",
    "TRAIN_ARGS": "local training run only",
    "LATEST_WINDOW": "tuning knob; the code default (512 bars) applies",
    "LATEST_MAX_ATTEMPTS": "tuning knob; the code default applies",
    "SCORING_TIMEOUT_SECONDS": "tuning knob; the code default applies",
    "SCORING_RETRIES": "tuning knob; the code default applies",
    "PREDICT_HISTORY_BARS": "tuning knob; the code default applies",
    "PREDICT_CACHE_SECONDS": "tuning knob; the code default applies",
    "STORAGE_CONNECT_TIMEOUT_SECONDS": "tuning knob; the code default applies",
    "STORAGE_TIMEOUT_SECONDS": "tuning knob; the code default applies",
    "STORAGE_RETRIES": "tuning knob; the code default applies",
    "STORAGE_RETRY_BACKOFF_SECONDS": "tuning knob; the code default applies",
    "PREDICT_MAX_BARS": "tuning knob; the code default applies",
    "AML_ENVIRONMENT_IMAGE": "the code default is the base image training_job/job.yml uses too",
    "TRAINING_TIMEOUT_SECONDS": "tuning knob; the code default (two hours) is the job's limit",
    "TRAINING_RECORD_BLOB": "the code default names the job record in the bars container",
    "SCORING_URL": "an override only: in Azure predict reads the endpoint's scoring_uri from Azure ML at run time",
}
# Where each kind of identity-based connection gets its endpoint.
ENDPOINT_SUFFIX = {
    "eventHubTrigger": "fullyQualifiedNamespace",
    "blob": "blobServiceUri",
}


def _bindings() -> list[dict]:
    return [b.get_dict_repr() for fn in registered_functions() for b in fn.get_bindings()]


def _connections() -> dict[str, str]:
    """Connection name -> binding type, as the registered functions declare them (plus the host's own)."""
    found = {b["connection"]: str(b["type"]) for b in _bindings() if b.get("connection")}
    return {**found, "AzureWebJobsStorage": "host"}


def _binding_settings() -> set[str]:
    """%APP_SETTING% names the bindings resolve at run time."""
    names = set()
    for binding in _bindings():
        for value in binding.values():
            names.update(re.findall(r"%(\w+)%", str(value)))
    return names


REQUIRED = sorted(
    {spec.key for spec in setting_specs().values() if spec.required}
    | {setting_specs()[field].key for field in BACKEND_FIELDS["aml"]}
    | _binding_settings()
)


@pytest.fixture(scope="module")
def site(module):
    """The Function App resource."""
    return one(module("functionapp"), "Microsoft.Web/sites")


@pytest.fixture(scope="module")
def settings(site):
    """Its app settings, name -> rendered value."""
    return app_settings(site)


def test_required_settings_are_derived_from_the_code():
    """The required list comes from settings.py and the bindings, and is not empty by accident."""
    assert {"BARS_CONTAINER", "TRAIN_SCHEDULE", "AML_WORKSPACE", "AML_ENDPOINT", "BARS_EVENTHUB_NAME"} <= set(REQUIRED)
    assert set(_connections()) == {"BarsEventHub", "BarsStorage", "AzureWebJobsStorage"}


@pytest.mark.parametrize("key", REQUIRED)
def test_function_app_sets_every_required_setting(settings, key):
    """Each setting settings.py requires (with ML_BACKEND=aml) or a binding resolves is set."""
    assert key in settings


def test_every_setting_the_code_reads_is_set_or_deliberately_left_out(settings):
    """Each app setting a Settings field reads is set by Bicep or listed, with its reason, as left to the default."""
    read = {spec.key for spec in setting_specs().values()}
    assert set(NOT_SET_IN_AZURE) <= read, "stale entries in NOT_SET_IN_AZURE"
    assert sorted(read - set(NOT_SET_IN_AZURE) - set(settings)) == []
    assert sorted(set(NOT_SET_IN_AZURE) & set(settings)) == []


@pytest.mark.parametrize("connection", sorted(_connections()))
def test_connections_use_the_user_assigned_identity(settings, connection):
    """Every connection is identity-based (endpoint + managedidentity + clientId), never a connection string."""
    assert connection not in settings
    assert settings[f"{connection}__credential"] == "managedidentity"
    assert settings[f"{connection}__clientId"] == "identityClientId"
    kind = _connections()[connection]
    if kind == "host":
        assert settings[f"{connection}__accountName"] == "storage.name"
    else:
        assert f"{connection}__{ENDPOINT_SUFFIX[kind]}" in settings


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("ML_BACKEND", "aml"),
        ("SCORING_AUTH", "key"),
        ("AZURE_CLIENT_ID", "identityClientId"),
        ("AZURE_SUBSCRIPTION_ID", "subscription().subscriptionId"),
        ("AZURE_RESOURCE_GROUP", "resource_group().name"),
        ("AML_WORKSPACE", "workspaceName"),
        ("AML_COMPUTE", "computeName"),
        ("AML_BARS_DATASTORE", "barsDatastoreName"),
        ("AML_ENDPOINT", "endpointName"),
        ("AML_INSTANCE_TYPE", "stockcast-scoring"),
        ("BARS_CONTAINER", "barsContainerName"),
        ("BARS_EVENTHUB_NAME", "eventHubName"),
        ("BARS_CONSUMER_GROUP", "consumerGroupName"),
        ("FORECASTS_EVENTHUB_NAME", "forecastsEventHubName"),
        ("FORECAST_CONSUMER_GROUP", "forecastConsumerGroupName"),
        ("TRAIN_SCHEDULE", "trainSchedule"),
        ("MODEL_NAME", "modelName"),
        ("EXPERIMENT_NAME", "experimentName"),
        ("BarsStorage__blobServiceUri", "storage.properties.primaryEndpoints.blob"),
        (
            "BarsEventHub__fullyQualifiedNamespace",
            "replace(replace(eventHubsNamespace.properties.serviceBusEndpoint, https://, ), :443/, )",
        ),
        (
            "FORECASTS_KAFKA_BOOTSTRAP",
            "${replace(replace(eventHubsNamespace.properties.serviceBusEndpoint, 'https://', ''), ':443/', '')}:9093",
        ),
        ("FORECASTS_KAFKA_SECURITY", "SASL_SSL"),
        ("APPLICATIONINSIGHTS_CONNECTION_STRING", "appInsights.properties.ConnectionString"),
        ("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", "Authorization=AAD;ClientId=${identityClientId}"),
    ],
)
def test_app_setting_values(settings, key, value):
    """The value behind each setting Azure needs."""
    assert settings[key] == value


def test_setting_values_parse_as_the_code_expects(settings):
    """Literal values pass settings.py's own parsers (ML_BACKEND, SCORING_AUTH)."""
    parsers = {spec.key: spec.parse for spec in setting_specs().values()}
    for key in ("ML_BACKEND", "SCORING_AUTH", "AML_INSTANCE_TYPE"):
        assert parsers[key](settings[key]) == settings[key]


@pytest.mark.parametrize(
    ("param", "default"),
    [("modelName", "stockcast-lstm-attention"), ("experimentName", "stockcast")],
)
def test_model_and_experiment_match_the_code_defaults(module, param, default):
    """MODEL_NAME and EXPERIMENT_NAME default to what the training job and settings.py use."""
    assert module("functionapp")["parameters"][param]["default"] == default


def test_the_endpoint_is_named_not_addressed(main, module, settings):
    """AML_ENDPOINT names the endpoint the postprovision hook creates; no SCORING_URL is set in Azure.

    The endpoint is not a Bicep resource (tests/infra/test_reprovision.py), so Bicep has no scoring URI to
    pass, and the address changes when the AzureML extension is reinstalled: predict reads it from Azure ML.
    """
    assert render(main["modules"]["functionApp"]["config"]["params"]["endpointName"]) == "amlEndpointName"
    assert render(main["outputs"]["AML_ENDPOINT"]["value"]) == "amlEndpointName"
    assert "SCORING_URL" not in settings and "scoringUrl" not in module("functionapp")["parameters"]
    assert "scoringUri" not in (module("ml").get("outputs") or {})


def test_main_passes_the_names_the_hooks_use(main):
    """The compute, datastore and schedule the app reads are the ones main.bicep names."""
    variables = main["variables"]
    assert variables["amlComputeName"]["value"] == setting_specs()["aml_compute"].parse("cpu-cluster")
    assert variables["amlBarsDatastoreName"]["value"] == "bars"
    assert variables["eventHubName"]["value"] == "stock_bars"
    assert variables["consumerGroupName"]["value"] == "ingest"
    assert variables["forecastsEventHubName"]["value"] == "stock_forecasts"
    assert variables["forecastConsumerGroupName"]["value"] == "forecast"
    assert main["parameters"]["trainSchedule"]["default"] == "0 */15 * * * *"


def test_flex_consumption_plan(module):
    """The plan is Flex Consumption (FC1) on Linux."""
    plan = one(module("functionapp"), "Microsoft.Web/serverfarms")
    assert plan.config["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    assert plan.config["properties"]["reserved"] is True


def test_function_app_runtime_and_deployment(site):
    """Python 3.11, the deployment package read with the user-assigned identity, bounded scale-out."""
    config = site.config["properties"]["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "3.11"}
    storage = config["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["authentication"] == {"type": "UserAssignedIdentity", "userAssignedIdentityResourceId": "identityId"}
    assert render(storage["value"]) == "${storage.properties.primaryEndpoints.blob}${deploymentContainerName}"
    assert config["scaleAndConcurrency"] == {
        "maximumInstanceCount": "maximumInstanceCount",
        "instanceMemoryMB": "instanceMemoryMB",
    }


def test_function_app_transport_and_identity(site):
    """HTTPS only, TLS 1.2, FTPS off, a user-assigned identity and the azd service tag."""
    properties = site.config["properties"]
    assert properties["httpsOnly"] is True
    assert properties["siteConfig"]["minTlsVersion"] == "1.2"
    assert properties["siteConfig"]["ftpsState"] == "Disabled"
    assert site.config["identity"]["type"] == "UserAssigned"
    assert list(keys(site.config["identity"]["userAssignedIdentities"])) == ["${identityId}"]
    assert render(site.config["tags"]) == "union(tags, {'azd-service-name': serviceName})"
    assert site.config["kind"] == "functionapp,linux"


def test_azd_service_name_is_api(module):
    """azure.yaml deploys the service `api`: the tag the Function App carries."""
    assert module("functionapp")["parameters"]["serviceName"]["default"] == "api"


def test_basic_publishing_credentials_are_off(module):
    """FTP and SCM basic auth are disabled; deployments use Entra ID."""
    policies = [
        r
        for r in module("functionapp")["resources"].values()
        if r["type"] == "Microsoft.Web/sites/basicPublishingCredentialsPolicies"
    ]
    assert sorted(p["config"]["name"] for p in policies) == ["ftp", "scm"]
    assert all(p["config"]["properties"] == {"allow": False} for p in policies)
