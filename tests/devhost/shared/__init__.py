"""Tests of devhost's shared process and home helpers."""
