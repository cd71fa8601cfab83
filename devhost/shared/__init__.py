"""What every part of devhost stands on: the home (state, app settings, locks) and background process helpers."""
