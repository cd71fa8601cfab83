"""The Stockcast Function App: creates the app and registers its blueprints, nothing else."""

import azure.functions as func

from functions.compact.blueprint import bp as compact_bp
from functions.forecast.blueprint import bp as forecast_bp
from functions.ingest.blueprint import bp as ingest_bp
from functions.page.blueprint import bp as page_bp
from functions.predict.blueprint import bp as predict_bp
from functions.train_trigger.blueprint import bp as train_trigger_bp

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(ingest_bp)
app.register_functions(train_trigger_bp)
app.register_functions(predict_bp)
app.register_functions(forecast_bp)
app.register_functions(page_bp)
app.register_functions(compact_bp)
