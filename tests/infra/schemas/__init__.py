"""Resource schemas the offline Bicep checks validate against."""
