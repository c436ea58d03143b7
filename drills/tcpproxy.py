#!/usr/bin/env python3
"""A loopback TCP forwarder whose target can be switched: the failover
drill's stand-in for the database DNS name that RDS Multi-AZ flips to the
promoted standby. The service connects to the proxy; the drill writes the
new "host:port" into the target file; the proxy closes every connection to
the old target (as a failed host would) and sends new ones to the new one.

  tcpproxy.py --listen-port P --target-file F
"""

import argparse
import asyncio
import os
import sys


async def main(a: argparse.Namespace) -> None:
    def read_target() -> tuple[str, int]:
        host, port = open(a.target_file).read().strip().rsplit(":", 1)
        if host not in ("127.0.0.1", "localhost", "::1"):
            sys.exit(f"refusing a non-loopback target: {host}")
        return host, int(port)

    # handle() reads `target` when a connection arrives: the latest one.
    target = read_target()
    seen_mtime = os.stat(a.target_file).st_mtime_ns
    live: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def handle(creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        host, port = target
        try:
            sreader, swriter = await asyncio.open_connection(host, port)
        except OSError:
            cwriter.close()
            return
        pair = (cwriter, swriter)
        live.add(pair)
        try:
            await asyncio.gather(pipe(creader, swriter), pipe(sreader, cwriter))
        finally:
            live.discard(pair)

    server = await asyncio.start_server(handle, "127.0.0.1", a.listen_port)
    host, port = target
    print(f"tcpproxy listening on 127.0.0.1:{a.listen_port} -> {host}:{port}", flush=True)
    async with server:
        while True:
            await asyncio.sleep(0.05)
            mtime = os.stat(a.target_file).st_mtime_ns
            if mtime != seen_mtime:
                seen_mtime, target = mtime, read_target()
                for pair in list(live):
                    for w in pair:
                        w.close()
                host, port = target
                print(f"tcpproxy switched to {host}:{port}, closed {len(live)} connections", flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen-port", type=int, required=True)
    p.add_argument("--target-file", required=True)
    try:
        asyncio.run(main(p.parse_args()))
    except KeyboardInterrupt:
        pass
