"""Tests of devhost, one folder per subpackage; the command line's (up, status, stop, narration) at this level."""
