"""The simulated market: Airbyte price messages of a seeded market, and the live feed that publishes them."""
