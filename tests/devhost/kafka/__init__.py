"""Tests of devhost.kafka: the local broker, the trigger emulation, publish, replay and the forecast stream."""
