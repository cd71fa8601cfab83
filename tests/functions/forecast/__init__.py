"""Tests of the forecast stream function."""
