"""The site tier (issue 10, docs/fleet.md) in network namespaces: a token-auth origin behind
a rate-limited link, a site tier of regproxy instances behind HAProxy, and node namespaces
each running regproxy with the site as upstream mirror; skopeo in every node pulls the same
multi-layer image at once.

    origin ns   10.200.1.2 registry-1.docker.io (distribution, TLS :443, token auth)
                10.200.1.3 auth.docker.io       (token server, TLS :443)
        | veth o0 -- so, `tc … tbf rate 100mbit` on o0: every byte the origin sends
    site ns     10.200.1.1 | br0 10.200.2.1 = regproxy-site.test
                HAProxy :5000 (deploy/haproxy.cfg) -> 3 regproxy in mirror mode on
                127.0.0.1, anonymous tokens of their own; ip_forward for the nodes
        | bridge br0, one veth per node
    node ns × 6 10.200.2.11…16, default route via the site: the origin is reached only
                over the shaped link. regproxy --mitm registry-1.docker.io
                --upstream-mirror docker.io=http://regproxy-site.test:5000, skopeo with
                HTTPS_PROXY at it, no credentials (library/pub reads anonymously).

- a wave: the origin's access log shows each blob GET once, the shaped link carried about
  one image, every node's copy is byte-exact; a second wave of fresh nodes makes no origin
  blob request;
- a site instance SIGKILLed (by PID) while it fills: every pull completes, `regproxy cache
  verify` passes on every node and site instance (the killed one too);
- the whole site down (instances dead: HAProxy 503; HAProxy gone: refused): every pull
  completes from the origin.
(A mirror answering a wrong body is test_upstream_mirror.py.) Runs only as root; skips
with the reason otherwise. Namespaces are removed at the end, pass or fail.
"""

import http.server
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.parse

import harness as h

TAG = "%d" % os.getpid()
NODES = 6
SITE = 3
ORIGIN_NS, SITE_NS = "rpo" + TAG, "rps" + TAG
NODE_NS = ["rpn%s-%d" % (TAG, i) for i in range(NODES)]
REG_IP, TS_IP, SITE_UP_IP, SITE_IP = "10.200.1.2", "10.200.1.3", "10.200.1.1", "10.200.2.1"
SITE_NAME, SITE_PORT = "regproxy-site.test", 5000
MIRROR = "http://%s:%d" % (SITE_NAME, SITE_PORT)
HOST, REPO = "registry-1.docker.io", "library/pub"
RATE = "100mbit"
HAPROXY_CFG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                           "deploy", "haproxy.cfg")


# ---- namespaces (as test_transparent.py builds them) ------------------------------

def sh(*argv, check=True):
    r = subprocess.run(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=20)
    if check and r.returncode != 0:
        raise AssertionError("%s failed (%d): %s" % (" ".join(argv), r.returncode,
                                                    r.stderr.decode(errors="replace")))
    return r


def nsx(ns, *argv):
    return sh("ip", "netns", "exec", ns, *argv)


in_ns = h.in_netns


def all_ns():
    return [ORIGIN_NS, SITE_NS] + NODE_NS


