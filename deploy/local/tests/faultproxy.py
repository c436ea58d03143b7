#!/usr/bin/env python3
"""A gray-failure release for the canary tests: starts the real service on a
private port and sits in front of it on the public one ($PORT), passing every
request through, except that /hello/ requests get faults injected:

  --fail-ratio R   answer that share of /hello/ requests 500 (problem+json)
                   without passing them on (evenly spread: every 1/R-th)
  --delay-ms D     hold every /hello/ answer D ms longer

/readyz and /healthz pass through untouched, so the release starts, gets
ready and passes HAProxy's checks; /metrics stays on the service's own port.
SIGTERM/SIGINT go to the service, which drains as usual; the proxy keeps
passing requests until the service exits, then exits with its status.

Usage: faultproxy.py [--fail-ratio R] [--delay-ms D] -- BINARY [ARGS...]
"""

import argparse
import asyncio
import os
import signal
import socket
import sys

# One HTTP/1.1 message as read_message returns it: head bytes, body bytes,
# first line, headers (lower-cased names).
Message = tuple[bytes, bytes, bytes, dict[bytes, bytes]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def read_message(reader: asyncio.StreamReader, is_response: bool = False, request_method: bytes = b"GET") -> Message:
    """One HTTP/1.1 message: (head bytes, body bytes, first line, headers).
    At EOF, asyncio.IncompleteReadError."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        if b":" in line:
            k, v = line.split(b":", 1)
            headers[k.strip().lower()] = v.strip()
    body = b""
    status = int(lines[0].split()[1]) if is_response else 0
    if is_response and (status in (204, 304) or 100 <= status < 200 or request_method == b"HEAD"):
        return head, body, lines[0], headers
    if b"content-length" in headers:
        body = await reader.readexactly(int(headers[b"content-length"]))
    elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        while True:
            size_line = await reader.readuntil(b"\r\n")
            body += size_line
            size = int(size_line.split(b";")[0], 16)
            body += await reader.readexactly(size + 2)
            if size == 0:
                break
    elif is_response:
        body = await reader.read()
    return head, body, lines[0], headers


class Proxy:
    def __init__(self, upstream_port: int, fail_ratio: float, delay_ms: float) -> None:
        self.upstream_port = upstream_port
        self.fail_ratio = fail_ratio
        self.delay = delay_ms / 1000
        self.acc = 0.0

    def should_fail(self) -> bool:
        self.acc += self.fail_ratio
        if self.acc >= 1.0:
            self.acc -= 1.0
            return True
        return False

    async def handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        up: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                try:
                    head, body, first, headers = await read_message(creader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                method, path = first.split()[0], first.split()[1]
                hello = path.startswith(b"/hello/")
                if hello and self.delay:
                    await asyncio.sleep(self.delay)
                if hello and self.should_fail():
                    msg = b'{"type":"about:blank","title":"Internal Server Error","status":500,"detail":"injected fault"}'
                    cwriter.write(
                        b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/problem+json\r\n"
                        b"content-length: " + str(len(msg)).encode() + b"\r\n\r\n" + msg
                    )
                    await cwriter.drain()
                    continue
                if up is None:
                    up = await asyncio.open_connection("127.0.0.1", self.upstream_port)
                up[1].write(head + body)
                await up[1].drain()
                rhead, rbody, _, rheaders = await read_message(up[0], True, method)
                cwriter.write(rhead + rbody)
                await cwriter.drain()
                if rheaders.get(b"connection", b"").lower() == b"close" or headers.get(b"connection", b"").lower() == b"close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            return
        finally:
            if up is not None:
                up[1].close()
            cwriter.close()


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fail-ratio", type=float, default=0.0)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("command", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        ap.error("give the service binary after --")
    public = int(os.environ["PORT"])
    private = free_port()
    child = await asyncio.create_subprocess_exec(*cmd, env={**os.environ, "PORT": str(private)})
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, child.send_signal, sig)
    proxy = Proxy(private, a.fail_ratio, a.delay_ms)
    server = await asyncio.start_server(proxy.handle, os.environ.get("BIND_ADDR", "127.0.0.1"), public, backlog=1024)
    print(f"faultproxy: 127.0.0.1:{public} -> 127.0.0.1:{private}, fail ratio {a.fail_ratio}, delay {a.delay_ms} ms",
          flush=True)
    rc = await child.wait()
    server.close()
    return rc


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
