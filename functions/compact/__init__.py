"""Timer compacting each closed hour of ``raw/`` into one Parquet blob (:mod:`functions.shared.compaction`)."""
