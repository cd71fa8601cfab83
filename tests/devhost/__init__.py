"""Tests of devhost, the offline host: broker, trigger emulation, Azurite, serving, jobs, CLI."""
