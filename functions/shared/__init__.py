"""Contracts ingest and predict share: the bars schema, latest/, storage clients and identity."""
