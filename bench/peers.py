#!/usr/bin/env python3
"""regproxy next to its peers (issue 14, "The suite"): one command, one markdown table.

  python3 bench/peers.py [--runs 3] [--size-mib 1024] [--only ROW[,ROW...]]
                         [--idle 2000] [--clients 50] [--setup-clients 8]
                         [--setup-seconds 3]
                         [--no-squid] [--no-haproxy] [--no-tinyproxy] [--no-nginx]
                         [--no-distribution] [--no-mitmproxy]

Rows (--only names): tunnel, idle, setups, hit, hit256, cold, clients50, mitm, handshakes.
Every row measures regproxy and its peers in the same run, alternating them run by run
(the order rotates by one each run), and reports the median of --runs. The big rows move
--size-mib MiB (default 1 GiB), the "256 MiB" rows a quarter of it. CPU-s/GiB is the
user+sys time of the serving process tree (threads and child processes included, from
/proc/PID/stat) during the transfer, divided by the GiB moved. Clients are curl (TLS 1.3,
TLS_AES_128_GCM_SHA256) writing to /dev/null, and a Python client for the set-up and
handshake rates. A peer whose binary is missing is skipped (and said so). Timings are
never asserted: it exits 0. Everything started here is stopped by PID at exit.
"""
import argparse
import contextlib
import multiprocessing
import os
import resource
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(BENCH, "..", "tests", "integration"))
sys.path.insert(0, BENCH)
import harness as h  # noqa: E402
import mitm as mitmbench  # noqa: E402
import tunnel as tunnelbench  # noqa: E402

HOST = "registry-1.docker.io"
ORIGIN = "origin.test"  # MITM pass-through target (in the test CA's leaf)
TLS = ["--tlsv1.3", "--tls13-ciphers", "TLS_AES_128_GCM_SHA256"]
CLK = os.sysconf("SC_CLK_TCK")
GIB = float(1 << 30)
ROWS = ("tunnel", "idle", "setups", "hit", "hit256", "cold", "clients50", "mitm", "handshakes")
PEER_BINS = {"squid": "squid", "haproxy": "haproxy", "tinyproxy": "tinyproxy",
             "nginx": "nginx", "distribution": "docker-registry", "mitmproxy": "mitmdump"}


def log(msg):
    sys.stderr.write("peers: %s\n" % msg)
    sys.stderr.flush()


# ---------------------------------------------------------------------------------------
# /proc: a process tree's CPU time and RSS

def _stat_fields(pid):
    with open("/proc/%d/stat" % pid) as f:
        return f.read().rsplit(")", 1)[1].split()


