// Log Analytics, Application Insights (workspace-based, Entra ID ingestion only), the Stockcast
// workbook and the alerts. The app's custom metrics (functions/telemetry.py) land in customMetrics
// with their attributes in customDimensions; the host's own HTTP invocations are in requests.

@description('Region of the monitoring resources.')
param location string

@description('Tags of every resource.')
param tags object

@description('Name of the Log Analytics workspace.')
param logAnalyticsName string

@description('Name of the Application Insights resource.')
param applicationInsightsName string

@description('Resource id of an action group every alert notifies; empty: alerts show in the portal only.')
param alertActionGroupId string = ''

@description('Display name of the workbook in the portal.')
param workbookDisplayName string = 'Stockcast operations'

var alertActions = {
  actionGroups: empty(alertActionGroupId) ? [] : [
    alertActionGroupId
  ]
}

resource logAnalytics 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: logAnalyticsName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: 30
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: applicationInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logAnalytics.id
    // ingestion only with a Microsoft Entra token (Monitoring Metrics Publisher), never the key
    DisableLocalAuth: true
    publicNetworkAccessForIngestion: 'Enabled'
    publicNetworkAccessForQuery: 'Enabled'
  }
}

// ---- Workbook: KQL over App Insights (and Log Analytics for Azure ML job events) ----

var queryBarsPerMinute = '''
customMetrics
| where name == "stockcast.bars.ingested"
| summarize bars = sum(valueSum) by bin(timestamp, 1m)
| order by timestamp asc
'''

var queryIngestLag = '''
customMetrics
| where name == "stockcast.ingest.lag"
| summarize avg_ms = sum(valueSum) / sum(valueCount), max_ms = max(valueMax) by bin(timestamp, 5m)
| order by timestamp asc
'''

var queryDeadLetters = '''
customMetrics
| where name == "stockcast.deadletters"
| extend reason = tostring(customDimensions.reason)
| summarize deadletters = sum(valueSum) by reason, bin(timestamp, 15m)
| order by timestamp asc
'''

var queryPredictLatency = '''
requests
| where name in ("predict_symbol", "predict_bars")
| summarize p50 = percentile(duration, 50), p95 = percentile(duration, 95), p99 = percentile(duration, 99) by bin(timestamp, 5m)
| order by timestamp asc
'''

var queryPredictStatus = '''
customMetrics
| where name == "stockcast.predict.duration"
| extend status_code = tostring(customDimensions.status_code), route = tostring(customDimensions.route)
| summarize requests = sum(valueCount), avg_ms = sum(valueSum) / sum(valueCount) by status_code, route
| order by status_code asc
'''

var queryPredictErrors = '''
customMetrics
| where name == "stockcast.predict.duration"
| extend status_code = tostring(customDimensions.status_code)
| where toint(status_code) >= 400
| summarize errors = sum(valueCount) by status_code, bin(timestamp, 15m)
| order by timestamp asc
'''

var queryTrainingSubmissions = '''
customMetrics
| where name == "stockcast.training.submissions"
| extend outcome = tostring(customDimensions.outcome)
| summarize ticks = sum(valueSum) by outcome, bin(timestamp, 1h)
| order by timestamp asc
'''

var queryRolloutOutcomes = '''
customMetrics
| where name == "stockcast.rollout"
| extend outcome = tostring(customDimensions.outcome)
| summarize ticks = sum(valueSum) by outcome, bin(timestamp, 1h)
| order by timestamp asc
'''

// raw/ compaction (functions/compact): hours per outcome, and the blobs and bytes it moved
var queryCompaction = '''
customMetrics
| where name in ("stockcast.compaction.hours", "stockcast.compaction.blobs", "stockcast.compaction.bytes")
| extend series = strcat(name, " ", tostring(coalesce(customDimensions.outcome, customDimensions.action, customDimensions.direction)))
| summarize total = sum(valueSum) by series, bin(timestamp, 1h)
| order by timestamp asc
'''

var queryLiveSkill = '''
customMetrics
| where name == "stockcast.live.skill_ratio"
| extend version = tostring(customDimensions.version), kind = tostring(customDimensions.kind)
| summarize ratio = avg(value) by version, kind, bin(timestamp, 1h)
| order by timestamp asc
'''

var queryTrainingDecisions = '''
traces
| where message == "training decision"
| extend version = tostring(customDimensions.version), decision = tostring(customDimensions.decision),
    reason = tostring(customDimensions.reason), rmse_model = todouble(customDimensions.rmse_model),
    rmse_champion = todouble(customDimensions.rmse_champion), rmse_persistence = todouble(customDimensions.rmse_persistence)
| summarize arg_max(timestamp, decision, reason, rmse_model, rmse_champion, rmse_persistence) by version
| order by timestamp desc
'''

