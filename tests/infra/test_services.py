"""Event Hubs, Azure ML and AKS, API Management and monitoring: the settings the app and the hooks rely on."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from devhost.app.host import registered_functions
from functions import telemetry
from tests.infra.bicep_model import BICEP, ROOT, keys, of_type, one, render, resources, run_infra_tool

OPENAPI = ROOT / "functions" / "predict" / "openapi.yaml"
POLICY = BICEP / "modules" / "apim-api-policy.xml"
# The telemetry contract (functions/telemetry.py): metric names and the training decision trace.
METRICS = {value for name, value in vars(telemetry).items() if name.isupper() and str(value).startswith("stockcast.")}


# ---- Event Hubs ----


def test_event_hubs_namespace_is_standard_with_kafka(module):
    """Standard tier (Kafka endpoint), TLS 1.2, SAS kept for Airbyte's Kafka client."""
    namespace = one(module("eventhubs"), "Microsoft.EventHub/namespaces")
    assert namespace.config["sku"]["name"] == "Standard"
    properties = namespace.config["properties"]
    assert (properties["kafkaEnabled"], properties["minimumTlsVersion"], properties["disableLocalAuth"]) == (
        True,
        "1.2",
        False,
    )


def test_hub_consumer_group_and_send_only_rule(module):
    """Hub stock_bars, consumer groups ingest and forecast on it, and one authorization rule, on the hub, Send only."""
    template = module("eventhubs")
    assert template["parameters"]["eventHubName"]["default"] == "stock_bars"
    assert template["parameters"]["consumerGroupName"]["default"] == "ingest"
    assert template["parameters"]["forecastConsumerGroupName"]["default"] == "forecast"
    groups = of_type(template, "Microsoft.EventHub/namespaces/eventhubs/consumergroups")
    assert sorted((g.name, g.config["parent"]) for g in groups) == [
        ("consumerGroup", "hub"),
        ("forecastConsumerGroup", "hub"),
    ]
    rules = [r for r in of_type(template, "Microsoft.EventHub/namespaces/eventhubs/authorizationRules")]
    assert [(r.config["parent"], r.config["properties"]["rights"]) for r in rules] == [("hub", ["Send"])]
    assert of_type(template, "Microsoft.EventHub/namespaces/authorizationRules") == []
    assert render(template["outputs"]["sendRuleName"]["value"]) == "sendRule.name"


# ---- Azure ML and AKS ----


def test_forecasts_hub(module):
    """Hub stock_forecasts in the same namespace, read over Kafka; the app sends to it with its identity only."""
    template = module("eventhubs")
    assert template["parameters"]["forecastsEventHubName"]["default"] == "stock_forecasts"
    hubs = of_type(template, "Microsoft.EventHub/namespaces/eventhubs")
    assert sorted((h.name, h.config["parent"]) for h in hubs) == [("forecastsHub", "namespace"), ("hub", "namespace")]
    assert render(template["outputs"]["forecastsEventHubName"]["value"]) == "forecastsHub.name"


def test_workspace_links_its_resources_with_a_system_identity(module):
    """The workspace uses the shared storage, its vault, registry and App Insights, and identity datastores."""
    workspace = one(module("ml"), "Microsoft.MachineLearningServices/workspaces")
    assert workspace.config["identity"] == {"type": "SystemAssigned"}
    properties = {k: render(v) for k, v in workspace.config["properties"].items()}
    assert properties["storageAccount"] == "storage.id"
    assert properties["keyVault"] == "keyVault.id"
    assert properties["containerRegistry"] == "containerRegistry.id"
    assert properties["applicationInsights"] == "applicationInsightsId"
    assert properties["systemDatastoresAuthMode"] == "identity"


def test_workspace_run_events_reach_log_analytics(module):
    """The diagnostic setting sends AmlRunStatusChangedEvent (read by the training-failed alert)."""
    setting = one(module("ml"), "Microsoft.Insights/diagnosticSettings")
    assert setting.config["scope"] == "workspace"
    assert setting.config["properties"]["logAnalyticsDestinationType"] == "Dedicated"
    categories = {log["category"] for log in setting.config["properties"]["logs"] if log["enabled"]}
    assert "AmlRunStatusChangedEvent" in categories


