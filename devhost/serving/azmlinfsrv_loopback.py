"""``azmlinfsrv`` bound to loopback: ``python -m devhost.serving.azmlinfsrv_loopback [azmlinfsrv's options]``.

azureml-inference-server-http 1.5 has no address option: it hands gunicorn ``-b 0.0.0.0:<port>``
on the command line, which wins over ``GUNICORN_CMD_ARGS`` and any config file. The address is the
module constant its ``run`` reads, so this sets that constant and runs the server as its own
console script does. Nothing else of devhost is imported here: the scoring server stays a plain
``azmlinfsrv`` with one address changed.

Gunicorn renames its processes with ``setproctitle`` where that is installed, which overwrites the
memory that ``/proc/<pid>/cmdline`` and ``/proc/<pid>/environ`` read: the rollout finds the servers
of a home by exactly those (``--port``, ``STOCKCAST_SERVING_HOME``), so it is kept out here and
``ps`` shows this command line instead of ``gunicorn: master``.
"""

from __future__ import annotations

import sys

LOOPBACK = "127.0.0.1"


def main() -> int | None:
    """Run azmlinfsrv with the arguments given, listening on loopback only, its process titles untouched."""
    sys.modules["setproctitle"] = None  # type: ignore[assignment]  # gunicorn's import of it fails: no renaming
    from azureml_inference_server_http import amlserver

    amlserver.DEFAULT_HOST = LOOPBACK  # read by amlserver.run when it starts gunicorn
    return amlserver.run()


if __name__ == "__main__":
    sys.exit(main())
