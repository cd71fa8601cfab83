"""Tests of the ingest function: decoding Airbyte events and storing bars."""
