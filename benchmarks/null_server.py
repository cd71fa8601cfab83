"""An HTTP/1.1 server that answers every request with the same bytes and does no work.

``benchmarks/predict.py`` runs its load against it to measure the load generator's own floor.
Prints the port it listens on, then serves until killed.
"""

from __future__ import annotations

import asyncio

BODY = b'{"symbol":"AAPL"}'
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)


class Null(asyncio.Protocol):
    """Answers each complete request (headers, then Content-Length bytes of body) with ``ANSWER``."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start a connection with an empty buffer."""
        self.transport, self.buffer = transport, b""

    def data_received(self, data: bytes) -> None:
        """Answer every request the buffer now holds whole."""
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            lengths = (
                line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
            )
            length = int(next(lengths, b"0"))
            if len(rest) < length:
                return
            self.buffer = rest[length:]
            self.transport.write(ANSWER)


async def main() -> None:
    """Listen on a free loopback port, print it, serve forever."""
    server = await asyncio.get_running_loop().create_server(Null, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