def test_cpu_cluster_scales_to_zero_with_the_training_identity(module):
    """AmlCompute, min 0 nodes, the user-assigned training identity, no SSH, no local auth."""
    cluster = next(
        c
        for c in of_type(module("ml"), "Microsoft.MachineLearningServices/workspaces/computes")
        if c.config["properties"]["computeType"] == "AmlCompute"
    )
    assert cluster.config["name"] == "computeName"
    assert list(keys(cluster.config["identity"]["userAssignedIdentities"])) == ["${trainingIdentityId}"]
    properties = cluster.config["properties"]
    assert properties["disableLocalAuth"] is True
    assert properties["properties"]["scaleSettings"]["minNodeCount"] == 0
    assert properties["properties"]["remoteLoginPortPublicAccess"] == "Disabled"


def test_bars_datastore_is_identity_based(module):
    """AzureBlob on the bars container with no stored credentials."""
    datastore = one(module("ml"), "Microsoft.MachineLearningServices/workspaces/datastores")
    properties = datastore.config["properties"]
    assert properties["datastoreType"] == "AzureBlob"
    assert properties["containerName"] == "barsContainerName"
    assert properties["credentials"] == {"credentialsType": "None"}
    assert datastore.config["name"] == "barsDatastoreName"


# The settings `az k8s-extension create` computes for an AzureML extension on AKS before it PUTs it
# (azure-cli-extensions k8s-extension, partner_extensions/AzureMLKubernetes.py: Create, _dereference),
# as Bicep must write them since ARM computes nothing: key -> the Bicep expression of the CLI's value.
CLI_COMPUTED = {
    "cluster_name": "cluster.id",  # the cluster's resource id
    "clusterId": "cluster.id",  # _dereference copies cluster_name here ...
    "prometheus.prometheusSpec.externalLabels.cluster_name": "cluster.id",  # ... and here
    "cluster_name_friendly": "cluster.name",
    "location": "to_lower(location)",  # resource.location.lower()
    "jobSchedulerLocation": "to_lower(location)",
    "domain": "${toLower(location)}.cloudapp.azure.com",
    "servicebus.enabled": "false",
    "relayserver.enabled": "false",  # for managedClusters
    "nginxIngress.enabled": "true",  # for managedClusters
}
# What the CLI's inference validation wants set (__validate_scoring_fe_settings, __set_up_inference_ssl)
# and what a one-node cluster gets (clusterPurpose DevTest, inferenceRouterHA false below 3 nodes).
INFERENCE = {
    "enableInference": "True",
    "enableTraining": "False",
    "inferenceRouterServiceType": "LoadBalancer",
    "allowInsecureConnections": "True",
    "inferenceRouterHA": "False",
    "clusterPurpose": "DevTest",
}


def _extension_settings(module) -> dict[str, str]:
    extension = one(module("ml"), "Microsoft.KubernetesConfiguration/extensions")
    return {
        key.strip("'"): render(value) for key, value in extension.config["properties"]["configurationSettings"].items()
    }


def test_aks_extension_serves_inference_only(module):
    """The Azure ML extension on AKS: inference on, training off, DevTest router, cluster scope azureml."""
    extension = one(module("ml"), "Microsoft.KubernetesConfiguration/extensions")
    assert extension.config["scope"] == "cluster"  # the cluster, created or existing (test_reprovision.py)
    properties = extension.config["properties"]
    assert properties["extensionType"] == "Microsoft.AzureML.Kubernetes"
    assert (properties["releaseTrain"], properties["autoUpgradeMinorVersion"]) == ("stable", True)
    assert {key: _extension_settings(module)[key] for key in INFERENCE} == INFERENCE
    assert properties["scope"]["cluster"]["releaseNamespace"] == "azureml"


