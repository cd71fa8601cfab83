"""The model side offline: the MLflow store and UI, the local rollout and its loopback scoring server."""
