"""Stockcast's tests: they mirror the source folders, and start real local services once per session."""
