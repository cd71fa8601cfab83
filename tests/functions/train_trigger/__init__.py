"""Tests of the training timer: job submission, rollout, live skill."""