def tree(pid):
    """pid and its descendants."""
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                kids.setdefault(int(_stat_fields(int(d))[1]), []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    out = [pid]
    i = 0
    while i < len(out):
        out += kids.get(out[i], [])
        i += 1
    return out


def cpu_s(pids):
    """user+sys seconds of these processes' trees (threads included)."""
    total = 0.0
    for root in pids:
        for p in tree(root):
            try:
                f = _stat_fields(p)
                total += (int(f[11]) + int(f[12])) / CLK
            except (OSError, IndexError, ValueError):
                pass
    return total


def rss_kib(pids):
    """VmRSS summed over these processes' trees, KiB."""
    total = 0
    for root in pids:
        for p in tree(root):
            try:
                with open("/proc/%d/status" % p) as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
                            break
            except OSError:
                pass
    return total


@contextlib.contextmanager
def scope(name):
    """A harness cleanup scope: processes and temp dirs made inside go at its end."""
    s = h._Scope(name)
    h._scopes.append(s)
    try:
        yield
    finally:
        h._scopes.remove(s)
        for e in s.close():
            log("cleanup of %s: %r" % (name, e))


def lasting(make):
    """make() in the process scope: shared fixtures outlive the row that first needs them."""
    saved = h._scopes[1:]
    del h._scopes[1:]
    try:
        return make()
    finally:
        h._scopes.extend(saved)


def render(template, path, **values):
    with open(os.path.join(BENCH, template)) as f:
        text = f.read()
    for k, v in values.items():
        text = text.replace("@%s@" % k, str(v))
    return h.write_file(path, text)


def wait_port(proc, port, what, logpath=None, timeout=20):
    def ready():
        if not proc.alive():
            raise AssertionError("%s exited: %s" % (what, h.tail(logpath) if logpath else ""))
        return h.port_open("127.0.0.1", port)
    h.wait_until(ready, timeout, "%s listening" % what)


# ---------------------------------------------------------------------------------------
# Peers

class NginxPeer:
    """nginx, one worker, TLS 1.3: a docroot and /v2/ via proxy_cache to the registry."""

    def __init__(self, ca, reg_port, docroot):
        self.dir = h.tmpdir("rpbench-nginx-")
        for sub in ("tmp", "cache"):
            os.makedirs(os.path.join(self.dir, sub))
        self.port = h.free_port()
        conf = render("nginx-peers.conf.in", os.path.join(self.dir, "nginx.conf"),
                      dir=self.dir, port=self.port, reg_port=reg_port, cert=ca.chain,
                      key=ca.key, docroot=docroot,
                      user_line="user root;" if os.geteuid() == 0 else "")
        err = os.path.join(self.dir, "error.log")
        self.proc = h.Proc(["nginx", "-p", self.dir, "-e", err, "-c", conf], name="nginx",
                           stderr=os.path.join(self.dir, "stderr.log"))
        wait_port(self.proc, self.port, "nginx", err)

    def check_cached(self, size):
        """Say so if no file in the cache holds a body of size bytes (the warm rows would
        measure misses)."""
        def found():
            for d, _, files in os.walk(os.path.join(self.dir, "cache")):
                for f in files:
                    if os.path.getsize(os.path.join(d, f)) >= size:
                        return True
            return False
        try:
            h.wait_until(found, 10, "nginx cache file")
        except h.Timeout:
            log("WARNING: nginx has not cached the blob: its warm figures are misses")


class DistProxy:
    """distribution as a pull-through cache (proxy: remoteurl:) of the registry."""

    def __init__(self, ca, reg_port):
        self.dir = h.tmpdir("rpbench-distproxy-")
        self.port = h.free_port()
        bundle = os.path.join(self.dir, "bundle.crt")
        with open(bundle, "w") as out:
            with open(ca.ca_crt) as f:
                out.write(f.read())
            if os.path.exists(h.SYSTEM_BUNDLE):
                with open(h.SYSTEM_BUNDLE) as f:
                    out.write(f.read())
        conf = h.write_file(os.path.join(self.dir, "config.yml"), "\n".join([
            "version: 0.1",
            "log:", "  level: error", "  accesslog:", "    disabled: true",
            "storage:", "  filesystem:", "    rootdirectory: %s/data" % self.dir,
            "http:", "  addr: 127.0.0.1:%d" % self.port, "  secret: regproxy-bench",
            "  tls:", "    certificate: %s" % ca.chain, "    key: %s" % ca.key,
            "proxy:", "  remoteurl: https://127.0.0.1:%d" % reg_port, ""]))
        logp = os.path.join(self.dir, "registry.log")
        self.proc = h.Proc(["docker-registry", "serve", conf], name="docker-registry",
                           env=h.clean_env(SSL_CERT_FILE=bundle), stdout=logp, stderr=logp)
        wait_port(self.proc, self.port, "distribution (proxy mode)", logp)


class Haproxy:
    """haproxy as a plain TCP relay (splice on, one thread) in front of a target port."""

    def __init__(self, target_port):
        self.dir = h.tmpdir("rpbench-haproxy-")
        self.port = h.free_port()
        conf = h.write_file(os.path.join(self.dir, "haproxy.cfg"), "\n".join([
            "global", "  nbthread 1", "  maxconn 4000",
            "defaults", "  mode tcp", "  option splice-request", "  option splice-response",
            "  timeout connect 5s",
            "  timeout client 600s", "  timeout server 600s",
            "frontend relay", "  bind 127.0.0.1:%d" % self.port, "  default_backend target",
            "backend target", "  server t 127.0.0.1:%d" % target_port, ""]))
        logp = os.path.join(self.dir, "haproxy.log")
        self.proc = h.Proc(["haproxy", "-db", "-f", conf], name="haproxy", stdout=logp,
                           stderr=logp)
        wait_port(self.proc, self.port, "haproxy", logp)


class Tinyproxy:
    def __init__(self):
        self.dir = h.tmpdir("rpbench-tinyproxy-")
        os.chmod(self.dir, 0o1777)
        self.port = h.free_port()
        lines = ["Port %d" % self.port, "Listen 127.0.0.1", "Timeout 3600",
                 "MaxClients 20000", "Allow 127.0.0.1", "LogLevel Error",
                 "LogFile \"%s/tinyproxy.log\"" % self.dir,
                 "PidFile \"%s/tinyproxy.pid\"" % self.dir, "DisableViaHeader Yes"]
        if os.geteuid() == 0:
            lines += ["User nobody", "Group nogroup"]
        conf = h.write_file(os.path.join(self.dir, "tinyproxy.conf"), "\n".join(lines) + "\n")
        logp = os.path.join(self.dir, "stderr.log")
        self.proc = h.Proc(["tinyproxy", "-d", "-c", conf], name="tinyproxy", stdout=logp,
                           stderr=logp)
        wait_port(self.proc, self.port, "tinyproxy", logp)

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port


class Mitmdump:
    def __init__(self, ca):
        self.dir = h.tmpdir("rpbench-mitmdump-")
        self.port = h.free_port()
        logp = os.path.join(self.dir, "mitmdump.log")
        self.proc = h.Proc(["mitmdump", "-q", "--listen-host", "127.0.0.1", "--listen-port",
                            str(self.port), "--set", "confdir=%s" % self.dir,
                            "--set", "ssl_verify_upstream_trusted_ca=%s" % ca.ca_crt,
                            "--set", "stream_large_bodies=1m"],
                           name="mitmdump", env=h.clean_env(HOME=self.dir), stdout=logp,
                           stderr=logp)
        wait_port(self.proc, self.port, "mitmdump", logp, timeout=60)
        self.ca = os.path.join(self.dir, "mitmproxy-ca-cert.pem")

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port


def start_regproxy(ca, reg_port, origin_port, extra=()):
    rp = h.Regproxy(["--log-level", os.environ.get("RP_BENCH_LOG", "warn"), "--mitm", "%s,%s,.bench.test" % (HOST, ORIGIN),
                     "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, reg_port),
                     "--connect-to", "%s:443:127.0.0.1:%d" % (ORIGIN, origin_port),
                     "--upstream-ca", ca.ca_crt] + list(extra))
    rp.ca = os.path.join(rp.dir, "ca", "ca.crt")
    return rp


# ---------------------------------------------------------------------------------------
# Clients

def curl(url, args, size, pids=()):
    """One curl GET to /dev/null: MB/s and the CPU-s/GiB of pids' trees meanwhile."""
    argv = ["curl", "-sS", "--fail", "--max-time", "1800", "-o", "/dev/null", "-w",
            "%{size_download}"] + (TLS if url.startswith("https") else []) + list(args) + [url]
    c0 = cpu_s(pids)
    t0 = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True)
    secs = time.monotonic() - t0
    c1 = cpu_s(pids)
    got = int(r.stdout) if r.stdout.strip().isdigit() else -1
    if r.returncode != 0 or got != size:
        raise RuntimeError("curl %s: exit %d, %d of %d bytes: %s" % (
            url, r.returncode, got, size, r.stderr.strip()[-300:]))
    out = {"mbs": size / secs / 1e6}
    if pids:
        out["cpu"] = (c1 - c0) / (size / GIB)
    return out