def make_namespaces():
    for ns in all_ns():
        sh("ip", "netns", "add", ns)
    h.defer(remove_namespaces)
    o, s = ORIGIN_NS, SITE_NS
    sh("ip", "link", "add", "o0", "netns", o, "type", "veth", "peer", "name", "so", "netns", s)
    for cmd in (["ip", "addr", "add", REG_IP + "/24", "dev", "o0"],
                ["ip", "addr", "add", TS_IP + "/24", "dev", "o0"],
                ["ip", "link", "set", "o0", "up"], ["ip", "link", "set", "lo", "up"],
                ["ip", "route", "add", "default", "via", SITE_UP_IP],
                # The WAN: everything the origin sends leaves through this queue.
                ["tc", "qdisc", "add", "dev", "o0", "root", "tbf", "rate", RATE,
                 "burst", "64kb", "latency", "50ms"]):
        nsx(o, *cmd)
    for cmd in (["ip", "addr", "add", SITE_UP_IP + "/24", "dev", "so"],
                ["ip", "link", "add", "br0", "type", "bridge"],
                ["ip", "addr", "add", SITE_IP + "/24", "dev", "br0"],
                ["ip", "link", "set", "so", "up"], ["ip", "link", "set", "br0", "up"],
                ["ip", "link", "set", "lo", "up"],
                ["sysctl", "-qw", "net.ipv4.ip_forward=1"]):
        nsx(s, *cmd)
    for i, n in enumerate(NODE_NS):
        sh("ip", "link", "add", "n0", "netns", n, "type", "veth", "peer", "name", "sn%d" % i,
           "netns", s)
        nsx(s, "ip", "link", "set", "sn%d" % i, "master", "br0")
        nsx(s, "ip", "link", "set", "sn%d" % i, "up")
        for cmd in (["ip", "addr", "add", "10.200.2.%d/24" % (11 + i), "dev", "n0"],
                    ["ip", "link", "set", "n0", "up"], ["ip", "link", "set", "lo", "up"],
                    ["ip", "route", "add", "default", "via", SITE_IP]):
            nsx(n, *cmd)
    # Names without DNS: `ip netns exec` binds /etc/netns/NS/hosts over /etc/hosts.
    hosts = {o: "%s %s\n%s auth.docker.io\n" % (REG_IP, HOST, TS_IP)}
    for n in NODE_NS:
        hosts[n] = "%s %s\n" % (SITE_IP, SITE_NAME)
    for ns, text in hosts.items():
        d = "/etc/netns/%s" % ns
        os.makedirs(d, exist_ok=True)
        h.write_file(os.path.join(d, "hosts"), "127.0.0.1 localhost\n" + text, mode=0o644)


def remove_namespaces():
    for ns in all_ns():
        sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree("/etc/netns/%s" % ns, ignore_errors=True)


def origin_tx_bytes():
    """Bytes the origin sent over the shaped link (its veth's counter)."""
    j = json.loads(sh("ip", "-n", ORIGIN_NS, "-j", "-s", "link", "show", "dev", "o0").stdout)
    return j[0]["stats64"]["tx"]["bytes"]


# ---- the origin: token server and registry in the origin namespace -----------------

class OriginRegistry(h.TokenRegistry):
    """distribution with token auth on REG_IP:443 in the origin namespace."""

    def __init__(self, ts):
        self.token_server = ts
        self.ca = CA
        self.dir = h.tmpdir("rpsitens-registry-")
        self.port = 443
        conf = self._render_conf()
        with open(conf) as f:
            text = f.read().replace("addr: 127.0.0.1:443", "addr: %s:443" % REG_IP)
        h.write_file(conf, text)
        self.log_path = os.path.join(self.dir, "registry.log")
        self.proc = h.Proc(["ip", "netns", "exec", ORIGIN_NS, "docker-registry", "serve", conf],
                           name="docker-registry", stdout=self.log_path, stderr=self.log_path)
        h.defer(lambda: self.proc.stop(signal.SIGTERM, timeout=3))
        ctx = ssl.create_default_context(cafile=CA.ca_crt)

        def ready():
            if not self.proc.alive():
                raise AssertionError("registry exited: %s" % h.tail(self.log_path))

            def get():
                s = socket.create_connection((REG_IP, 443), timeout=2)
                c = h.HttpConn(sock=ctx.wrap_socket(s, server_hostname=HOST))
                try:
                    return c.request("GET", "/v2/", [("Host", HOST)]).status
                finally:
                    c.close()
            return in_ns(ORIGIN_NS, get) == 401
        h.wait_until(ready, 15, "token registry GET /v2/ in the origin namespace")

    def blob_gets(self):
        """{digest: count} of blob GETs the origin answered with a body (200/206)."""
        out = {}
        for m in re.finditer(r'"GET /v2/%s/blobs/(sha256:[0-9a-f]{64})[^"]*" (\d{3})' % REPO,
                             open(self.log_path, errors="replace").read()):
            if m.group(2) in ("200", "206"):
                out[m.group(1)] = out.get(m.group(1), 0) + 1
        return out


