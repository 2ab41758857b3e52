"""A TCP relay that adds network latency: what a FHIR server across a network costs per round trip.

On one machine the service, its FHIR server and the baseline's client share loopback, where a round
trip costs nothing and only CPU counts. A clinic's sync service reaches its EHR over a network:
a LAN, a VPN or the internet. This relay listens on a loopback port and forwards every connection
to ``--target``, holding each chunk ``--rtt-ms / 2`` milliseconds in each direction (so one
request and its answer cost one ``--rtt-ms`` round trip). Order is kept per connection; bandwidth
is not limited. It runs in its own process (``bench_service_sync.py --rtt-ms``), so neither side
of a benchmark pays for it in its own interpreter.

    python benchmarks/latency_relay.py --target 127.0.0.1:8080 --rtt-ms 5 [--port 0]

It prints ``listening <port>`` once ready and runs until its stdin closes or it is killed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import threading
import time


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy ``reader`` to ``writer``, each chunk written ``delay`` seconds after it arrived."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, chunk = await queue.get()
            if not chunk:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(chunk)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()

    delivering = asyncio.ensure_future(deliver())
    try:
        while True:
            chunk = await reader.read(1 << 16)
            queue.put_nowait((time.monotonic() + delay, chunk))
            if not chunk:
                break
        await delivering
    except (ConnectionError, OSError):
        delivering.cancel()


async def _serve(target_host: str, target_port: int, port: int, delay: float) -> None:
    async def relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(target_host, target_port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(_pump(client_r, server_w, delay), _pump(server_r, client_w, delay))
        for w in (client_w, server_w):
            w.close()

    server = await asyncio.start_server(relay, "127.0.0.1", port)
    print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="host:port to relay to")
    parser.add_argument("--rtt-ms", type=float, required=True, help="round trip to add, in ms")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any free)")
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")

    def stdin_closed() -> None:  # die with the benchmark that started us
        sys.stdin.read()
        import os

        os._exit(0)

    threading.Thread(target=stdin_closed, daemon=True).start()
    asyncio.run(_serve(host, int(port), args.port, args.rtt_ms / 2000))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
