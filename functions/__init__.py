"""Stockcast Function App: ingest, train_trigger and predict blueprints."""