var queryAmlJobs = '''
AmlRunStatusChangedEvent
| summarize arg_max(TimeGenerated, Status, Message) by RunId
| order by TimeGenerated desc
'''

var queryChampionRmse = '''
customMetrics
| where name == "stockcast.model.rmse"
| extend predictor = tostring(customDimensions.predictor)
| summarize rmse = avg(value) by predictor, bin(timestamp, 1h)
| order by timestamp asc
'''

var appInsightsItem = {
  version: 'KqlItem/1.0'
  queryType: 0
  resourceType: 'microsoft.insights/components'
  size: 0
  timeContext: {
    durationMs: 86400000
  }
}

var workbookContent = {
  version: 'Notebook/1.0'
  items: [
    {
      type: 1
      name: 'title'
      content: {
        json: '## Stockcast\nIngest (Event Hubs → raw/ and latest/), predictions (APIM → Function → AKS endpoint) and training (timer → Azure ML job → champion). Metrics come from functions/telemetry.py; the last 24 hours are shown.'
      }
    }
    {
      type: 3
      name: 'bars-per-minute'
      content: union(appInsightsItem, {
        title: 'Bars ingested per minute'
        query: queryBarsPerMinute
        visualization: 'timechart'
      })
    }
    {
      type: 3
      name: 'ingest-lag'
      content: union(appInsightsItem, {
        title: 'Ingest lag, enqueued → stored (ms)'
        query: queryIngestLag
        visualization: 'timechart'
      })
    }
    {
      type: 3
      name: 'dead-letters'
      content: union(appInsightsItem, {
        title: 'Dead letters by reason'
        query: queryDeadLetters
        visualization: 'barchart'
      })
    }
    {
      type: 3
      name: 'predict-latency'
      content: union(appInsightsItem, {
        title: 'Predict latency p50 / p95 / p99 (ms)'
        query: queryPredictLatency
        visualization: 'timechart'
      })
    }
    {
      type: 3
      name: 'predict-errors'
      content: union(appInsightsItem, {
        title: 'Predict errors by status'
        query: queryPredictErrors
        visualization: 'barchart'
      })
    }
    {
      type: 3
      name: 'predict-status'
      content: union(appInsightsItem, {
        title: 'Predict requests by status and route'
        query: queryPredictStatus
        visualization: 'table'
      })
    }
    {
      type: 3
      name: 'training-submissions'
      content: union(appInsightsItem, {
        title: 'Training ticks by outcome (submitted, active, failed)'
        query: queryTrainingSubmissions
        visualization: 'barchart'
      })
    }
    {
      type: 3
      name: 'rollout-outcomes'
      content: union(appInsightsItem, {
        title: 'Rollout ticks by outcome (succeeded, failed)'
        query: queryRolloutOutcomes
        visualization: 'barchart'
      })
    }
    {
      type: 3
      name: 'compaction'
      content: union(appInsightsItem, {
        title: 'raw/ compaction: hours by outcome, blobs merged and deleted, bytes read and written'
        query: queryCompaction
        visualization: 'barchart'
      })
    }
    {
      type: 3
      name: 'live-skill'
      content: union(appInsightsItem, {
        title: 'Live skill: log-RMSE ratio to persistence of served forecasts, per version (below 1 beats no change)'
        query: queryLiveSkill
        visualization: 'linechart'
      })
    }
    {
      type: 3
      name: 'training-decisions'
      content: union(appInsightsItem, {
        title: 'Training decisions (latest per model version)'
        query: queryTrainingDecisions
        visualization: 'table'
      })
    }
    {
      type: 3
      name: 'aml-jobs'
      content: {
        version: 'KqlItem/1.0'
        queryType: 0
        resourceType: 'microsoft.operationalinsights/workspaces'
        crossComponentResources: [
          logAnalytics.id
        ]
        size: 0
        timeContext: {
          durationMs: 604800000
        }
        title: 'Azure ML runs, last status (7 days)'
        query: queryAmlJobs
        visualization: 'table'
      }
    }
    {
      type: 3
      name: 'champion-rmse'
      content: union(appInsightsItem, {
        title: 'Champion decision-slice RMSE against persistence'
        query: queryChampionRmse
        visualization: 'timechart'
        timeContext: {
          durationMs: 2592000000
        }
      })
    }
  ]
  fallbackResourceIds: [
    appInsights.id
  ]
}

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  name: guid(resourceGroup().id, applicationInsightsName, 'stockcast-workbook')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: workbookDisplayName
    category: 'workbook'
    // lower case, as the portal's Workbooks gallery of the App Insights resource matches it
    sourceId: toLower(appInsights.id)
    version: 'Notebook/1.0'
    serializedData: string(workbookContent)
  }
}

