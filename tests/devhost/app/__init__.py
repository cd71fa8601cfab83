"""Tests of devhost.app: the host's bindings and retry policy, and the runtime of a home."""