def curl_many(n, url, args, size, pids):
    """n curl processes at once: aggregate MB/s, peak RSS (sampled) of pids' trees."""
    argv = ["curl", "-sS", "--fail", "--max-time", "1800", "-o", "/dev/null", "-w",
            "%{size_download}"] + (TLS if url.startswith("https") else []) + list(args) + [url]
    peak = [rss_kib(pids)]
    done = threading.Event()

    def sample():
        while not done.wait(0.05):
            peak[0] = max(peak[0], rss_kib(pids))
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    c0 = cpu_s(pids)
    t0 = time.monotonic()
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(n)]
    outs = [p.communicate() for p in procs]
    secs = time.monotonic() - t0
    c1 = cpu_s(pids)
    done.set()
    th.join()
    bad = [(p.returncode, o, e) for p, (o, e) in zip(procs, outs)
           if p.returncode != 0 or o.strip() != str(size).encode()]
    if bad:
        raise RuntimeError("%d of %d clients failed, e.g. exit %d, %r bytes: %s" % (
            len(bad), n, bad[0][0], bad[0][1], bad[0][2].decode(errors="replace")[-200:]))
    return {"mbs": n * size / secs / 1e6, "rss": peak[0] / 1024.0,
            "cpu": (c1 - c0) / (n * size / GIB)}


def _setup_worker(job):
    """One client process of the rate rows: TLS 1.3 handshakes (then close), as many as fit
    between t0 and t1 (CLOCK_MONOTONIC is system-wide). proxy_port None: straight to
    target_port. Otherwise a CONNECT first: to 127.0.0.1:target_port (a tunnel, the TLS
    server is the target), or, with mitm_host, to that host (a MITM: regproxy is the TLS
    server; "%d" in it makes a new host name per handshake, so a new leaf each time)."""
    proxy_port, target_port, cafile, t0, t1, mitm_host, ident = job
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    while time.monotonic() < t0:
        time.sleep(0.002)
    n = 0
    while time.monotonic() < t1:
        s = socket.create_connection(("127.0.0.1", proxy_port or target_port), timeout=10)
        name = "localhost"
        try:
            if proxy_port:
                if mitm_host:
                    name = mitm_host % (ident * 1000000 + n) if "%d" in mitm_host else mitm_host
                    target = "%s:443" % name
                else:
                    target = "127.0.0.1:%d" % target_port
                s.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target))
                          .encode())
                head = b""
                while b"\r\n\r\n" not in head:
                    b = s.recv(1024)
                    if not b:
                        raise RuntimeError("proxy closed before answering CONNECT")
                    head += b
                if not head.split(b" ", 2)[1:2] == [b"200"]:
                    raise RuntimeError("CONNECT answered %r" % head[:100])
            t = ctx.wrap_socket(s, server_hostname=name)
            t.close()
        finally:
            s.close()
        n += 1
    return n


