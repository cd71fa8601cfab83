"""Tests of devhost.market: the generated Airbyte feed and the live feed's resume point."""
