"""The timer functions offline: the training timer and the compaction timer, fired on their schedules."""
