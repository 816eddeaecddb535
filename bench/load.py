#!/usr/bin/env python3
"""Load benchmark (issue 11, "Load and soak"): N concurrent clients for D seconds against
regproxy, mixing every way through it, all against loopback servers started here:

  hit      blob GETs through the MITM (CONNECT registry-1.docker.io:443, TLS with
           regproxy's CA, keep-alive) of blobs already in the cache
  miss     rounds of coalesced misses: the miss clients all GET the same new blob at once
           (one fill upstream, the others join it), then the next blob
  pass     tag lists through the MITM (always asked upstream: cache=pass)
  tunnel   CONNECT to nginx's HTTPS port, TLS with the test CA, one GET, close
  forward  absolute-form GETs to nginx's HTTP port over a keep-alive proxy connection

  python3 bench/load.py [--clients 1000] [--seconds 60]
                        [--mix hit=40,miss=20,pass=10,tunnel=15,forward=15]

Prints requests/s and p50/p99 latency per kind, every distinct error (there must be none),
regproxy's RSS (VmRSS/VmHWM) and open fds before, during (sampled every second) and
after, and whether fds and RSS return to the baseline within --settle seconds (polled).
Exit status 1 when there was an error or they did not return. Every body is checked
(blobs by sha256). The generator is one asyncio process: on a small machine it is often
the bottleneck (its CPU time is printed next to regproxy's).
"""
import argparse
import asyncio
import collections
import hashlib
import http.client
import os
import re
import resource
import ssl
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "integration"))
import harness as h  # noqa: E402

HOST = "registry-1.docker.io"
REPO = "library/load"
KINDS = ("hit", "miss", "pass", "tunnel", "forward")
CLK = os.sysconf("SC_CLK_TCK")
TIMEOUT = 30.0  # one request (or connection set-up) longer than this is an error


# -- regproxy's process, from /proc ----------------------------------------------------

def status_kib(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def sample(pid):
    return {"rss": status_kib(pid, "VmRSS") / 1024.0, "hwm": status_kib(pid, "VmHWM") / 1024.0,
            "fds": fd_count(pid)}


def fd_kinds(pid, ports):
    """regproxy's open fds by what they are: sockets by peer (ports: {port: name}), files."""
    inodes = {}
    for name in ("tcp", "tcp6"):
        try:
            with open("/proc/%d/net/%s" % (pid, name)) as f:
                next(f)
                for line in f:
                    p = line.split()
                    lport = int(p[1].rsplit(":", 1)[1], 16)
                    rport = int(p[2].rsplit(":", 1)[1], 16)
                    inodes[p[9]] = (lport, rport)
        except OSError:
            pass
    out = collections.Counter()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        m = re.match(r"socket:\[(\d+)\]", link)
        if not m:
            out["file/pipe/other"] += 1
            continue
        lport, rport = inodes.get(m.group(1), (None, None))
        if lport in ports:
            out["listener" if rport == 0 else "client of " + ports[lport]] += 1
        elif rport in ports:
            out["to " + ports[rport]] += 1
        else:
            out["other socket"] += 1
    return out


# -- setup: what the clients fetch ------------------------------------------------------

def push_blob(reg, ctx, repo, data):
    """Monolithic upload of data to the registry; returns its digest."""
    dg = "sha256:" + hashlib.sha256(data).hexdigest()
    c = http.client.HTTPSConnection("127.0.0.1", reg.port, context=ctx, timeout=30)
    try:
        c.request("POST", "/v2/%s/blobs/uploads/" % repo)
        r = c.getresponse()
        r.read()
        loc = r.getheader("Location")
        if r.status != 202 or not loc:
            raise SystemExit("upload start: %d" % r.status)
        loc = re.sub(r"^https?://[^/]+", "", loc)
        c.request("PUT", loc + ("&" if "?" in loc else "?") + "digest=" + dg, body=data,
                  headers={"Content-Type": "application/octet-stream"})
        r = c.getresponse()
        r.read()
        if r.status != 201:
            raise SystemExit("upload of %s: %d" % (dg, r.status))
    finally:
        c.close()
    return dg


def patch_nginx_connections(n):
    """The fixture's nginx allows 512 connections; tunnels and forwards need more."""
    render = h.render

    def wrapped(template_name, path, **values):
        out = render(template_name, path, **values)
        if template_name == "nginx.conf.in":
            with open(out) as f:
                text = f.read()
            with open(out, "w") as f:
                f.write(text.replace("worker_connections 512;", "worker_connections %d;" % n))
        return out
    h.render = wrapped


def raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, hard), max(want, hard)))
    except (ValueError, OSError):  # not root: the hard limit is the ceiling
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- the client side (asyncio) ----------------------------------------------------------