def test_aks_extension_has_what_the_cli_would_have_computed(module):
    """Through ARM nobody adds cluster_name, clusterId, location, domain, ...: Bicep declares each, as the CLI would."""
    settings = _extension_settings(module)
    assert {key: settings.get(key) for key in CLI_COMPUTED} == CLI_COMPUTED
    assert set(settings) == set(CLI_COMPUTED) | set(INFERENCE) | {
        "installNvidiaDevicePlugin",
        "installDcgmExporter",
        "installVolcano",
    }


def test_aks_extension_sends_no_identity_like_the_cli(module):
    """`az k8s-extension create` sends no identity for managedClusters (__create_identity returns None)."""
    extension = one(module("ml"), "Microsoft.KubernetesConfiguration/extensions")
    assert "identity" not in extension.config


def test_aks_uses_managed_identity_and_rbac(module):
    """System-assigned identity, Kubernetes RBAC, a system pool, container insights to Log Analytics."""
    aks = one(module("aks"), "Microsoft.ContainerService/managedClusters")
    assert aks.config["identity"] == {"type": "SystemAssigned"}
    properties = aks.config["properties"]
    assert properties["enableRBAC"] is True
    assert [p["mode"] for p in properties["agentPoolProfiles"]] == ["System"]
    assert properties["addonProfiles"]["omsagent"]["config"]["useAADAuth"] == "true"
    association = one(module("ml"), "Microsoft.Insights/dataCollectionRuleAssociations")
    assert association.config["scope"] == "cluster"
    cluster = resources(module("ml"))["cluster"]
    assert (cluster.existing, cluster.config["name"], cluster.type) == (True, "aksName", aks.type)


POSTPROVISION = [BICEP / "hooks" / "postprovision.sh", BICEP / "hooks" / "postprovision.ps1"]


def test_kubernetes_compute_and_endpoint_are_the_postprovision_hook_s(module):
    """No Kubernetes compute or online endpoint in Bicep: the hook attaches AKS and creates the endpoint on it.

    A Kubernetes compute cannot be updated and must come after the instance type; the endpoint's traffic and
    tags belong to the rollout (tests/infra/test_reprovision.py, tests/infra/test_azd.py for the order).
    """
    template = module("ml")
    computes = of_type(template, "Microsoft.MachineLearningServices/workspaces/computes")
    assert [c.config["properties"]["computeType"] for c in computes] == ["AmlCompute"]
    assert of_type(template, "Microsoft.MachineLearningServices/workspaces/onlineEndpoints") == []
    for hook in POSTPROVISION:
        text = hook.read_text()
        assert "compute attach" in text and "--type Kubernetes" in text and "--namespace azureml" in text
        assert "compute: azureml:" in text and "kubernetesOnlineEndpoint.schema.json" in text


@pytest.mark.parametrize("hook", POSTPROVISION, ids=lambda p: p.name)
def test_endpoint_auth_matches_the_predict_client(module, hook):
    """The endpoint the hook creates has key auth, which pairs with SCORING_AUTH=key (the client fetches keys)."""
    site = one(module("functionapp"), "Microsoft.Web/sites")
    scoring_auth = {s["name"]: s["value"] for s in site.config["properties"]["siteConfig"]["appSettings"]}[
        "SCORING_AUTH"
    ]
    assert re.findall(r"auth_mode: (\w+)", hook.read_text()) == [scoring_auth] == ["key"]


# ---- API Management ----


def test_apim_is_consumption_with_an_identity(module):
    """Consumption tier, system-assigned identity (for the logger)."""
    apim = one(module("apim"), "Microsoft.ApiManagement/service")
    assert apim.config["sku"] == {"name": "Consumption", "capacity": 0}
    assert apim.config["identity"] == {"type": "SystemAssigned"}


def test_apim_imports_the_predict_openapi_file(module):
    """The API is loaded from functions/predict/openapi.yaml (YAML, format openapi), subscription required."""
    api = one(module("apim"), "Microsoft.ApiManagement/service/apis")
    properties = api.config["properties"]
    assert properties["format"] == "openapi"
    assert properties["subscriptionRequired"] is True
    loaded = re.fullmatch(r"load_text_content\((.+)\)", render(properties["value"]))
    assert loaded
    assert (BICEP / "modules" / loaded.group(1)).resolve() == OPENAPI


