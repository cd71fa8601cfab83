"""Storage offline: one Azurite per home, and reading back what ingest stored (true bars, dead letters)."""