class LoadError(Exception):
    pass


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    m = re.match(rb"^HTTP/1\.[01] (\d{3})", lines[0])
    if not m:
        raise LoadError("bad status line %r" % lines[0][:80])
    status = int(m.group(1))
    hdrs = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(b":")
        hdrs[k.strip().lower()] = v.strip()
    if b"chunked" in hdrs.get(b"transfer-encoding", b"").lower():
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(parts)
    elif b"content-length" in hdrs:
        body = await reader.readexactly(int(hdrs[b"content-length"]))
    else:
        body = await reader.read()
    return status, hdrs, body


async def connect(proxy_port, target, ctx, server_hostname):
    """A CONNECT through regproxy to target, then TLS; returns (reader, writer)."""
    r, w = await asyncio.open_connection("127.0.0.1", proxy_port)
    try:
        w.write(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target.encode(), target.encode()))
        head = await r.readuntil(b"\r\n\r\n")
        if not re.match(rb"^HTTP/1\.[01] 200", head):
            raise LoadError("CONNECT %s answered %r" % (target, head.split(b"\r\n")[0][:80]))
        await w.start_tls(ctx, server_hostname=server_hostname)
    except BaseException:
        w.close()
        raise
    return r, w


def close(w):
    if w is not None:
        w.close()  # no wait_closed: a TLS close_notify exchange is not what is measured


class Stats:
    def __init__(self):
        self.lat = collections.defaultdict(list)  # kind -> seconds
        self.errors = collections.Counter()

    def error(self, kind, e):
        msg = str(e) or type(e).__name__
        if isinstance(e, asyncio.TimeoutError):
            msg = "no answer within %.0fs" % TIMEOUT
        self.errors["%s: %s: %s" % (kind, type(e).__name__, msg[:200])] += 1


class Rounds:
    """Coalesced misses: round r starts when every miss client finished round r-1 (and
    at least interval after r-1 started); all of them then ask blob r at once."""

    def __init__(self, blobs, members, interval, deadline):
        self.blobs, self.members, self.interval, self.deadline = blobs, members, interval, deadline
        self.current = -1
        self.started = asyncio.Event()
        self.finished = 0
        self.all_done = asyncio.Event()
        self.over = False
        self.ran = 0

    async def coordinate(self):
        loop = asyncio.get_running_loop()
        for r in range(len(self.blobs)):
            t0 = loop.time()
            if time.monotonic() >= self.deadline:
                break
            self.finished = 0
            self.all_done = asyncio.Event()
            self.current = r
            self.ran += 1
            ev, self.started = self.started, asyncio.Event()
            ev.set()
            await self.all_done.wait()
            pause = t0 + self.interval - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)  # pacing: one blob per interval at most
        self.over = True
        self.started.set()

    async def next(self, last):
        while self.current <= last and not self.over:
            await self.started.wait()
        return None if self.over else self.current

    def done(self):
        self.finished += 1
        if self.finished >= self.members:
            self.all_done.set()


