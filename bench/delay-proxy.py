#!/usr/bin/env python3
"""A TCP proxy that adds network latency: every byte is held for half the round-trip time in each
direction, and each new connection waits one round trip (the TCP handshake) before its first byte
goes through. Bytes are pipelined, not stop-and-wait, so throughput is not capped, as on a long
fat link. It stands in for `tc netem` where the kernel has no netem (this machine's has none).

Usage: delay-proxy.py LISTEN_PORT TARGET_HOST:TARGET_PORT RTT_MS
The RTT can be changed while it runs: write a number of ms to the file named by $DELAY_PROXY_RTT_FILE
(read once a second), so one proxy serves runs at several latencies.
"""

import asyncio
import os
import sys

# Stop reading a side while this much is held for the other (the link's buffer).
HIGH_WATER = 64 << 20


class Pipe(asyncio.Protocol):
    """One direction's reader: what it receives is written to `peer` one half-RTT later."""

    def __init__(self, proxy, on_open=None):
        self.proxy = proxy
        self.peer = None
        self.transport = None
        self.held = 0
        self.on_open = on_open

    def connection_made(self, transport):
        self.transport = transport
        if self.on_open:
            self.on_open(self)

    def data_received(self, data):
        loop = asyncio.get_running_loop()
        self.held += len(data)
        if self.held > HIGH_WATER:
            self.transport.pause_reading()
        loop.call_later(self.proxy.rtt / 2, self.deliver, data)

    def deliver(self, data):
        self.held -= len(data)
        if self.peer is not None and not self.peer.transport.is_closing():
            self.peer.transport.write(data)
        if self.held <= HIGH_WATER and not self.transport.is_closing():
            self.transport.resume_reading()

    def eof_received(self):
        loop = asyncio.get_running_loop()
        loop.call_later(self.proxy.rtt / 2, self.close_peer)
        return True

    def close_peer(self):
        if self.peer is not None and self.peer.transport.can_write_eof():
            self.peer.transport.write_eof()

    def connection_lost(self, exc):
        loop = asyncio.get_running_loop()
        loop.call_later(self.proxy.rtt / 2, self.drop_peer)

    def drop_peer(self):
        if self.peer is not None:
            self.peer.transport.close()


class Proxy:
    def __init__(self, target_host, target_port, rtt_ms):
        self.target = (target_host, target_port)
        self.rtt = rtt_ms / 1000

    def client(self):
        pipe = Pipe(self, on_open=lambda p: asyncio.ensure_future(self.connect(p)))
        return pipe

    async def connect(self, downstream):
        downstream.transport.pause_reading()
        await asyncio.sleep(self.rtt)  # the handshake's round trip
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(lambda: Pipe(self), *self.target)
        except OSError:
            downstream.transport.close()
            return
        upstream.peer = downstream
        downstream.peer = upstream
        downstream.transport.resume_reading()

    async def watch_rtt(self, path):
        while True:
            try:
                with open(path) as f:
                    self.rtt = float(f.read().strip()) / 1000
            except (OSError, ValueError):
                pass
            await asyncio.sleep(1)


async def main():
    listen_port = int(sys.argv[1])
    host, port = sys.argv[2].rsplit(":", 1)
    proxy = Proxy(host, int(port), float(sys.argv[3]))
    rtt_file = os.environ.get("DELAY_PROXY_RTT_FILE")
    if rtt_file:
        asyncio.ensure_future(proxy.watch_rtt(rtt_file))
    server = await asyncio.get_running_loop().create_server(proxy.client, "127.0.0.1", listen_port)
    print(f"listening on 127.0.0.1:{listen_port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    asyncio.run(main())
