"""Event Hubs → Blob ingestion of Airbyte Yahoo Finance 1-minute bars."""