async def client(kind, env, stats, deadline):
    """One client: requests of its kind until the deadline."""
    r = w = None
    served = 0
    last_round = -1
    while time.monotonic() < deadline:
        rnd = None
        try:
            if kind == "miss":
                rnd = await env.rounds.next(last_round)
                if rnd is None:
                    break
                last_round = rnd
            if kind == "tunnel":
                t0 = time.monotonic()
                r, w = await asyncio.wait_for(connect(env.port, env.tls_target, env.test_ctx,
                                                      "localhost"), TIMEOUT)
                w.write(b"GET /a.txt HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                status, _, body = await asyncio.wait_for(read_response(r), TIMEOUT)
                if status != 200 or body != env.a_txt:
                    raise LoadError("tunnel GET /a.txt: %d, %d bytes" % (status, len(body)))
                stats.lat[kind].append(time.monotonic() - t0)
                close(w)
                r = w = None
                continue
            if w is None or served >= env.reuse:
                close(w)
                t0 = time.monotonic()
                if kind == "forward":
                    r, w = await asyncio.wait_for(
                        asyncio.open_connection("127.0.0.1", env.port), TIMEOUT)
                else:
                    r, w = await asyncio.wait_for(
                        connect(env.port, HOST + ":443", env.rp_ctx, HOST), TIMEOUT)
                    stats.lat["mitm connect"].append(time.monotonic() - t0)
                served = 0
            if kind == "forward":
                req = (b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" %
                       (env.forward_url.encode(), env.http_port))
            else:
                if kind == "hit":
                    dg = env.hits[served % len(env.hits)]
                    path = "/v2/%s/blobs/%s" % (REPO, dg)
                elif kind == "miss":
                    dg = env.rounds.blobs[rnd]
                    path = "/v2/%s/blobs/%s" % (REPO, dg)
                else:
                    path = "/v2/%s/tags/list" % REPO
                req = b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path.encode(), HOST.encode())
            t0 = time.monotonic()
            w.write(req)
            status, hdrs, body = await asyncio.wait_for(read_response(r), TIMEOUT)
            dt = time.monotonic() - t0
            served += 1
            if status != 200:
                raise LoadError("GET %s: %d %r" % (req.split(b" ")[1][:90].decode(), status,
                                                   body[:100]))
            if kind in ("hit", "miss"):
                if "sha256:" + hashlib.sha256(body).hexdigest() != dg:
                    raise LoadError("blob %s: %d bytes that do not hash to it" % (dg, len(body)))
            elif kind == "pass":
                if b'"tags"' not in body:
                    raise LoadError("tags list: %r" % body[:100])
            elif body != env.b_txt:
                raise LoadError("forward GET: %d bytes, want %d" % (len(body), len(env.b_txt)))
            stats.lat[kind].append(dt)
            if b"close" in hdrs.get(b"connection", b"").lower():
                close(w)
                r = w = None
        except (OSError, EOFError, LoadError, asyncio.TimeoutError,
                asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError) as e:
            stats.error(kind, e)
            close(w)
            r = w = None
            if rnd is None and kind != "miss":
                await asyncio.sleep(0.05)  # not a sync: no tight loop against a failing path
        finally:
            if rnd is not None:
                env.rounds.done()
    close(w)


async def sampler(pid, samples, stop):
    while not stop.is_set():
        try:
            samples.append((time.monotonic(), sample(pid)))
        except OSError:
            return
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except asyncio.TimeoutError:
            pass


async def run_load(env, counts, seconds, pid, blobs):
    stats = Stats()
    t0 = time.monotonic()
    deadline = t0 + seconds
    env.rounds = Rounds(blobs, counts["miss"], env.round_interval, deadline)
    samples = []
    stop = asyncio.Event()
    samp = asyncio.ensure_future(sampler(pid, samples, stop))
    coord = asyncio.ensure_future(env.rounds.coordinate()) if counts["miss"] else None
    tasks = [client(kind, env, stats, deadline) for kind in KINDS for _ in range(counts[kind])]
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - t0
    if coord:
        coord.cancel()
    stop.set()
    await samp
    return stats, elapsed, samples


# -- report ------------------------------------------------------------------------------

def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def request_counts(rp):
    """regproxy_requests_total summed by (route, cache)."""
    out = collections.Counter()
    for (name, labels), v in rp.metrics().items():
        if name == "regproxy_requests_total":
            d = dict(labels)
            out["%s/%s" % (d.get("route"), d.get("cache"))] += v
    return out