def test_openapi_file_is_valid_openapi_3():
    """openapi-spec-validator (infra venv) accepts the file APIM imports, as OpenAPI 3."""
    result = run_infra_tool(["openapi", str(OPENAPI)], timeout=120)
    assert result["valid"], result["error"]
    assert str(result["openapi"]).startswith("3.")


def test_apim_policy_is_the_xml_file(module):
    """The API policy is loaded from apim-api-policy.xml as raw XML."""
    policy = one(module("apim"), "Microsoft.ApiManagement/service/apis/policies")
    assert policy.config["properties"]["format"] == "rawxml"
    assert render(policy.config["properties"]["value"]) == "load_text_content(apim-api-policy.xml)"


@pytest.fixture(scope="module")
def inbound() -> ET.Element:
    """The inbound section of the policy."""
    root = ET.parse(POLICY).getroot()
    assert root.tag == "policies"
    element = root.find("inbound")
    assert element is not None
    return element


def test_policy_rate_limits_per_subscription(inbound):
    """rate-limit (Consumption has no rate-limit-by-key), with a positive budget."""
    limits = inbound.findall("rate-limit")
    assert len(limits) == 1
    assert int(limits[0].get("calls", "0")) > 0
    assert int(limits[0].get("renewal-period", "0")) > 0
    assert inbound.find(".//rate-limit-by-key") is None


def test_policy_validates_post_bodies(inbound):
    """validate-content prevents JSON bodies that do not match the API schema, within the function's size cap."""
    validate = inbound.find(".//validate-content")
    assert validate is not None
    assert validate.get("size-exceeded-action") == "prevent"
    assert int(validate.get("max-size", "0")) <= 4 * 1024 * 1024
    content = validate.find("content")
    assert content is not None
    assert (content.get("type"), content.get("validate-as"), content.get("action")) == (
        "application/json",
        "json",
        "prevent",
    )


def test_policy_routes_to_the_function_with_its_key(module, inbound):
    """set-backend-service names the backend resource; x-functions-key comes from the secret named value."""
    template = module("apim")
    backend = one(template, "Microsoft.ApiManagement/service/backends")
    named_value = one(template, "Microsoft.ApiManagement/service/namedValues")
    variables = template["variables"]
    assert backend.config["name"] == "backendName"
    assert named_value.config["properties"]["displayName"] == "functionKeyNamedValue"
    service = inbound.find("set-backend-service")
    assert service is not None
    assert service.get("backend-id") == variables["backendName"]["value"]
    header = inbound.find("set-header[@name='x-functions-key']")
    assert header is not None
    assert header.findtext("value") == "{{" + variables["functionKeyNamedValue"]["value"] + "}}"


def test_provisioning_never_reads_the_function_key(module):
    """No listKeys at provision time (the Flex app has no code yet): a placeholder, created only when missing."""
    named_value = one(module("apim"), "Microsoft.ApiManagement/service/namedValues")
    properties = named_value.config["properties"]
    assert properties["secret"] is True
    assert properties["value"] == "set-by-the-postdeploy-hook"
    assert named_value.condition == "not(functionKeyNamedValueExists)"
    code = [line.split("//")[0] for line in (BICEP / "modules" / "apim.bicep").read_text().splitlines()]
    assert not [line for line in code if "listKeys" in line or "list(" in line]


def test_postdeploy_template_stores_the_host_key(templates):
    """bicep/hooks/apim-function-key.bicep: the same named value, the host's default key read by ARM, no output."""
    template = templates["bicep/hooks/apim-function-key.bicep"]
    named_value = one(template, "Microsoft.ApiManagement/service/namedValues")
    properties = named_value.config["properties"]
    assert properties["secret"] is True
    assert render(properties["value"]) == (
        "list_func(listKeys, resource_id(Microsoft.Web/sites/host, functionApp.name, default), 2023-12-01)"
        ".functionKeys.default"
    )
    assert named_value.config["parent"] == "apim" and named_value.config["name"] == "namedValueName"
    assert template["parameters"]["namedValueName"]["default"] == module_variable(templates, "functionKeyNamedValue")
    assert not template.get("outputs")