def token_server_in_origin():
    """harness.HubTokenServer, its listening socket made in the origin namespace on
    TS_IP:443 (the harness class binds 127.0.0.1:<free port>)."""
    real = http.server.ThreadingHTTPServer

    class OnTsIp(real):
        def __init__(self, addr, handler):
            super().__init__((TS_IP, 443), handler)
    http.server.ThreadingHTTPServer = OnTsIp
    try:
        ts = in_ns(ORIGIN_NS, lambda: h.HubTokenServer(ca=CA, users={"alice": "s3cret"},
                                                       public=(REPO,)))
    finally:
        http.server.ThreadingHTTPServer = real
    ts.port = 443
    return ts


def ns_skopeo(ns, args, env=None):
    d = h.tmpdir("rpit-skopeo-")
    regconf = h.write_file(os.path.join(d, "registries.conf"), "")
    e = h.clean_env(HOME=d, CONTAINERS_REGISTRIES_CONF=regconf, TMPDIR=d, XDG_RUNTIME_DIR=d)
    e.update(env or {})
    return h.run(["ip", "netns", "exec", ns, "skopeo", "--insecure-policy", "--tmpdir", d,
                  "--override-os", "linux", "--override-arch", "amd64"] + list(args),
                 timeout=120, env=e)


def setup():
    global CA, TS, REG, IMG, IMG_SIZE, REAL_BIN
    if os.geteuid() != 0:
        raise h.Skip("needs root (network namespaces, tc)")
    for tool in ("ip", "tc", "haproxy", "docker-registry", "skopeo"):
        if shutil.which(tool) is None:
            raise h.Skip("%s is not installed" % tool)
    probe = "rpprobe" + TAG
    if sh("ip", "netns", "add", probe, check=False).returncode != 0:
        raise h.Skip("cannot create a network namespace here (ip netns add failed)")
    sh("ip", "netns", "del", probe, check=False)
    REAL_BIN = h.regproxy_bin()
    CA = h.TestCA(names=["localhost", HOST, "auth.docker.io"], ips=(REG_IP, TS_IP),
                  scoped_dir=h.tmpdir("rpsitens-ca-"))
    make_namespaces()
    TS = token_server_in_origin()
    REG = OriginRegistry(TS)
    # Six blobs, ~12 MiB: at 100 Mbit/s the origin needs about a second per image.
    IMG = h.OciImage(os.path.join(h.tmpdir("rpsitens-img-"), "src"), tag="1",
                     layer_sizes=(6 << 20, 3 << 20, 2 << 20, 1 << 20, 300 * 1024, 4096))
    ns_skopeo(ORIGIN_NS, ["copy", "--dest-cert-dir", CA.certdir, "--dest-creds", "alice:s3cret",
                          "oci:%s:1" % IMG.path, "docker://%s/%s:1" % (HOST, REPO)])
    d = os.path.join(IMG.path, "blobs", "sha256")
    IMG_SIZE = sum(os.path.getsize(os.path.join(d, x[7:])) for x in IMG.blobs | {IMG.manifest})


# ---- regproxy and HAProxy inside namespaces ------------------------------------------

