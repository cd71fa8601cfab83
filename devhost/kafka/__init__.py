"""Event Hubs over Kafka offline: the local broker, the trigger emulation, publish, replay and the forecast stream."""
