"""Tests of devhost.jobs: the local training job and the local backend the timer drives."""
