"""Offline checks of the Bicep templates, azd hooks and the Function App's settings."""