def module_variable(templates, name: str) -> str:
    """A variable of bicep/modules/apim.bicep."""
    return templates["bicep/modules/apim.bicep"]["variables"][name]["value"]


def test_main_passes_whether_the_named_value_exists(main):
    """apim.bicep learns from main.bicep (APIM_NAMED_VALUE_EXISTS) whether to create the named value."""
    params = main["modules"]["apim"]["config"]["params"]
    assert render(params["functionKeyNamedValueExists"]) == "apimNamedValueExists"
    assert main["parameters"]["apimNamedValueExists"]["default"] is False


def test_apim_logs_to_app_insights_with_its_identity(module):
    """The logger authenticates with the managed identity; diagnostics use it."""
    template = module("apim")
    logger = one(template, "Microsoft.ApiManagement/service/loggers")
    assert logger.config["properties"]["loggerType"] == "applicationInsights"
    assert logger.config["properties"]["credentials"]["identityClientId"] == "SystemAssigned"
    assert "instrumentationKey" not in logger.config["properties"]["credentials"]
    assert logger.config["dependsOn"] == ["apimTelemetry"]
    diagnostics = one(template, "Microsoft.ApiManagement/service/diagnostics")
    assert render(diagnostics.config["properties"]["loggerId"]) == "logger.id"


# ---- Monitoring ----


def test_app_insights_is_workspace_based(module):
    """Application Insights stores in the Log Analytics workspace."""
    insights = one(module("monitoring"), "Microsoft.Insights/components")
    assert render(insights.config["properties"]["WorkspaceResourceId"]) == "logAnalytics.id"


@pytest.fixture(scope="module")
def workbook_queries(module) -> dict[str, str]:
    """Workbook item name -> KQL, resolved from the variables the workbook is built from."""
    template = module("monitoring")
    variables = template["variables"]
    workbook = one(template, "Microsoft.Insights/workbooks")
    assert render(workbook.config["properties"]["serializedData"]) == "string(workbookContent)"
    items = variables["workbookContent"]["value"]["items"]
    queries = {}
    for item in items:
        content = item["content"]
        if isinstance(content, dict) and "function" in content:  # union(appInsightsItem, {...})
            assert content["function"]["parameters"]["arg_1"] == "appInsightsItem"
            content = content["function"]["parameters"]["arg_2"]
        if "query" in content:
            queries[item["name"]] = variables[content["query"]]["value"]
    return queries


@pytest.mark.parametrize(
    ("item", "needles"),
    [
        ("bars-per-minute", ["stockcast.bars.ingested", "bin(timestamp, 1m)"]),
        ("ingest-lag", ["stockcast.ingest.lag", "valueSum", "valueCount"]),
        ("dead-letters", ["stockcast.deadletters", "customDimensions.reason"]),
        (
            "predict-latency",
            ["requests", "percentile(duration, 50)", "percentile(duration, 95)", "percentile(duration, 99)"],
        ),
        ("predict-errors", ["stockcast.predict.duration", "customDimensions.status_code", ">= 400"]),
        ("training-submissions", ["stockcast.training.submissions", "customDimensions.outcome"]),
        ("rollout-outcomes", ["stockcast.rollout", "customDimensions.outcome", "by outcome"]),
        (
            "training-decisions",
            ['message == "training decision"', "arg_max(timestamp", "by version", "rmse_persistence"],
        ),
        ("aml-jobs", ["AmlRunStatusChangedEvent", "Status"]),
        ("champion-rmse", ["stockcast.model.rmse", "customDimensions.predictor"]),
        ("compaction", ["stockcast.compaction.hours", "stockcast.compaction.blobs", "customDimensions.outcome"]),
    ],
)
def test_workbook_shows(workbook_queries, item, needles):
    """Each panel the issue asks for queries the right telemetry."""
    query = workbook_queries[item]
    assert [n for n in needles if n not in query] == []


