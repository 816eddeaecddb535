#!/usr/bin/env python3
"""Tunnel benchmark: regproxy vs squid, measured side by side in one run.

  python3 bench/tunnel.py [--size-mib 1024] [--runs 3] [--idle 1000]

1. Throughput: curl fetches one large body from a local nginx through a CONNECT tunnel
   (curl --proxytunnel), directly and through each proxy; best of --runs. Reports MB/s
   and the CPU seconds each proxy process used (utime+stime from /proc).
2. Idle tunnels: opens --idle CONNECT tunnels to a local holder server through each proxy
   and reports the proxy's RSS before and after.
Loopback only; everything started here is stopped by PID at exit.
"""
import argparse
import asyncio
import os
import resource
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "integration"))
import harness as h  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def fetch(url, proxy):
    argv = ["curl", "-s", "-o", "/dev/null", "-w", "%{size_download}", url]
    if proxy:
        argv[1:1] = ["-p", "-x", proxy]
    t0 = time.monotonic()
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return time.monotonic() - t0, int(out)


def throughput(name, url, proxy, pid, size, runs):
    best = None
    for _ in range(runs):
        c0 = cpu_seconds(pid) if pid else 0.0
        secs, got = fetch(url, proxy)
        c1 = cpu_seconds(pid) if pid else 0.0
        if got != size:
            raise SystemExit("%s: got %d bytes, want %d" % (name, got, size))
        if best is None or secs < best[0]:
            best = (secs, c1 - c0)
    return size / best[0] / 1e6, best[1]


async def hold_server(port, ready):
    conns = []

    async def on_conn(reader, writer):
        conns.append(writer)
        await reader.read()  # until the proxy closes

    srv = await asyncio.start_server(on_conn, "127.0.0.1", port, backlog=4096)
    ready.set()
    async with srv:
        await srv.serve_forever()


def open_idle(proxy_port, target, n):
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", proxy_port))
        s.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target)).encode())
        socks.append(s)
    for s in socks:
        s.settimeout(10)
        head = b""
        while b"\r\n\r\n" not in head:
            b = s.recv(1024)
            if not b:
                raise SystemExit("proxy closed an idle tunnel")
            head += b
        if not head.startswith(b"HTTP/1.1 200") and not head.startswith(b"HTTP/1.0 200"):
            raise SystemExit("CONNECT answered %r" % head[:60])
    return socks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--idle", type=int, default=1000)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    size = a.size_mib << 20
    origin = h.Nginx()
    with open(origin.path("big.bin"), "wb") as f:
        f.truncate(size)  # sparse: nginx sends it from the page cache
    url = "http://127.0.0.1:%d/big.bin" % origin.http_port
    rp = h.Regproxy(["--log-level", "warn"])
    sq = h.Squid()
    print("tunnel throughput: %d MiB over CONNECT (curl -p), best of %d" % (a.size_mib, a.runs))
    rows = [("direct",) + throughput("direct", url, None, None, size, a.runs),
            ("regproxy",) + throughput("regproxy", url, rp.url, rp.proc.pid, size, a.runs),
            ("squid",) + throughput("squid", url, sq.url, sq.proc.pid, size, a.runs)]
    print("%-10s %10s %12s %14s" % ("", "MB/s", "vs direct", "proxy CPU s"))
    for name, mbs, cpu in rows:
        print("%-10s %10.0f %11.2fx %14s" % (name, mbs, mbs / rows[0][1],
                                           "-" if name == "direct" else "%.2f" % cpu))
    print("regproxy/squid: throughput %.2fx, CPU %.2fx" % (
        rows[1][1] / rows[2][1], rows[1][2] / rows[2][2] if rows[2][2] else float("nan")))

    if a.idle:
        hold_port = h.free_port()
        import threading
        ready = threading.Event()
        loop = asyncio.new_event_loop()
        threading.Thread(target=lambda: loop.run_until_complete(hold_server(hold_port, ready)),
                         daemon=True).start()
        ready.wait(5)
        target = "127.0.0.1:%d" % hold_port
        print("\nidle tunnels: %d CONNECTs held open" % a.idle)
        print("%-10s %12s %12s %16s" % ("", "RSS before", "RSS after", "per tunnel"))
        for name, port, pid in (("regproxy", rp.port, rp.proc.pid), ("squid", sq.port, sq.proc.pid)):
            before = rss_mib(pid)
            socks = open_idle(port, target, a.idle)
            time.sleep(0.5)  # let the proxy settle; this is a measurement, not a sync
            after = rss_mib(pid)
            print("%-10s %9.1f MiB %9.1f MiB %13.1f KiB" % (
                name, before, after, (after - before) * 1024 / a.idle))
            for s in socks:
                s.close()


if __name__ == "__main__":
    main()
