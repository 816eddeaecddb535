#!/usr/bin/env python3
"""Tunnel benchmark: regproxy vs squid, measured side by side in one run.

  python3 bench/tunnel.py [--size-mib 1024] [--runs 3] [--idle 1000] [--only idle|throughput]
                          [--healthz 20] [--no-squid] [--no-splice]

1. Throughput: curl fetches one large body from a local nginx through a CONNECT tunnel
   (curl --proxytunnel), directly and through each proxy; best of --runs. Reports MB/s
   and the CPU seconds each proxy process used (utime+stime from /proc).
2. Idle tunnels: opens --idle CONNECT tunnels to a local holder server through each proxy
   and reports the proxy's RSS and fds before and with them open, the RSS per tunnel
   (issue 11's target for regproxy: <= 8 KiB), and the latency of --healthz GET /healthz
   on fresh connections before and while they are open (target: <= 10 ms), median and
   max; then closes them and polls until regproxy's fds are back.
   `--idle 10000 --only idle` is issue 11's measurement (RLIMIT_NOFILE is raised: the
   client and the holder need one fd per tunnel each, regproxy two).
Loopback only; everything started here is stopped by PID at exit.
"""
import argparse
import asyncio
import os
import resource
import socket
import statistics
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


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


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
        await reader.read()  # until the proxy relays the client's close
        conns.remove(writer)
        writer.close()  # as a server does: the tunnel can go

    srv = await asyncio.start_server(on_conn, "127.0.0.1", port, backlog=4096)
    ready.set()
    async with srv:
        await srv.serve_forever()


def settled_rss(read, timeout=8.0):
    """RSS once two readings 1.2 s apart agree within 1%: the heap a burst of
    connections left free is given back a second after it (regproxy trims it then;
    squid and tinyproxy keep theirs), and idle tunnels are about the steady state."""
    last = read()
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        time.sleep(1.2)
        now = read()
        if abs(now - last) <= 0.01 * max(last, 1):
            return now
        last = now
    return last


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
                raise RuntimeError("proxy closed an idle tunnel (after %d)" % len(socks))
            head += b
        if not head.startswith(b"HTTP/1.1 200") and not head.startswith(b"HTTP/1.0 200"):
            raise RuntimeError("CONNECT answered %r" % head[:300])
    return socks


def healthz_ms(port, n):
    """n GET /healthz, each on a fresh connection (as a monitor probes); milliseconds."""
    out = []
    for _ in range(n):
        t0 = time.monotonic()
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close"
                      b"\r\n\r\n" % port)
            data = b""
            while True:
                b = s.recv(4096)
                if not b:
                    break
                data += b
        finally:
            s.close()
        out.append((time.monotonic() - t0) * 1e3)
        if not data.startswith(b"HTTP/1.1 200") or not data.endswith(b"ok\n"):
            raise RuntimeError("GET /healthz answered %r" % data[:80])
    return out


