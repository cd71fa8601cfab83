"""The Stockcast Function App: creates the app and registers its blueprints, nothing else."""

import azure.functions as func

from functions.ingest.blueprint import bp as ingest_bp

app = func.FunctionApp()
app.register_functions(ingest_bp)
