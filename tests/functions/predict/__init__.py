"""Tests of the predict HTTP function."""