def parse_mix(text):
    mix = {}
    for part in text.split(","):
        k, _, v = part.partition("=")
        if k.strip() not in KINDS:
            raise SystemExit("--mix: unknown kind %r (kinds: %s)" % (k, ", ".join(KINDS)))
        mix[k.strip()] = float(v)
    return mix


def split_clients(n, mix):
    total = sum(mix.values())
    counts = {k: int(n * mix.get(k, 0) / total) for k in KINDS}
    for k in sorted(KINDS, key=lambda k: -mix.get(k, 0)):  # rounding leftovers
        if sum(counts.values()) >= n:
            break
        if mix.get(k, 0) > 0:
            counts[k] += 1
    return counts


def wait_settled(pid, ports, timeout):
    """Until regproxy holds no client connection and its fd count stops moving."""
    try:
        h.wait_until(lambda: not fd_kinds(pid, ports).get("client of clients"), timeout,
                     "client connections closed", interval=0.1)
        h.settled(lambda: fd_count(pid), timeout, "fd count settled")
    except h.Timeout as e:
        print("warning: %s" % e)


class Env:
    pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--mix", default="hit=40,miss=20,pass=10,tunnel=15,forward=15",
                    help="share of the clients per kind (%s)" % ", ".join(KINDS))
    ap.add_argument("--miss-kib", type=int, default=1024, help="size of each coalesced blob")
    ap.add_argument("--round-interval", type=float, default=0.5,
                    help="a new coalesced-miss round at most this often (s)")
    ap.add_argument("--reuse", type=int, default=100,
                    help="keep-alive clients reconnect after this many requests")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run the load this many times (RSS after each: leak or plateau?)")
    ap.add_argument("--warmup", type=float, default=5.0,
                    help="a first load this long, before the baseline is taken (s)")
    ap.add_argument("--settle", type=float, default=10.0,
                    help="how long fds and RSS may take to return to the baseline (s)")
    ap.add_argument("--rss-slack-mib", type=float, default=8.0,
                    help="RSS this far above the baseline still counts as returned")
    a = ap.parse_args()
    counts = split_clients(a.clients, parse_mix(a.mix))
    nofile = raise_nofile(4 * a.clients + 1024)
    patch_nginx_connections(2 * a.clients + 512)

    ca = h.shared_ca()
    reg = h.Registry()
    origin = h.Nginx()
    env = Env()
    env.http_port = origin.http_port
    env.tls_target = "127.0.0.1:%d" % origin.https_port
    env.forward_url = "http://127.0.0.1:%d/b.txt" % origin.http_port
    with open(origin.path("a.txt"), "rb") as f:
        env.a_txt = f.read()
    with open(origin.path("b.txt"), "rb") as f:
        env.b_txt = f.read()
    env.reuse = a.reuse
    env.round_interval = a.round_interval

    # Hits: the layers of an image pulled once through regproxy. Misses: raw blobs in the
    # same (public) repository, one per round, nobody asked for before.
    img = h.OciImage(os.path.join(h.tmpdir(), "img"), tag="v1",
                     layer_sizes=(4 << 10, 64 << 10, 256 << 10))
    h.skopeo(["copy", "--dest-cert-dir", ca.certdir, "oci:%s:v1" % img.path,
              "docker://127.0.0.1:%d/%s:v1" % (reg.port, REPO)])
    reg_ctx = ssl.create_default_context(cafile=ca.ca_crt)
    n_rounds = (int((a.seconds * a.repeat + a.warmup) / a.round_interval) + 4 + 2 * a.repeat
                if counts["miss"] else 0)
    t0 = time.monotonic()
    env.miss_blobs = [push_blob(reg, reg_ctx, REPO, os.urandom(a.miss_kib << 10))
                      for _ in range(n_rounds)]
    print("setup: pushed an image and %d blobs of %d KiB in %.1f s" % (
        n_rounds, a.miss_kib, time.monotonic() - t0), flush=True)

    rp = h.Regproxy(["--log-level", "warn", "--mitm", HOST, "--upstream-ca", ca.ca_crt,
                     "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, reg.port),
                     "--max-connections", str(2 * a.clients + 100)])
    pid = rp.proc.pid
    env.port = rp.port
    env.rp_ctx = ssl.create_default_context(cafile=os.path.join(rp.dir, "ca", "ca.crt"))
    env.test_ctx = ssl.create_default_context(cafile=ca.ca_crt)
    cdir = h.tmpdir()
    with open(os.path.join(rp.dir, "ca", "ca.crt"), "rb") as src:
        h.write_file(os.path.join(cdir, "ca.crt"), src.read())
    h.skopeo(["copy", "--src-cert-dir", cdir, "docker://%s/%s:v1" % (HOST, REPO),
              "oci:%s:v1" % os.path.join(h.tmpdir(), "pulled")], env={"HTTPS_PROXY": rp.url})
    env.hits = sorted(img.layers)
    for dg in env.hits:  # cached and verified before the load starts
        h.wait_until(lambda: rp.get_admin("/cache/objects/" + dg).status == 200, 10,
                     "%s in the cache" % dg)

    ports = {rp.port: "clients", reg.port: "registry", origin.http_port: "nginx http",
             origin.https_port: "nginx https"}
    cold = sample(pid)
    print("load: %d clients (%s) for %.0f s; regproxy --max-connections %d, RLIMIT_NOFILE %d" % (
        a.clients, ", ".join("%s %d" % (k, counts[k]) for k in KINDS), a.seconds,
        2 * a.clients + 100, nofile), flush=True)
    print("cold: RSS %.1f MiB, %d fds" % (cold["rss"], cold["fds"]), flush=True)
    n_warm = int(a.warmup / a.round_interval) + 2 if a.warmup > 0 else 0
    if a.warmup > 0:
        # The allocator keeps what a first load made it take (glibc arenas, no malloc_trim):
        # the baseline that later loads must return to is the one after a first load.
        wstats, _, _ = asyncio.run(run_load(env, counts, a.warmup, pid,
                                            env.miss_blobs[:n_warm]))
        wait_settled(pid, ports, a.settle)
        print("after a %.0f s warm-up load (%d requests, %d errors): RSS %.1f MiB, %d fds" % (
            a.warmup, sum(len(x) for k, x in wstats.lat.items() if k in KINDS),
            sum(wstats.errors.values()), status_kib(pid, "VmRSS") / 1024.0, fd_count(pid)),
            flush=True)
    before_counts = request_counts(rp)
    base = sample(pid)
    base_kinds = fd_kinds(pid, ports)
    c0, my0 = cpu_seconds(pid), time.process_time()
    stats_errors_seen = collections.Counter()
    print("before: RSS %.1f MiB (HWM %.1f), %d fds: %s" % (
        base["rss"], base["hwm"], base["fds"], dict(base_kinds)), flush=True)

    per_run = (len(env.miss_blobs) - n_warm) // a.repeat
    for i in range(a.repeat - 1):
        # Earlier repeats: one line each. RSS that keeps climbing from one to the next is
        # a leak; RSS that stops at a plateau is the allocator keeping its heap.
        rst, _, _ = asyncio.run(run_load(env, counts, a.seconds, pid, env.miss_blobs[
            n_warm + i * per_run:n_warm + (i + 1) * per_run]))
        wait_settled(pid, ports, a.settle)
        s = sample(pid)
        print("repeat %d: %d requests, %d errors; settled: RSS %.1f MiB, %d fds (%d to the "
              "registry)" % (i + 1, sum(len(x) for k, x in rst.lat.items() if k in KINDS),
                             sum(rst.errors.values()), s["rss"], s["fds"],
                             fd_kinds(pid, ports).get("to registry", 0)), flush=True)
        for msg, n in rst.errors.items():
            stats_errors_seen[msg] += n
    before_counts = request_counts(rp)
    c0, my0 = cpu_seconds(pid), time.process_time()
    stats, elapsed, samples = asyncio.run(run_load(env, counts, a.seconds, pid, env.miss_blobs[
        n_warm + (a.repeat - 1) * per_run:]))
    stats.errors.update(stats_errors_seen)
    rp_cpu, my_cpu = cpu_seconds(pid) - c0, time.process_time() - my0

    # After: poll until fds and RSS are back (or the deadline passes). Idle connections
    # in libcurl's pool to the registry may stay (up to its 118 s max age): counted apart.
    t_end = time.monotonic()
    last = {}
    base_own = base["fds"] - base_kinds.get("to registry", 0)

    def returned():
        last.update(sample(pid))
        kinds = fd_kinds(pid, ports)
        last["own"] = last["fds"] - kinds.get("to registry", 0)
        last["pool"] = kinds.get("to registry", 0)
        return last["own"] <= base_own and last["rss"] <= base["rss"] + a.rss_slack_mib
    try:
        h.wait_until(returned, a.settle, "baseline", interval=0.1)
        back = time.monotonic() - t_end
    except h.Timeout:
        back = None
    after_kinds = fd_kinds(pid, ports)
    after_counts = request_counts(rp)

    print("\nduring (every second): t, RSS MiB, fds")
    step = max(1, len(samples) // 15)
    for i, (t, s) in enumerate(samples):
        if i % step == 0 or i == len(samples) - 1:
            print("  %5.1fs %8.1f %6d" % (t - samples[0][0], s["rss"], s["fds"]))
    peak_fds = max([s["fds"] for _, s in samples] or [0])
    print("\n%-13s %9s %10s %10s %10s" % ("kind", "requests", "req/s", "p50 ms", "p99 ms"))
    total = 0
    for kind in KINDS + ("mitm connect",):
        xs = stats.lat.get(kind, [])
        if kind != "mitm connect":
            total += len(xs)
        if not xs and kind == "mitm connect":
            continue
        print("%-13s %9d %10.0f %10.1f %10.1f" % (kind, len(xs), len(xs) / elapsed,
                                                 pct(xs, 50) * 1e3, pct(xs, 99) * 1e3))
    print("%-13s %9d %10.0f   (%.1f s; %d coalesced-miss rounds)" % (
        "all", total, total / elapsed, elapsed, env.rounds.ran))
    print("CPU seconds: regproxy %.1f, this load generator %.1f (%.0f%% of one core)" % (
        rp_cpu, my_cpu, 100.0 * my_cpu / elapsed))
    print("regproxy's view (regproxy_requests_total by route/cache, during the load):")
    for k in sorted(after_counts):
        d = after_counts[k] - before_counts.get(k, 0)
        if d:
            print("  %-22s %8d" % (k, d))
    nerr = sum(stats.errors.values())
    print("errors: %d" % nerr)
    for msg, n in stats.errors.most_common():
        print("  %6d x %s" % (n, msg))
    print("regproxy RSS MiB: before %.1f, peak %.1f (VmHWM), after %.1f; fds: before %d, "
          "peak %d, after %d" % (base["rss"], last["hwm"], last["rss"], base["fds"],
                                 peak_fds, last["fds"]))
    print("idle upstream connections to the registry (libcurl's pool): before %d, after %d" % (
        base_kinds.get("to registry", 0), last["pool"]))
    if back is not None:
        print("back to baseline (fds besides the pool <= %d, RSS <= %.1f MiB) %.1f s after "
              "the load" % (base_own, base["rss"] + a.rss_slack_mib, back))
    else:
        print("NOT back to baseline %.0f s after the load: fds %d (before %d) %s; RSS %.1f MiB"
              " (before %.1f)" % (a.settle, last["fds"], base["fds"], dict(after_kinds),
                                   last["rss"], base["rss"]))
    rp.check()
    if not rp.alive():
        raise SystemExit("regproxy died")
    sys.exit(1 if nerr or back is None else 0)


if __name__ == "__main__":
    main()
