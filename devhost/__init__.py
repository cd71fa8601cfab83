"""devhost: runs the registered Stockcast functions offline on Azurite and local services."""
