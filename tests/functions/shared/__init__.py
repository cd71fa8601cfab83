"""Tests of the modules the functions share: bars, storage, latest/, compaction, the ledger."""