def ns_regproxy(ns, args):
    """harness.Regproxy run through `ip netns exec` (the wrapper execs, so the PID is
    regproxy's), listening on 127.0.0.1:<port> inside ns; ready when /healthz there is ok."""
    wrapper = os.path.join(h.tmpdir("rpit-nsbin-"), "regproxy-in-ns")
    h.write_file(wrapper, '#!/bin/sh\nexec ip netns exec %s %s "$@"\n' % (ns, REAL_BIN),
                 mode=0o755)
    saved = os.environ.get("REGPROXY_BIN")
    os.environ["REGPROXY_BIN"] = wrapper
    try:
        rp = h.Regproxy(["--listen", "127.0.0.1:%d" % h.free_port(), "--log-level", "info",
                         "--connect-to", "%s:443:%s:443" % (HOST, REG_IP),
                         "--connect-to", "auth.docker.io:443:%s:443" % TS_IP,
                         "--upstream-ca", CA.ca_crt] + list(args), ready=None)
    finally:
        if saved is None:
            os.environ.pop("REGPROXY_BIN", None)
        else:
            os.environ["REGPROXY_BIN"] = saved
    rp.ns = ns

    def ready():
        if not rp.alive():
            raise AssertionError("regproxy exited: %s" % h.tail(rp.stderr_path))
        r = admin(rp, "/healthz")
        return r.status == 200 and r.body.strip() == b"ok"
    h.wait_until(ready, 15, "regproxy /healthz in %s" % ns)
    return rp


def admin(rp, path):
    def get():
        try:
            c = h.HttpConn("127.0.0.1", rp.port, timeout=2)
        except OSError:
            return h.Response("HTTP/1.1", 0, "", [], b"", b"")
        try:
            return c.request("GET", path, [("Host", "127.0.0.1"), ("Connection", "close")])
        finally:
            c.close()
    return in_ns(rp.ns, get)


class HAProxy:
    """haproxy -db in the site namespace with deploy/haproxy.cfg's defaults, frontend and
    backend, bound to SITE_IP:5000, one server line per site instance; a global section of
    its own (log to stdout, a stats socket in the file system, reachable from here)."""

    def __init__(self, servers):
        self.dir = h.tmpdir("rpit-haproxy-")
        self.sock = os.path.join(self.dir, "admin.sock")
        text = open(HAPROXY_CFG).read()
        body = text[text.index("\ndefaults"):]
        body = re.sub(r"(?m)^(\s*)bind \S+", r"\g<1>bind %s:%d" % (SITE_IP, SITE_PORT), body)
        body = re.sub(r"(?m)^\s*server site\d+ .*\n", "", body).rstrip("\n") + "\n"
        for i, port in enumerate(servers):
            body += "    server site%d 127.0.0.1:%d check\n" % (i + 1, port)
        conf = ("global\n    log stdout format raw local0 info\n"
                "    stats socket %s mode 600 level admin\n    maxconn 2000\n" % self.sock) + body
        self.conf = h.write_file(os.path.join(self.dir, "haproxy.cfg"), conf)
        h.run(["haproxy", "-c", "-q", "-f", self.conf])
        self.log_path = os.path.join(self.dir, "haproxy.log")
        self.proc = h.Proc(["ip", "netns", "exec", SITE_NS, "haproxy", "-db", "-f", self.conf],
                           name="haproxy", stdout=self.log_path, stderr=self.log_path)
        n = len(servers)
        h.wait_until(lambda: self.up() == n, 10, "haproxy with %d servers UP" % n)

    def cmd(self, line):
        if not self.proc.alive():
            raise AssertionError("haproxy exited: %s" % h.tail(self.log_path))
        s = socket.socket(socket.AF_UNIX)
        try:
            s.settimeout(2)
            s.connect(self.sock)
            s.sendall(line.encode() + b"\n")
            out = b""
            while True:
                b = s.recv(65536)
                if not b:
                    return out.decode()
                out += b
        finally:
            s.close()

    def up(self):
        rows = [r.split(",") for r in self.cmd("show stat").splitlines() if r and r[0] != "#"]
        return sum(1 for r in rows if r[1].startswith("site") and r[17].startswith("UP"))

    def stop(self):
        self.proc.stop(signal.SIGTERM, timeout=5)


def site_tier(n=SITE):
    # Mirror mode (docker.io by ?ns=), the site's own anonymous token from auth.docker.io,
    # and the name the nodes use for it.
    insts = [ns_regproxy(SITE_NS, ["--mitm", "", "--server-names", SITE_NAME])
             for _ in range(n)]
    return insts, HAProxy([s.port for s in insts])


