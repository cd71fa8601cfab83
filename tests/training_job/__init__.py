"""Tests of the Azure ML training job, run locally with TensorFlow on tiny data."""
