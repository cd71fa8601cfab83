"""Tests of devhost.serving: the local rollout's faults and the MLflow UI."""
