"""Tests of the live page function."""