def nodes(n=NODES, mirror=MIRROR):
    extra = ["--upstream-mirror", "docker.io=%s" % mirror] if mirror else []
    return [ns_regproxy(NODE_NS[i], ["--mitm", HOST] + extra) for i in range(n)]


def pull(rp):
    certs = h.tmpdir()
    shutil.copy(os.path.join(rp.dir, "ca", "ca.crt"), os.path.join(certs, "regproxy.crt"))
    shutil.copy(CA.ca_crt, os.path.join(certs, "test-ca.crt"))  # the token server's
    out = os.path.join(h.tmpdir(), "out")
    ns_skopeo(rp.ns, ["copy", "--src-cert-dir", certs, "docker://%s/%s:1" % (HOST, REPO),
                      "oci:%s:1" % out], env={"HTTPS_PROXY": rp.url})
    mdg, blobs = h.layout_blobs(out)  # also re-hashes every file against its name
    assert blobs == IMG.blobs and mdg == IMG.manifest, (sorted(blobs), sorted(IMG.blobs))


def wave(ns, during=None):
    """Every node pulls at once (one skopeo each); during() runs meanwhile. Returns the
    wall time; raises with every failed pull."""
    return h.all_at_once(ns, pull, during)


def origin_gets():
    return h.settled(REG.blob_gets)


def new_gets(before):
    now = origin_gets()
    return {d: now.get(d, 0) - before.get(d, 0) for d in IMG.blobs}


def report(what, t, down, n):
    print("    %s: %d nodes in %.2fs, %d bytes from the origin = %.2f x image (%d bytes),"
          " %.2f x of %d x image" % (what, n, t, down, down / IMG_SIZE, IMG_SIZE,
                                     down / (n * IMG_SIZE), n), flush=True)


def assert_cache_verifies(rp, stop=True):
    if stop:
        rp.stop()
    rc, err = h.run_regproxy_expect_exit(["cache", "verify", "--cache-dir",
                                          os.path.join(rp.dir, "cache")], timeout=60)
    assert rc == 0, "cache verify on %s (%s): %s" % (rp.dir, rp.ns, err)


# ---- tests -------------------------------------------------------------------------

def test_a_wave_fetches_each_blob_once_over_the_shaped_link():
    insts, hap = site_tier()
    ns = nodes()
    before, bytes0, tokens0 = origin_gets(), origin_tx_bytes(), len(TS.token_requests())
    t = wave(ns)
    got = new_gets(before)
    down = origin_tx_bytes() - bytes0
    report("wave through the site", t, down, NODES)
    # Token auth was in play: anonymous tokens for the public repository (the site's own,
    # and the nodes' for their tag requests and access checks).
    anon = [r for r in TS.token_requests()[tokens0:] if r[1] is None and
            "repository:%s:pull" % REPO in urllib.parse.unquote(r[0])]
    assert anon, TS.token_requests()
    assert all(v == 1 for v in got.values()), "origin blob GETs per digest for one wave of " \
        "%d nodes (want 1 each): %r" % (NODES, got)
    assert down < 1.5 * IMG_SIZE, "the origin link carried %d bytes for a %d-byte image" % (
        down, IMG_SIZE)
    # Every blob reached the nodes through the site: each digest served (200, ?ns= kept)
    # by exactly one instance, the one HAProxy hashes it to, to every node.
    served = {}
    for i, s in enumerate(insts):
        for ln in s.request_logs(via="mirror"):
            m = re.match(r"/v2/%s/blobs/(sha256:[0-9a-f]{64})\?ns=docker\.io$" % REPO,
                         ln.get("path", ""))
            if m and ln.get("status") == "200":
                served.setdefault(m.group(1), []).append(i)
    assert set(served) == IMG.blobs and all(
        len(set(v)) == 1 and len(v) == NODES for v in served.values()), served
    for rp in ns:
        assert "upstream mirror %s failed" % MIRROR not in rp.stderr(), rp.stderr()[-1500:]
    # A second wave, fresh nodes with empty caches: all blobs from the site.
    for rp in ns:
        rp.stop()
    before2, bytes2 = origin_gets(), origin_tx_bytes()
    t = wave(nodes())
    got = new_gets(before2)
    down = origin_tx_bytes() - bytes2
    report("second wave", t, down, NODES)
    assert not any(got.values()), "the second wave made origin blob GETs: %r" % got
    assert down < IMG_SIZE / 4, down


