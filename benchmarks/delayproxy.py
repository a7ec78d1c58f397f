#!/usr/bin/env python3
"""A TCP proxy that delays every byte by a fixed time in each direction: one slow network hop.

This kernel has no ``tc netem``, so benchmarks/ready.py puts one of these in front of each
sshd to give every hop a one-way latency.  Data read at time t is written at t + DELAY,
in order and unchanged; bandwidth is not limited.  A half-close (EOF) is delayed and
passed on like data, so ssh sees the same connection life cycle as without the proxy.

    delayproxy.py LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT DELAY_MS

It prints ``ready`` on stdout once it listens, then serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from typing import Optional, Sequence, Tuple

READ_SIZE = 65536


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy reader to writer, each chunk `delay` s after it arrived; pass EOF on."""
    queue: "asyncio.Queue[Tuple[float, bytes]]" = asyncio.Queue()

    async def receive() -> None:
        while True:
            try:
                data = await reader.read(READ_SIZE)
            except OSError:
                data = b""
            # stamp on arrival: a later chunk must not wait behind an earlier chunk's sleep twice
            queue.put_nowait((time.monotonic() + delay, data))
            if not data:
                return

    async def send() -> None:
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
            except OSError:
                return

    await asyncio.gather(receive(), send())


async def _serve(listen: Tuple[str, int], target: Tuple[str, int], delay: float) -> None:
    """Accept connections on `listen` and relay each to `target` with the delay both ways."""

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*target)
        except OSError:
            client_writer.close()
            return
        try:
            await asyncio.gather(
                _pump(client_reader, upstream_writer, delay), _pump(upstream_reader, client_writer, delay)
            )
        finally:
            upstream_writer.close()
            client_writer.close()

    server = await asyncio.start_server(handle, *listen, reuse_address=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        print("ready", flush=True)
        await stop.wait()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse the command line and serve until told to stop."""
    parser = argparse.ArgumentParser(description="TCP proxy adding a fixed one-way delay in each direction.")
    parser.add_argument("listen_host")
    parser.add_argument("listen_port", type=int)
    parser.add_argument("target_host")
    parser.add_argument("target_port", type=int)
    parser.add_argument("delay_ms", type=float)
    args = parser.parse_args(argv)
    asyncio.run(
        _serve((args.listen_host, args.listen_port), (args.target_host, args.target_port), args.delay_ms / 1000)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
