"""The Function App offline: its settings and storage prepared, its functions invoked as the host does."""