def test_workbook_and_alerts_use_only_metrics_the_app_emits(module):
    """Every stockcast.* metric named in monitoring.bicep is one functions/telemetry.py defines, and all are shown."""
    text = (BICEP / "modules" / "monitoring.bicep").read_text()
    named = set(re.findall(r"stockcast\.[a-z_.]+[a-z]", text))
    assert named == METRICS
    assert f'"{telemetry.TRAINING_DECISION}"' in text


def test_predict_function_names_in_queries_are_registered():
    """The HTTP function names the queries filter on are the registered predict functions."""
    text = (BICEP / "modules" / "monitoring.bicep").read_text()
    http = {
        f.get_function_name()
        for f in registered_functions()
        if f.get_trigger().type == "httpTrigger" and f.get_user_function().__module__ == "functions.predict.blueprint"
    }
    assert set(re.findall(r'"(predict_\w+)"', text)) == http


def _alerts(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rules = of_type(template, "Microsoft.Insights/scheduledQueryRules")
    return {r.name: r.config for r in rules}


@pytest.mark.parametrize(
    ("alert", "scope", "needles"),
    [
        ("alertDeadLetters", "appInsights.id", ["stockcast.deadletters", "by reason"]),
        (
            "alertNoBars",
            "appInsights.id",
            [
                'datetime_utc_to_local(now(), "America/New_York")',
                "dayofweek(ny) between (1d .. 5d)",
                "16 * 60",
                "ago(10m)",
            ],
        ),
        ("alertPredict5xx", "appInsights.id", ['"predict_symbol", "predict_bars"', "toint(resultCode) >= 500"]),
        ("alertTrainingFailed", "logAnalytics.id", ["AmlRunStatusChangedEvent", 'Status == "Failed"', '"failed"']),
        ("alertRolloutFailed", "logAnalytics.id", ['Name == "stockcast.rollout"', 'Properties.outcome) == "failed"']),
        (
            "alertLiveWorse",
            "logAnalytics.id",
            ['Name == "stockcast.live.worse_than_persistence"', "version == champion", "n >= 100", "p_worse < 0.05"],
        ),
        (
            "alertLiveFoldFailed",
            "logAnalytics.id",
            ['Name == "stockcast.live.folds"', 'Properties.outcome) == "failed"'],
        ),
    ],
)
def test_alerts(module, alert, scope, needles):
    """The seven alerts: their scope, query and the optional action group."""
    template = module("monitoring")
    config = _alerts(template)[alert]
    properties = config["properties"]
    assert [render(s) for s in properties["scopes"]] == [scope]
    criterion = properties["criteria"]["allOf"][0]
    query = template["variables"][criterion["query"]]["value"]
    assert [n for n in needles if n not in query] == []
    assert (criterion["operator"], criterion["threshold"]) == ("GreaterThan", 0)
    assert properties["actions"] == "alertActions"
    assert properties["enabled"] is True


def test_alerts_notify_the_action_group_only_when_given(module):
    """Without an action group id the alerts still exist, firing in the portal."""
    template = module("monitoring")
    actions = render(template["variables"]["alertActions"]["value"]["actionGroups"])
    assert actions == "conditional(empty(alertActionGroupId), [], [alertActionGroupId])"
    assert template["parameters"]["alertActionGroupId"]["default"] == ""
    assert sorted(a["name"] for a in _alerts(template).values()) == [
        "stockcast-champion-worse-live",
        "stockcast-compaction-failed",
        "stockcast-dead-letters",
        "stockcast-live-fold-failed",
        "stockcast-no-bars",
        "stockcast-predict-5xx",
        "stockcast-rollout-failed",
        "stockcast-training-failed",
    ]


def test_no_bars_window_matches_the_market_hours():
    """09:40-16:00 New York time on weekdays (10 minutes spared after the 09:30 open)."""
    text = (BICEP / "modules" / "monitoring.bicep").read_text()
    assert "nyMinute >= 9 * 60 + 40 and nyMinute < 16 * 60" in text
    assert json.dumps("America/New_York") in text