def setups_rate(pool, clients, proxy_port, target_port, cafile, seconds, pids,
                mitm_host=None):
    """Handshakes per second with `clients` client processes at once, and the CPU
    milliseconds the serving processes (pids: trees) spent per handshake: with the
    clients on the same two cores, the rate is shared with them, the CPU per handshake
    is the server's own cost (its capacity is 1 / that)."""
    t0 = time.monotonic() + 0.3
    t1 = t0 + seconds
    c0 = cpu_s(pids)
    n = sum(pool.map(_setup_worker, [(proxy_port, target_port, cafile, t0, t1, mitm_host, i)
                                     for i in range(clients)]))
    ms = (cpu_s(pids) - c0) * 1000.0 / max(n, 1)
    return {"rate": n / seconds, "cpu_ms": ms}


def idle_rss(port, pids, target, n):
    """RSS added per idle CONNECT tunnel (KiB), n of them open at once."""
    pid = pids[0]
    before = rss_kib(pids)
    fds0 = tunnelbench.fd_count(pid)
    socks = tunnelbench.open_idle(port, target, n)
    try:
        h.settled(lambda: tunnelbench.fd_count(pid), 20, "fd count settled")
        after = tunnelbench.settled_rss(lambda: rss_kib(pids))
    finally:
        for s in socks:
            s.close()
    try:
        h.wait_until(lambda: tunnelbench.fd_count(pid) <= fds0, 20, "fds back")
    except h.Timeout:
        log("fds not back after 20 s (%d, before %d)" % (tunnelbench.fd_count(pid), fds0))
    return {"kib": (after - before) / float(n)}


# ---------------------------------------------------------------------------------------
# The shared fixtures: CA, registry with two blobs, an HTTP origin, a TLS docroot

