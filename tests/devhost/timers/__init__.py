"""Tests of devhost.timers: the compaction timer and `devhost compact`, offline."""
