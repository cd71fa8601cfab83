"""devhost: runs the registered Stockcast functions offline on Azurite and local services.

One subpackage per concern (shared, storage, serving, jobs, app, kafka, http, timers, market); the
command line and its console views sit at this top level, and no subpackage imports them
(``tests/test_layout.py``; the picture is in ``docs/architecture.md``).
"""