class World:
    def __init__(self, a):
        self.a = a
        self.big = a.size_mib << 20
        self.small = max(1, a.size_mib // 4) << 20
        self.ca = h.shared_ca()
        self._reg = None
        self._origin = None
        self._blobs = {}
        self._holder = None
        self.docroot = h.tmpdir("rpbench-docroot-")
        with open(os.path.join(self.docroot, "big.bin"), "wb") as f:
            f.truncate(self.big)  # sparse: served from the page cache

    @property
    def reg(self):
        if self._reg is None:
            self._reg = lasting(lambda: h.Registry(self.ca))
        return self._reg

    @property
    def origin(self):
        """nginx (the harness's) with the sparse big file over plain HTTP."""
        if self._origin is None:
            self._origin = lasting(lambda: h.Nginx(self.ca))
            os.link(os.path.join(self.docroot, "big.bin"), self._origin.path("big.bin"))
        return self._origin

    def blob(self, size):
        """digest of a random blob of size bytes pushed to the registry (once)."""
        if size not in self._blobs:
            path = os.path.join(lasting(lambda: h.tmpdir("rpbench-blob-")), "blob.bin")
            log("pushing a %d MiB random blob" % (size >> 20))
            h.random_file(path, size)
            self._blobs[size] = mitmbench.push_blob(self.reg, self.ca.ca_crt, path)
            os.unlink(path)
        return self._blobs[size]

    def holder(self):
        """A server that holds idle tunnels open (bench/tunnel.py's)."""
        if self._holder is None:
            import asyncio
            port = h.free_port()
            ready = threading.Event()
            loop = asyncio.new_event_loop()
            threading.Thread(target=lambda: loop.run_until_complete(
                tunnelbench.hold_server(port, ready)), daemon=True).start()
            ready.wait(5)
            self._holder = "127.0.0.1:%d" % port
        return self._holder

    def regproxy(self, extra=()):
        return start_regproxy(self.ca, self.reg.port, self._tls_port(), extra)

    def _tls_port(self):
        return getattr(self, "tls_port", 443)

    def nginx(self):
        n = NginxPeer(self.ca, self.reg.port, self.docroot)
        return n

    def blob_path(self, dg):
        return "/v2/bench/blob/blobs/%s" % dg

    def rp_url(self, dg):
        return "https://%s%s" % (HOST, self.blob_path(dg))

    def nginx_url(self, ng, dg):
        return "https://127.0.0.1:%d%s" % (ng.port, self.blob_path(dg))

    def reg_url(self, dg, port=None):
        return "https://127.0.0.1:%d%s" % (port or self.reg.port, self.blob_path(dg))


# ---------------------------------------------------------------------------------------
# Rows: each returns [(peer, {metric: median}) ...], regproxy first

def start(name, make):
    """make() a peer's fixture; None (said so) when it does not start."""
    try:
        return make()
    except Exception as e:  # noqa: BLE001 - the table says which peer failed
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else repr(e)
        log("%s did not start: %s" % (name, msg))
        _start_errors[name] = "did not start: " + msg
        return None


_start_errors = {}


def alternate(a, peers):
    """peers: [(name, fn)], fn() -> {metric: value}. Runs them --runs times, the order
    rotated by one each run; returns [(name, {metric: median} or {"error": str})]. A peer
    whose fixture did not start (start() returned None) is reported as failed."""
    errors = {}
    for name, fn in peers:
        if name in _start_errors:
            errors[name] = _start_errors.pop(name)
    got = {name: [] for name, _ in peers}
    for r in range(a.runs):
        order = peers[r % len(peers):] + peers[:r % len(peers)]
        for name, fn in order:
            if name in errors:
                continue
            try:
                m = fn()
            except Exception as e:  # noqa: BLE001 - the table says which peer failed
                errors[name] = str(e).strip().splitlines()[0][:160] if str(e).strip() \
                    else repr(e)
                log("run %d %s failed: %s" % (r + 1, name, errors[name]))
                if os.environ.get("RP_BENCH_TRACE"):
                    traceback.print_exc()
                continue
            log("run %d %-22s %s" % (r + 1, name, " ".join(
                "%s=%.3g" % kv for kv in sorted(m.items()))))
            got[name].append(m)
    out = []
    for name, _ in peers:
        if name in errors:
            out.append((name, {"error": errors[name]}))
        else:
            ms = got[name]
            out.append((name, {k: statistics.median(m[k] for m in ms) for k in ms[0]}))
    return out


def row_tunnel(w, a, skip):
    size = w.big
    url = "http://127.0.0.1:%d/big.bin" % w.origin.http_port
    rp = w.regproxy()
    peers = [("regproxy", lambda: curl(url, ["-p", "-x", rp.url], size, [rp.proc.pid]))]
    if "squid" not in skip:
        sq = start("squid", h.Squid)
        peers.append(("squid", lambda: curl(url, ["-p", "-x", sq.url], size, [sq.proc.pid])))
    if "haproxy" not in skip:
        hp = start("haproxy relay", lambda: Haproxy(w.origin.http_port))
        peers.append(("haproxy relay", lambda: curl(
            "http://127.0.0.1:%d/big.bin" % hp.port, [], size, [hp.proc.pid])))
    if "tinyproxy" not in skip:
        tp = start("tinyproxy", Tinyproxy)
        peers.append(("tinyproxy", lambda: curl(url, ["-p", "-x", tp.url], size,
                                                [tp.proc.pid])))
    peers.append(("direct", lambda: curl(url, [], size)))
    return alternate(a, peers)


def row_idle(w, a, skip):
    n = a.idle
    target = w.holder()
    rp = w.regproxy(["--max-connections", str(n + 1000)])
    peers = [("regproxy", lambda: idle_rss(rp.port, [rp.proc.pid], target, n))]
    if "squid" not in skip:
        sq = start("squid", h.Squid)
        peers.append(("squid", lambda: idle_rss(sq.port, [sq.proc.pid], target, n)))
    if "tinyproxy" not in skip:
        tp = start("tinyproxy", Tinyproxy)
        peers.append(("tinyproxy", lambda: idle_rss(tp.port, [tp.proc.pid], target, n)))
    return alternate(a, peers)


def row_setups(w, a, skip):
    if "nginx" in skip:
        raise RuntimeError("needs nginx as the TLS server")
    ng = w.nginx()
    rp = w.regproxy()
    ca = w.ca.ca_crt
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(a.setup_clients) as pool:
        def run(port, pids):
            return lambda: setups_rate(pool, a.setup_clients, port, ng.port, ca,
                                       a.setup_seconds, pids)
        peers = [("regproxy", run(rp.port, [rp.proc.pid]))]
        if "squid" not in skip:
            sq = start("squid", h.Squid)
            if sq is not None:
                peers.append(("squid", run(sq.port, [sq.proc.pid])))
        peers.append(("direct", run(None, [ng.proc.pid])))
        return alternate(a, peers)


def _warm(fn):
    """One untimed GET first (fills the cache); then fn is the timed one."""
    fn()
    return fn


def row_hit(w, a, skip, size, direct=True):
    dg = w.blob(size)
    rp = w.regproxy()
    peers = [("regproxy", _warm(lambda: curl(w.rp_url(dg), ["-x", rp.url, "--cacert", rp.ca],
                                              size, [rp.proc.pid])))]
    if "nginx" not in skip:
        ng = w.nginx()
        peers.append(("nginx proxy_cache", _warm(lambda: curl(
            w.nginx_url(ng, dg), ["--cacert", w.ca.ca_crt], size, [ng.proc.pid]))))
        ng.check_cached(size)
    if direct and "distribution" not in skip:
        peers.append(("distribution direct", lambda: curl(
            w.reg_url(dg), ["--cacert", w.ca.ca_crt], size, [w.reg.proc.pid])))
    return alternate(a, peers)


def row_cold(w, a, skip):
    """Each run: a fresh instance with an empty cache, one GET (relayed while filling)."""
    size = w.big
    dg = w.blob(size)
    ca = w.ca.ca_crt

    def rp_cold():
        with scope("regproxy cold"):
            rp = w.regproxy()
            return curl(w.rp_url(dg), ["-x", rp.url, "--cacert", rp.ca], size, [rp.proc.pid])

    def nginx_cold():
        with scope("nginx cold"):
            ng = w.nginx()
            return curl(w.nginx_url(ng, dg), ["--cacert", ca], size, [ng.proc.pid])

    def dist_cold():
        with scope("distribution proxy cold"):
            dp = DistProxy(w.ca, w.reg.port)
            return curl(w.reg_url(dg, dp.port), ["--cacert", ca], size, [dp.proc.pid])

    peers = [("regproxy", rp_cold)]
    if "nginx" not in skip:
        peers.append(("nginx proxy_cache cold", nginx_cold))
    if "distribution" not in skip:
        peers.append(("distribution proxy cold", dist_cold))
    peers.append(("direct from the registry", lambda: curl(
        w.reg_url(dg), ["--cacert", ca], size, [w.reg.proc.pid])))
    return alternate(a, peers)


def row_clients(w, a, skip):
    size = w.small
    dg = w.blob(size)
    n = a.clients
    ca = w.ca.ca_crt
    rp = w.regproxy()
    curl(w.rp_url(dg), ["-x", rp.url, "--cacert", rp.ca], size)  # warm
    peers = [("regproxy", lambda: curl_many(n, w.rp_url(dg), ["-x", rp.url, "--cacert", rp.ca],
                                            size, [rp.proc.pid]))]
    if "nginx" not in skip:
        ng = w.nginx()
        curl(w.nginx_url(ng, dg), ["--cacert", ca], size)  # warm
        ng.check_cached(size)
        peers.append(("nginx 1 worker", lambda: curl_many(
            n, w.nginx_url(ng, dg), ["--cacert", ca], size, [ng.proc.pid])))
    if "distribution" not in skip:
        peers.append(("distribution", lambda: curl_many(
            n, w.reg_url(dg), ["--cacert", ca], size, [w.reg.proc.pid])))
    return alternate(a, peers)


def row_mitm(w, a, skip):
    """A GET that no cache keeps (a file from an nginx docroot, not a registry path)
    through each MITM: TLS terminated, re-encrypted upstream, relayed."""
    size = w.big
    ng = w.nginx()  # the TLS origin
    w.tls_port = ng.port
    rp = w.regproxy()
    url = "https://%s/big.bin" % ORIGIN
    peers = [("regproxy", lambda: curl(url, ["-x", rp.url, "--cacert", rp.ca], size,
                                       [rp.proc.pid]))]
    if "mitmproxy" not in skip:
        md = start("mitmdump", lambda: Mitmdump(w.ca))
        murl = "https://localhost:%d/big.bin" % ng.port
        peers.append(("mitmdump", lambda: curl(murl, ["-x", md.url, "--cacert", md.ca], size,
                                               [md.proc.pid])))
    peers.append(("direct from nginx", lambda: curl(
        "https://localhost:%d/big.bin" % ng.port, ["--cacert", w.ca.ca_crt], size)))
    return alternate(a, peers)


def row_handshakes(w, a, skip):
    """TLS handshakes through regproxy's MITM (regproxy is the TLS server: a cached leaf,
    and a new leaf minted per host) next to nginx as a TLS server, with --setup-clients
    client processes at once: handshakes per second, and the server's CPU per handshake."""
    if "nginx" in skip:
        raise RuntimeError("needs nginx as the TLS server")
    rp = w.regproxy()
    ng = w.nginx()
    ctx = multiprocessing.get_context("fork")
    runs = [0]
    with ctx.Pool(a.setup_clients) as pool:
        def mitm(host):
            return lambda: setups_rate(pool, a.setup_clients, rp.port, 0, rp.ca,
                                       a.setup_seconds, [rp.proc.pid], host)

        def fresh():
            runs[0] += 1
            return mitm("r%d-%%d.bench.test" % runs[0])()
        setups_rate(pool, 1, rp.port, 0, rp.ca, 0.2, [rp.proc.pid], "same.bench.test")
        peers = [("regproxy, cached leaf", mitm("same.bench.test")),
                 ("regproxy, new leaf per host", fresh),
                 ("nginx TLS server", lambda: setups_rate(pool, a.setup_clients, None, ng.port,
                                                          w.ca.ca_crt, a.setup_seconds,
                                                          [ng.proc.pid]))]
        return alternate(a, peers)


# ---------------------------------------------------------------------------------------
# The table

def fmt(m, kind):
    if "error" in m:
        return "failed: %s" % m["error"].replace("|", "/")
    if kind == "mbs":
        s = "%.0f MB/s" % m["mbs"]
        if "cpu" in m:
            s += ", %.2f CPU-s/GiB" % m["cpu"]
        if "rss" in m:
            s += ", peak RSS %.1f MiB" % m["rss"]
        return s
    if kind == "kib":
        return "%.2f KiB" % m["kib"]
    s = "%.0f /s" % m["rate"]
    if "cpu_ms" in m:
        s += ", %.3f CPU-ms each" % m["cpu_ms"]
    return s


def ratio(a, b, key):
    if "error" in a or "error" in b or not b.get(key):
        return None
    return a[key] / b[key]


def peer_cell(res, kind, first=1):
    """The peers column: each peer's figures and regproxy / peer."""
    rp = res[0][1]
    key = {"mbs": "mbs", "kib": "kib", "rate": "rate"}[kind]
    cells = []
    for name, m in res[first:]:
        c = "%s: %s" % (name, fmt(m, kind))
        r = ratio(rp, m, key)
        if r is not None:
            c += " (**%.2f×**" % r
            if kind == "mbs" and "cpu" in rp and m.get("cpu"):
                c += ", CPU %.2f×" % (rp["cpu"] / m["cpu"])
            if kind == "rate" and rp.get("cpu_ms") and m.get("cpu_ms"):
                c += ", capacity %.2f×" % (m["cpu_ms"] / rp["cpu_ms"])
            c += ")"
        cells.append(c)
    return "; ".join(cells) or "-"


def verdict(row, res):
    """Issue 14's target for the row, and whether regproxy met it in this run."""
    d = dict(res)
    rp = res[0][1]
    if "error" in rp:
        return "-"

    def r(peer, key):
        return ratio(rp, d[peer], key) if peer in d else None

    checks = []

    def need(label, value, ok):
        if value is None:
            checks.append("%s: n/a" % label)
        else:
            checks.append("%s %s" % (label, "✔" if ok(value) else "✘"))
    if row == "tunnel":
        need("≥1.2× squid", r("squid", "mbs"), lambda v: v >= 1.2)
        need("≤0.5 CPU-s/GiB", rp.get("cpu"), lambda v: v <= 0.5)
    elif row in ("hit", "hit256"):
        need("≥1.1× nginx", r("nginx proxy_cache", "mbs"), lambda v: v >= 1.1)
        need("≤0.8 CPU-s/GiB", rp.get("cpu"), lambda v: v <= 0.8)
    elif row == "cold":
        need("≥0.9× direct", r("direct from the registry", "mbs"), lambda v: v >= 0.9)
        need("≥1.2× nginx cold", r("nginx proxy_cache cold", "mbs"), lambda v: v >= 1.2)
        need("≤2.5 CPU-s/GiB", rp.get("cpu"), lambda v: v <= 2.5)
    elif row == "clients50":
        need("≥1.1× nginx", r("nginx 1 worker", "mbs"), lambda v: v >= 1.1)
        need("RSS ≤64 MiB", rp.get("rss"), lambda v: v <= 64)
    elif row == "setups":
        need("≥1.2× squid", r("squid", "rate"), lambda v: v >= 1.2)
        cap = None
        if "squid" in d and d["squid"].get("cpu_ms") and rp.get("cpu_ms"):
            cap = d["squid"]["cpu_ms"] / rp["cpu_ms"]
        need("capacity (1 / CPU per set-up) ≥1.2× squid", cap, lambda v: v >= 1.2)
    elif row == "handshakes":
        need("≥1.2× nginx", r("nginx TLS server", "rate"), lambda v: v >= 1.2)
        cap = None
        if "nginx TLS server" in d and d["nginx TLS server"].get("cpu_ms") and \
                rp.get("cpu_ms"):
            cap = d["nginx TLS server"]["cpu_ms"] / rp["cpu_ms"]
        need("capacity ≥1.2× nginx", cap, lambda v: v >= 1.2)
    elif row == "idle":
        need("≤8 KiB (issue 11)", rp.get("kib"), lambda v: v <= 8)
    else:
        return "-"
    return "; ".join(checks)


def versions(skip):
    """One short version string per program measured (the table's footnote)."""
    import re
    cmds = [("regproxy", [h.regproxy_bin(), "--version"]), ("curl", ["curl", "--version"]),
            ("distribution", ["docker-registry", "--version"]), ("nginx", ["nginx", "-v"]),
            ("squid", ["squid", "-v"]), ("haproxy", ["haproxy", "-v"]),
            ("tinyproxy", ["tinyproxy", "-v"]), ("mitmproxy", ["mitmdump", "--version"])]
    out = []
    for name, argv in cmds:
        if name in skip:
            continue
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        m = re.search(r"\d+\.\d+(\.\d+)?", r.stdout + r.stderr)
        out.append("%s %s" % (name, m.group(0) if m else "?"))
    return ", ".join(out)


def loadavg():
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size-mib", type=int, default=1024,
                    help="the big rows' size; the 256 MiB rows use a quarter of it")
    ap.add_argument("--only", default="", help="comma-separated rows: " + ",".join(ROWS))
    ap.add_argument("--idle", type=int, default=2000, help="idle tunnels held open")
    ap.add_argument("--clients", type=int, default=50, help="concurrent clients")
    ap.add_argument("--setup-clients", type=int, default=8,
                    help="client processes at once in the set-up and handshake rows")
    ap.add_argument("--setup-seconds", type=float, default=3.0)
    for p in PEER_BINS:
        ap.add_argument("--no-" + p, action="store_true", help="skip %s" % p)
    a = ap.parse_args()
    rows = [r for r in a.only.split(",") if r] or list(ROWS)
    for r in rows:
        if r not in ROWS:
            ap.error("unknown row %r (rows: %s)" % (r, ", ".join(ROWS)))
    skip = set()
    for p, binary in PEER_BINS.items():
        if getattr(a, "no_" + p):
            skip.add(p)
        elif not shutil.which(binary):
            log("%s: %s is not installed, skipping it" % (p, binary))
            skip.add(p)
    if not shutil.which("docker-registry") or not shutil.which("curl"):
        # The upstream of every registry row (and regproxy's --connect-to target).
        log("docker-registry (distribution) and curl must be installed: nothing measured")
        return 0

    # The idle row: one fd per tunnel here for the client and one for the holder, two in
    # each proxy (they inherit the limit).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(hard, 4 * a.idle + 4096)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    # Every temp dir (caches, registry storage, blobs) under one, removed at exit after
    # the processes are stopped (the process scope's cleanups run last, newest first).
    top = tempfile.mkdtemp(prefix="rpbench-")
    os.chmod(top, 0o755)  # squid and tinyproxy drop privileges and must traverse it
    tempfile.tempdir = top
    if not h.KEEP_TMP:
        h.defer(lambda: shutil.rmtree(top, ignore_errors=True))
    log("temp files under %s" % top)

    w = World(a)
    big, small = w.big >> 20, w.small >> 20
    spec = {
        "tunnel": ("%d MiB through a CONNECT tunnel" % big, "mbs",
                   lambda: row_tunnel(w, a, skip)),
        "idle": ("RSS per idle tunnel (%d open)" % a.idle, "kib",
                 lambda: row_idle(w, a, skip)),
        "setups": ("CONNECT + TLS setups per second (%d parallel clients)" % a.setup_clients,
                   "rate", lambda: row_setups(w, a, skip)),
        "hit": ("cached %d MiB blob over TLS (warm)" % big, "mbs",
                lambda: row_hit(w, a, skip, w.big)),
        "hit256": ("cached %d MiB blob (warm)" % small, "mbs",
                   lambda: row_hit(w, a, skip, w.small, direct=False)),
        "cold": ("%d MiB cold fill, served while filling" % big, "mbs",
                 lambda: row_cold(w, a, skip)),
        "clients50": ("%d concurrent clients on one cached %d MiB blob" % (a.clients, small),
                      "mbs", lambda: row_clients(w, a, skip)),
        "mitm": ("MITM pass-through of a %d MiB GET (nothing cached)" % big, "mbs",
                 lambda: row_mitm(w, a, skip)),
        "handshakes": ("TLS handshakes per second through the MITM (%d parallel clients)"
                       % a.setup_clients, "rate",
                       lambda: row_handshakes(w, a, skip)),
    }
    table = []
    t_start = time.monotonic()
    load0 = loadavg()
    for r in rows:
        title, kind, fn = spec[r]
        log("== %s (%s)" % (r, title))
        t0 = time.monotonic()
        with scope(r):
            try:
                res = fn()
            except Exception as e:  # noqa: BLE001 - one row failing is no reason to stop
                traceback.print_exc()
                table.append("| %s | failed: %s | | |" % (title, str(e).splitlines()[0][:200]
                                                             if str(e) else repr(e)))
                continue
        log("   %s took %.0f s" % (r, time.monotonic() - t0))
        if r == "handshakes":
            rpc = "cached leaf %s; new leaf per host %s" % (fmt(res[0][1], kind),
                                                            fmt(res[1][1], kind))
            peers = peer_cell(res, kind, first=2)
            fresh = ratio(res[1][1], res[2][1], "rate")
            if fresh is not None:
                peers += " (new leaf per host: %.2f×)" % fresh
        else:
            rpc = fmt(res[0][1], kind)
            peers = peer_cell(res, kind)
        table.append("| %s | %s | %s | %s |" % (title, rpc, peers, verdict(r, res)))
    print()
    print("regproxy next to its peers: median of %d run%s, peers alternated run by run; "
          "(×) = regproxy / peer (for RSS lower is better)" % (a.runs, "" if a.runs == 1
                                                                else "s"))
    print()
    print("| scenario | regproxy | peers, same run | target (issue 14) |")
    print("|---|---|---|---|")
    for line in table:
        print(line)
    print()
    print("%s; %d CPUs, load average %s at the start, %s at the end; %.0f s." % (
        versions(skip), os.cpu_count(), load0, loadavg(), time.monotonic() - t_start))
    if skip:
        print("Skipped: %s." % ", ".join(sorted(skip)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
