"""Stockcast training job: the code folder submitted as an Azure ML command job."""