// ---- Alerts (log search alerts; stateful, so one notification per incident) ----

var queryAlertDeadLetters = '''
customMetrics
| where name == "stockcast.deadletters"
| extend reason = tostring(customDimensions.reason)
| summarize deadletters = sum(valueSum) by reason
'''

// The US market is open 09:30-16:00 New York time on weekdays (14:30-21:00 UTC in winter, 13:30-20:00
// in summer; datetime_utc_to_local follows daylight saving). The first 10 minutes after the open are
// spared so a window never starts before the open. Exchange holidays are not known here.
var queryAlertNoBars = '''
let ny = datetime_utc_to_local(now(), "America/New_York");
let nyMinute = hourofday(ny) * 60 + datetime_part("minute", ny);
let marketOpen = dayofweek(ny) between (1d .. 5d) and nyMinute >= 9 * 60 + 40 and nyMinute < 16 * 60;
union (print bars = 0.0), (customMetrics
    | where timestamp > ago(10m)
    | where name == "stockcast.bars.ingested"
    | project bars = valueSum)
| summarize bars = sum(bars)
| where marketOpen and bars == 0
'''

var queryAlertPredict5xx = '''
union
    (requests
    | where name in ("predict_symbol", "predict_bars")
    | where toint(resultCode) >= 500
    | project errors = 1.0),
    (customMetrics
    | where name == "stockcast.predict.duration"
    | where toint(tostring(customDimensions.status_code)) >= 500
    | project errors = todouble(valueCount))
| summarize errors = sum(errors)
'''

// Run status from the Azure ML diagnostic setting (ml.bicep), plus a timer tick that failed to submit.
var queryAlertTrainingFailed = '''
union
    (AmlRunStatusChangedEvent
    | where Status == "Failed"
    | project RunId),
    (AppMetrics
    | where Name == "stockcast.training.submissions"
    | where tostring(Properties.outcome) == "failed" and Sum > 0
    | project RunId = "submission")
'''

// A tick whose rollout reconcile raised (functions/telemetry.py, ROLLOUT with outcome failed): the
// endpoint or a deployment could not be read, created, smoke-tested or given traffic.
var queryAlertRolloutFailed = '''
AppMetrics
| where Name == "stockcast.rollout"
| where tostring(Properties.outcome) == "failed" and Sum > 0
| summarize failures = sum(Sum)
'''

// A compaction run left an hour failed (functions/telemetry.py, COMPACTION_HOURS with outcome failed): its
// compacted blob does not decode, so that hour's raw blobs stay as they are (readers still read them).
var queryAlertCompactionFailed = '''
AppMetrics
| where Name == "stockcast.compaction.hours"
| where tostring(Properties.outcome) == "failed" and Sum > 0
| summarize failures = sum(Sum)
'''

// The champion is worse than persistence on the forecasts it served (functions/telemetry.py, LIVE_WORSE:
// the one-sided DM p-value that the version's live loss exceeds persistence's, with its n), restricted to
// the version the registry names champion (stockcast.model.rmse) and to at least 100 scored forecasts.
var queryAlertLiveWorse = '''
let champion = toscalar(AppMetrics
    | where TimeGenerated > ago(2h) and Name == "stockcast.model.rmse" and tostring(Properties.predictor) == "champion"
    | summarize arg_max(TimeGenerated, v = tostring(Properties.version)) | project v);
AppMetrics
| where Name == "stockcast.live.worse_than_persistence"
| extend version = tostring(Properties.version), kind = tostring(Properties.kind), n = toint(tostring(Properties.n))
| summarize arg_max(TimeGenerated, p_worse = Max, n, kind) by version
| where version == champion and kind != "persistence" and n >= 100 and p_worse < 0.05
| summarize worse = count()
'''

// A tick whose live-ledger fold raised (stockcast.live.folds outcome failed): served forecasts wait
// unscored in ledger/served/ until a tick folds them.
var queryAlertLiveFoldFailed = '''
AppMetrics
| where Name == "stockcast.live.folds"
| where tostring(Properties.outcome) == "failed" and Sum > 0
| summarize failures = sum(Sum)
'''

