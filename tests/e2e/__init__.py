"""End-to-end tests: the make targets and devhost commands as a user runs them, and the live page in a browser."""
