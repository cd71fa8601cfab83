"""Tests of the Function App's functions and their shared modules."""