resource alertDeadLetters 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'stockcast-dead-letters'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Stockcast: dead letters'
    description: 'Ingest wrote dead-letter records (deadletter/ in the bars container); split by reason.'
    severity: 2
    enabled: true
    scopes: [
      appInsights.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [
        {
          query: queryAlertDeadLetters
          timeAggregation: 'Total'
          metricMeasureColumn: 'deadletters'
          dimensions: [
            {
              name: 'reason'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    skipQueryValidation: true
    actions: alertActions
  }
}

resource alertNoBars 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'stockcast-no-bars'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Stockcast: no bars for 10 minutes while the market is open'
    description: 'No bar was stored in the last 10 minutes on a weekday between 09:40 and 16:00 New York time (Airbyte, Event Hubs or the ingest function stalled).'
    severity: 1
    enabled: true
    scopes: [
      appInsights.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT10M'
    criteria: {
      allOf: [
        {
          query: queryAlertNoBars
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    skipQueryValidation: true
    actions: alertActions
  }
}

resource alertPredict5xx 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'stockcast-predict-5xx'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Stockcast: predict answered 5xx'
    description: 'A predict request (functions predict_symbol, predict_bars) ended with a 5xx status: the scoring endpoint is unavailable or the function failed.'
    severity: 1
    enabled: true
    scopes: [
      appInsights.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    criteria: {
      allOf: [
        {
          query: queryAlertPredict5xx
          timeAggregation: 'Total'
          metricMeasureColumn: 'errors'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    skipQueryValidation: true
    actions: alertActions
  }
}

resource alertTrainingFailed 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'stockcast-training-failed'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Stockcast: training job failed'
    description: 'An Azure ML run ended Failed (AmlRunStatusChangedEvent) or the timer could not submit the training job.'
    severity: 2
    enabled: true
    scopes: [
      logAnalytics.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [
        {
          query: queryAlertTrainingFailed
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    skipQueryValidation: true
    actions: alertActions
  }
}

resource alertRolloutFailed 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'stockcast-rollout-failed'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Stockcast: rollout failed'
    description: 'A timer tick could not reconcile the endpoint (stockcast.rollout outcome failed): a deployment was not created, smoke-tested, given traffic or deleted. The next tick retries.'
    severity: 2
    enabled: true
    scopes: [
      logAnalytics.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [
        {
          query: queryAlertRolloutFailed
          timeAggregation: 'Total'
          metricMeasureColumn: 'failures'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    skipQueryValidation: true
    actions: alertActions
  }
}

resource alertCompactionFailed 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'stockcast-compaction-failed'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Stockcast: compaction failed'
    description: 'An hour of raw/ could not be compacted (stockcast.compaction.hours outcome failed): its compacted blob does not decode. No bar is lost (the raw blobs stay and are read), but readers read that hour blob by blob until a person repairs it: see docs/operations.md.'
    severity: 3
    enabled: true
    scopes: [
      logAnalytics.id
    ]
    evaluationFrequency: 'PT15M'
    windowSize: 'PT1H'
    criteria: {
      allOf: [
        {
          query: queryAlertCompactionFailed
          timeAggregation: 'Total'
          metricMeasureColumn: 'failures'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    skipQueryValidation: true
    actions: alertActions
  }
}

resource alertLiveWorse 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'stockcast-champion-worse-live'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Stockcast: champion worse than persistence live'
    description: 'On the forecasts it served and that have come true, the champion loses to "no change" (one-sided DM p < 0.05, n >= 100): see docs/operations.md.'
    severity: 1
    enabled: true
    scopes: [
      logAnalytics.id
    ]
    evaluationFrequency: 'PT15M'
    windowSize: 'PT30M'
    criteria: {
      allOf: [
        {
          query: queryAlertLiveWorse
          timeAggregation: 'Total'
          metricMeasureColumn: 'worse'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    skipQueryValidation: true
    actions: alertActions
  }
}

resource alertLiveFoldFailed 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'stockcast-live-fold-failed'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Stockcast: live skill not updated'
    description: 'A timer tick could not fold the served forecasts into the live skill (stockcast.live.folds outcome failed). The next tick retries.'
    severity: 3
    enabled: true
    scopes: [
      logAnalytics.id
    ]
    evaluationFrequency: 'PT15M'
    windowSize: 'PT30M'
    criteria: {
      allOf: [
        {
          query: queryAlertLiveFoldFailed
          timeAggregation: 'Total'
          metricMeasureColumn: 'failures'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    skipQueryValidation: true
    actions: alertActions
  }
}

@description('Resource id of the Log Analytics workspace.')
output logAnalyticsId string = logAnalytics.id

@description('Name of the Log Analytics workspace.')
output logAnalyticsName string = logAnalytics.name

@description('Resource id of Application Insights.')
output applicationInsightsId string = appInsights.id

@description('Name of Application Insights.')
output applicationInsightsName string = appInsights.name

@description('Resource id of the workbook.')
output workbookId string = workbook.id
