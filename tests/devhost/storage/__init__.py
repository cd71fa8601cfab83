"""Tests of devhost.storage: Azurite per home (and under chaos), and reading back the stored bars."""
