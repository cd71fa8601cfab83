"""A Host with two tiny HTTP functions (GET ping, POST echo): a 200 from devhost's HTTP host without storage.

Run as a module, it serves them under a file-descriptor limit: ``python -m tests.devhost.http.ping_host
NOFILE`` prints the port, then serves until its stdin closes.
"""

from __future__ import annotations

import resource
import sys

import azure.functions as func

from devhost.app.host import Host
from devhost.http.server import HttpHost

app = func.FunctionApp()


@app.route(route="ping", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def ping(req: func.HttpRequest) -> func.HttpResponse:
    """Answer 200 ``pong``."""
    return func.HttpResponse(b"pong", status_code=200)


@app.route(route="echo", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def echo(req: func.HttpRequest) -> func.HttpResponse:
    """Answer 200 with the body received."""
    return func.HttpResponse(req.get_body(), status_code=200)


FUNCTIONS = app.get_functions()  # the SDK indexes an app only once


class PingHost(Host):
    """A Host whose registered functions are ``ping`` and ``echo`` (function_app is never loaded)."""

    def __init__(self) -> None:
        self.registered = FUNCTIONS


def main(nofile: int) -> None:
    """Serve ping and echo with at most ``nofile`` file descriptors, the cap left to its default."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    host = HttpHost(PingHost(), 0).start()
    print(host.port, flush=True)  # noqa: T201 (the parent reads the port from stdout)
    sys.stdin.read()
    host.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]))