def idle_tunnels(a, proxies):
    hold_port = h.free_port()
    import threading
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    threading.Thread(target=lambda: loop.run_until_complete(hold_server(hold_port, ready)),
                     daemon=True).start()
    ready.wait(5)
    target = "127.0.0.1:%d" % hold_port
    print("\nidle tunnels: %d CONNECTs held open" % a.idle)
    print("%-10s %12s %12s %13s %8s %19s %19s" % (
        "", "RSS before", "RSS open", "per tunnel", "fds", "/healthz before", "/healthz open"))
    for name, port, pid in proxies:
        before = rss_mib(pid)
        fds0 = fd_count(pid)
        hz0 = healthz_ms(port, a.healthz) if name == "regproxy" else []
        try:
            socks = open_idle(port, target, a.idle)
        except (OSError, RuntimeError) as e:
            print("%-10s failed: %s" % (name, e))
            continue
        # Every CONNECT was answered; wait until the process stops opening fds.
        h.settled(lambda: fd_count(pid), 10, "%s fd count settled" % name)
        after = settled_rss(lambda: rss_mib(pid))
        fds1 = fd_count(pid)
        hz1 = healthz_ms(port, a.healthz) if name == "regproxy" else []

        def ms(xs):
            return "%6.2f / %6.2f ms" % (statistics.median(xs), max(xs)) if xs else "-"
        print("%-10s %8.1f MiB %8.1f MiB %9.2f KiB %8d %19s %19s" % (
            name, before, after, (after - before) * 1024 / a.idle, fds1 - fds0, ms(hz0), ms(hz1)))
        for s in socks:
            s.close()
        try:
            t0 = time.monotonic()
            h.wait_until(lambda: fd_count(pid) <= fds0, 10, "%s fds back" % name)
            print("%-10s fds back to %d %.1f s after the tunnels closed; RSS %.1f MiB" % (
                "", fds0, time.monotonic() - t0, rss_mib(pid)))
        except h.Timeout:
            print("%-10s fds NOT back after 10 s: %d (before %d)" % ("", fd_count(pid), fds0))
    if a.healthz:
        print("(/healthz: median / max of %d GETs, each on a new connection; "
              "targets: <= 8 KiB per tunnel, /healthz <= 10 ms)" % a.healthz)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--healthz", type=int, default=20, help="/healthz probes per measurement")
    ap.add_argument("--only", choices=("idle", "throughput"))
    ap.add_argument("--no-squid", action="store_true", help="measure regproxy alone")
    ap.add_argument("--no-splice", action="store_true",
                    help="regproxy with REGPROXY_NO_SPLICE=1 (the buffered relay)")
    a = ap.parse_args()
    # One fd per tunnel for the client and one for the holder here, two in each proxy.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(hard, 2 * a.idle + 4096)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
    except (ValueError, OSError):  # not root: the hard limit is the ceiling
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    lim = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if a.only != "throughput" and 2 * a.idle + 100 > lim:
        print("note: RLIMIT_NOFILE is %d (raising it needs CAP_SYS_RESOURCE): this process and"
              " regproxy have room for about %d tunnels, not %d" % (lim, (lim - 100) // 2, a.idle))

    rp = h.Regproxy(["--log-level", "warn", "--max-connections", str(a.idle + 1000)],
                    env={"REGPROXY_NO_SPLICE": "1"} if a.no_splice else None)
    sq = None if a.no_squid else h.Squid()
    if a.only != "idle":
        throughput_table(a, rp, sq)
    if a.idle and a.only != "throughput":
        proxies = [("regproxy", rp.port, rp.proc.pid)]
        if sq:
            proxies.append(("squid", sq.port, sq.proc.pid))
        idle_tunnels(a, proxies)


def throughput_table(a, rp, sq):
    size = a.size_mib << 20
    origin = h.Nginx()
    with open(origin.path("big.bin"), "wb") as f:
        f.truncate(size)  # sparse: nginx sends it from the page cache
    url = "http://127.0.0.1:%d/big.bin" % origin.http_port
    print("tunnel throughput: %d MiB over CONNECT (curl -p), best of %d" % (a.size_mib, a.runs))
    rows = [("direct",) + throughput("direct", url, None, None, size, a.runs),
            ("regproxy",) + throughput("regproxy", url, rp.url, rp.proc.pid, size, a.runs)]
    if sq:
        rows.append(("squid",) + throughput("squid", url, sq.url, sq.proc.pid, size, a.runs))
    print("%-10s %10s %12s %14s" % ("", "MB/s", "vs direct", "proxy CPU s"))
    for name, mbs, cpu in rows:
        print("%-10s %10.0f %11.2fx %14s" % (name, mbs, mbs / rows[0][1],
                                           "-" if name == "direct" else "%.2f" % cpu))
    if sq:
        print("regproxy/squid: throughput %.2fx, CPU %.2fx" % (
            rows[1][1] / rows[2][1], rows[1][2] / rows[2][2] if rows[2][2] else float("nan")))


if __name__ == "__main__":
    main()