def test_a_site_instance_killed_mid_wave():
    insts, hap = site_tier()
    ns = nodes()
    killed = []

    def kill_one_while_it_fills():
        # Runs in the site namespace: one instance in the middle of a layer (a fill in
        # flight, 1 MiB from the origin and more than at the last look). Polled every
        # 10 ms (wait_until backs off to 200 ms, longer than the window).
        seen = {}

        def metrics(s):
            c = h.HttpConn("127.0.0.1", s.port, timeout=2)
            try:
                r = c.request("GET", "/metrics", [("Host", "127.0.0.1"), ("Connection", "close")])
            finally:
                c.close()
            return h.Metrics.parse(r.text())

        def filling():
            for s in insts:
                m = metrics(s)
                got = m.sum("regproxy_upstream_bytes_total")
                growing = got > seen.get(s, got)
                seen[s] = got
                if growing and got >= 1 << 20 and m.sum("regproxy_fills_in_flight") > 0:
                    return s
        deadline = time.monotonic() + 30
        victim = filling()
        while victim is None:
            assert time.monotonic() < deadline, "no site instance was ever in the middle of a layer"
            time.sleep(0.01)
            victim = filling()
        victim.signal(signal.SIGKILL)
        killed.append(victim)
    before = origin_gets()
    t = wave(ns, during=lambda: in_ns(SITE_NS, kill_one_while_it_fills))
    victim = killed[0]
    assert victim.wait_exit(5) == -signal.SIGKILL
    got = new_gets(before)
    print("    killed mid-wave: %.2fs, %d origin blob GETs for %d blobs x %d nodes" % (
        t, sum(got.values()), len(IMG.blobs), NODES), flush=True)
    cut = [rp for rp in ns if "upstream mirror %s failed" % MIRROR in rp.stderr()]
    assert cut, "no node saw the kill: the wave was over before it"
    h.wait_until(lambda: hap.up() == SITE - 1, 10, "haproxy marks the killed instance DOWN")
    # Nothing wrong is cached anywhere: every node, every site instance (the killed one too).
    for rp in ns + insts:
        assert_cache_verifies(rp, stop=rp is not victim)


def test_the_whole_site_down():
    insts, hap = site_tier(2)
    for s in insts:  # every instance dead: HAProxy itself answers 503
        s.stop()
    h.wait_until(lambda: hap.up() == 0, 10, "haproxy marks every instance DOWN")
    alone = nodes(1, mirror=None)[0]
    t0 = time.monotonic()
    pull(alone)
    print("    one node alone, no site: %.2fs" % (time.monotonic() - t0), flush=True)
    alone.stop()
    before, bytes0 = origin_gets(), origin_tx_bytes()
    ns = nodes()
    t = wave(ns)
    got = new_gets(before)
    down = origin_tx_bytes() - bytes0
    report("site down (503), from the origin", t, down, NODES)
    assert all(v >= NODES for v in got.values()), got
    for rp in ns:
        assert "upstream mirror %s failed" % MIRROR in rp.stderr(), rp.stderr()[-2000:]
        rp.stop()
    # HAProxy gone too: the site's address refuses connections.
    hap.stop()
    ns = nodes(3)
    wave(ns)
    for rp in ns:
        assert "upstream mirror %s failed" % MIRROR in rp.stderr(), rp.stderr()[-2000:]
        assert_cache_verifies(rp)


if __name__ == "__main__":
    h.main(globals())
