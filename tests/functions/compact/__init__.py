"""Tests of the compact timer function."""
