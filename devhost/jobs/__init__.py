"""Training offline: the local job submitter, and the ML backend (jobs and rollout) handed to the timer."""
