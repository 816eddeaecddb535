"""The site tier (issue 10, docs/fleet.md): regproxy instances in mirror mode behind a real
HAProxy configured from deploy/haproxy.cfg, and node regproxy instances with that HAProxy as
their upstream mirror; skopeo pulls the same multi-layer image through every node at once.
The origin is the distribution registry over TLS (as registry-1.docker.io through
--connect-to) behind a small relay that paces each connection, so a wave lasts long enough
to kill a site instance in the middle of it and counts the bytes the origin sent.

- a wave: the origin serves each blob once, every node's copy is byte-exact, each digest
  went to one site instance; a second wave (fresh nodes) makes no origin blob request;
- a site instance killed (SIGKILL, by PID) while it fills: every pull completes, nothing
  wrong is cached on any node or site instance;
- a request for a dead instance's digest, before the health check noticed: HAProxy retries
  it on another instance (the config's retry-on/redispatch), the node sees a 200;
- the whole site down (instances dead behind HAProxy: 503; HAProxy gone: refused): nodes
  fall back to the origin, no pull fails.
(A mirror answering wrong bytes is test_upstream_mirror.py.)"""

import os
import re
import shutil
import signal
import socket
import threading
import time

import harness as h

HOST = "registry-1.docker.io"
REPO = "team/app"
HERE = os.path.dirname(os.path.abspath(__file__))
HAPROXY_CFG = os.path.join(HERE, "..", "..", "deploy", "haproxy.cfg")
NODES = 6
SITE = 3
# Per-connection pace of the origin: a wave takes about a second, not milliseconds.
ORIGIN_RATE = 8 << 20


class PacedRelay:
    """A TCP relay to the registry (TLS passes through untouched) that sends the origin's
    bytes to each connection at most `rate` bytes/s and counts them: a WAN-like origin."""

    def __init__(self, port, rate):
        self.dst = port
        self.rate = rate
        self.down = 0  # bytes origin -> regproxy
        self.lock = threading.Lock()
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", h.free_port()))
        self.ls.listen(128)
        self.port = self.ls.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()
        h.defer(self.close)

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(("127.0.0.1", self.dst))
            except OSError:
                c.close()
                continue
            threading.Thread(target=self._pipe, args=(c, u, 0), daemon=True).start()
            threading.Thread(target=self._pipe, args=(u, c, self.rate), daemon=True).start()

    def _pipe(self, src, dst, rate):
        t0 = time.monotonic()
        sent = 0
        try:
            while True:
                b = src.recv(65536)
                if not b:
                    break
                dst.sendall(b)
                if rate:
                    sent += len(b)
                    with self.lock:
                        self.down += len(b)
                    ahead = sent / rate - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)  # pacing the link, not waiting for an event
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RD)
                except OSError:
                    pass

    def close(self):
        self.closed = True
        self.ls.close()


class HAProxy:
    """haproxy -db with deploy/haproxy.cfg: its defaults, frontend and backend as shipped,
    the frontend bound to a free port, one server line per site instance, and a global
    section of its own (log to stdout, a stats socket, no chroot or user switch)."""

    def __init__(self, servers, edit=None):
        self.dir = h.tmpdir("rpit-haproxy-")
        self.port = h.free_port()
        self.sock = os.path.join(self.dir, "admin.sock")
        text = open(HAPROXY_CFG).read()
        if edit:
            text = edit(text)
        body = text[text.index("\ndefaults"):]
        body = re.sub(r"(?m)^(\s*)bind \S+", r"\g<1>bind 127.0.0.1:%d" % self.port, body)
        body = re.sub(r"(?m)^\s*server site\d+ .*\n", "", body).rstrip("\n") + "\n"
        for i, port in enumerate(servers):
            body += "    server site%d 127.0.0.1:%d check\n" % (i + 1, port)
        conf = ("global\n    log stdout format raw local0 info\n"
                "    stats socket %s mode 600 level admin\n    maxconn 2000\n" % self.sock) + body
        self.conf = h.write_file(os.path.join(self.dir, "haproxy.cfg"), conf)
        h.run(["haproxy", "-c", "-q", "-f", self.conf])
        self.log_path = os.path.join(self.dir, "haproxy.log")
        self.proc = h.Proc(["haproxy", "-db", "-f", self.conf], name="haproxy",
                           stdout=self.log_path, stderr=self.log_path)
        n = len(servers)
        h.wait_until(lambda: self.up() == n, 10, "haproxy with %d servers UP" % n)

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

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
        """How many servers the health checks hold UP."""
        rows = [r.split(",") for r in self.cmd("show stat").splitlines() if r and r[0] != "#"]
        return sum(1 for r in rows if r[1].startswith("site") and r[17].startswith("UP"))

    def blob_routes(self):
        """{blob path: set of servers} from the request log."""
        out = {}
        for ln in open(self.log_path, errors="replace"):
            m = re.search(r"regproxy_site/(\S+) .*\"GET (/v2/\S+/blobs/\S+?)(\?\S*)? HTTP", ln)
            if m:
                out.setdefault(m.group(2), set()).add(m.group(1))
        return out

    def stop(self):
        self.proc.stop(signal.SIGTERM, timeout=5)


def setup():
    global CA, REG, ORIGIN, IMG, IMG_SIZE
    if not shutil.which("haproxy"):
        raise h.Skip("haproxy is not installed (apt-get install haproxy)")
    if not os.path.exists(HAPROXY_CFG):
        raise AssertionError("deploy/haproxy.cfg missing")
    CA = h.shared_ca()
    REG = h.Registry()
    # Five layers, ~7 MiB: blobs of every size class, the largest a few hundred ms long.
    IMG = h.OciImage(os.path.join(h.tmpdir(), "src"), tag="1",
                     layer_sizes=(3 << 20, 2 << 20, 1 << 20, 300 * 1024, 4096))
    h.skopeo(["copy", "--dest-cert-dir", CA.certdir, "oci:%s:1" % IMG.path,
              "docker://127.0.0.1:%d/%s:1" % (REG.port, REPO)])
    ORIGIN = PacedRelay(REG.port, ORIGIN_RATE)
    d = os.path.join(IMG.path, "blobs", "sha256")
    IMG_SIZE = sum(os.path.getsize(os.path.join(d, x[7:])) for x in IMG.blobs | {IMG.manifest})


def origin_args():
    return ["--connect-to", "%s:443:127.0.0.1:%d" % (HOST, ORIGIN.port),
            "--upstream-ca", CA.ca_crt]


def site_tier(n=SITE):
    """n regproxy instances in mirror mode behind HAProxy."""
    insts = [h.Regproxy(["--mitm", ""] + origin_args()) for _ in range(n)]
    return insts, HAProxy([s.port for s in insts])


def nodes(mirror_url, n=NODES):
    return [h.Regproxy(["--mitm", HOST, "--upstream-mirror", "docker.io=%s" % mirror_url] +
                       origin_args()) for _ in range(n)]


def pull(rp):
    certs = h.tmpdir()
    shutil.copy(os.path.join(rp.dir, "ca", "ca.crt"), os.path.join(certs, "regproxy.crt"))
    out = os.path.join(h.tmpdir(), "out")
    h.skopeo(["copy", "--src-cert-dir", certs, "docker://%s/%s:1" % (HOST, REPO),
              "oci:%s:1" % out], env={"HTTPS_PROXY": rp.url})
    mdg, blobs = h.layout_blobs(out)  # also re-hashes every file against its name
    assert blobs == IMG.blobs and mdg == IMG.manifest, (sorted(blobs), sorted(IMG.blobs))


def wave(ns, during=None):
    """Every node pulls at once (one skopeo each); during() runs meanwhile. Returns the
    wall time; raises with every failed pull."""
    return h.all_at_once(ns, pull, during)


def origin_blob_gets():
    text = open(REG.log_path, errors="replace").read()
    return text.count("GET /v2/%s/blobs/sha256:" % REPO)


def settled_blob_gets():
    return h.settled(origin_blob_gets)


def assert_cache_verifies(rp):
    """Stopped instance: every object in its cache hashes to its digest."""
    rp.stop()
    rc, err = h.run_regproxy_expect_exit(["cache", "verify", "--cache-dir",
                                          os.path.join(rp.dir, "cache")], timeout=60)
    assert rc == 0, "cache verify on %s: %s" % (rp.dir, err)


def test_a_wave_fetches_each_blob_once_per_site():
    insts, hap = site_tier()
    ns = nodes(hap.url)
    before, bytes0 = settled_blob_gets(), ORIGIN.down
    t = wave(ns)
    got = settled_blob_gets() - before
    assert got == len(IMG.blobs), "origin blob GETs for one wave of %d nodes: %d, want %d" % (
        NODES, got, len(IMG.blobs))
    down = ORIGIN.down - bytes0
    print("    wave of %d nodes: %.2fs, %d bytes from the origin = %.2f x image (%d bytes)"
          % (NODES, t, down, down / IMG_SIZE, IMG_SIZE))
    assert down < 2 * IMG_SIZE, (down, IMG_SIZE)
    # Every node asked the site for every blob (with ?ns= kept); HAProxy sent each digest
    # to exactly one instance, and that instance is the only one that fetched it.
    routes = hap.blob_routes()
    assert len(routes) == len(IMG.blobs) and all(len(s) == 1 for s in routes.values()), routes
    for s in insts:
        fetched = [ln for ln in s.request_logs(via="mirror") if "/blobs/" in ln.get("path", "")]
        assert all("ns=docker.io" in ln["path"] for ln in fetched), fetched
    # A second wave, fresh nodes with empty caches: all from the site, none from the origin.
    ns2 = nodes(hap.url)
    wave(ns2)
    assert settled_blob_gets() - before == len(IMG.blobs), "the origin served a blob twice"


def test_a_site_instance_killed_mid_wave():
    insts, hap = site_tier()
    ns = nodes(hap.url)
    killed = []

    def kill_one_while_it_fills():
        # One that is in the middle of a layer: a fill in flight, 1 MiB from the origin, and
        # still receiving (more bytes than at the last look: a fill that is only publishing
        # has sent the nodes everything). Polled every 10 ms (wait_until backs off to
        # 200 ms, longer than the window).
        seen = {}

        def filling():
            for s in insts:
                m = s.metrics()
                got = m.sum("regproxy_upstream_bytes_total")
                growing = got > seen.get(s, got)
                seen[s] = got
                if growing and got >= 1 << 20 and m.sum("regproxy_fills_in_flight") > 0:
                    return s
        deadline = time.monotonic() + 30
        victim = filling()
        while victim is None:
            assert time.monotonic() < deadline, \
                "no site instance was ever in the middle of a layer (bytes seen: %r)" % (
                    sorted(seen.values()),)
            time.sleep(0.01)
            victim = filling()
        victim.signal(signal.SIGKILL)
        assert victim.wait_exit(5) == -signal.SIGKILL
        killed.append(victim)
    before = settled_blob_gets()
    # A slower origin for this wave: at 8 MiB/s the 3 MiB layer is in flight past its
    # first MiB for 250 ms, which three metrics scrapes of sanitizer builds can miss.
    ORIGIN.rate = 2 << 20
    try:
        wave(ns, during=kill_one_while_it_fills)
    finally:
        ORIGIN.rate = ORIGIN_RATE
    victim = killed[0]
    # Not asserted (a design figure for docs/fleet.md): a node that saw the cut skips the
    # whole site (one mirror URL) for 30 s, so the rest of its blobs come from the origin.
    print("    killed mid-wave: %d origin blob GETs for %d blobs x %d nodes" % (
        settled_blob_gets() - before, len(IMG.blobs), NODES))
    url = "http://127.0.0.1:%d" % hap.port
    cut = [rp for rp in ns if "upstream mirror %s failed" % url in rp.stderr()]
    assert cut, "no node saw the kill: the wave was over before it: %r" % (
        [[ln for ln in rp.stderr().splitlines() if "mirror" in ln][-3:] for rp in ns],)
    # HAProxy's health check takes it out; the others stay.
    h.wait_until(lambda: hap.up() == SITE - 1, 10, "haproxy marks the killed instance DOWN")
    # Nothing wrong is cached anywhere: every node, every site instance (the killed one too).
    for rp in ns + insts:
        if rp is not victim:
            assert_cache_verifies(rp)
    rc, err = h.run_regproxy_expect_exit(["cache", "verify", "--cache-dir",
                                          os.path.join(victim.dir, "cache")], timeout=60)
    assert rc == 0, "cache verify on the killed instance: %s" % err


def test_a_dead_instance_is_skipped_before_the_health_check_notices():
    # The shipped config with the health check slowed to once a minute: only HAProxy's
    # retry with redispatch can keep a request for the dead instance's digest from failing.
    def slow_checks(text):
        new = re.sub(r"(?m)^(\s*default-server) inter [^\n]*? maxconn", r"\1 inter 60s fall 3 "
                     "rise 1 maxconn", text)
        assert new != text, "default-server line not found in deploy/haproxy.cfg"
        return new
    insts = [h.Regproxy(["--mitm", ""] + origin_args()) for _ in range(SITE)]
    hap = HAProxy([s.port for s in insts], edit=slow_checks)
    paths = ["/v2/%s/blobs/%s?ns=docker.io" % (REPO, d) for d in sorted(IMG.blobs)]

    def get(path):
        c = h.HttpConn("127.0.0.1", hap.port, timeout=20)
        try:
            r = c.request("GET", path, [("Host", "127.0.0.1:%d" % hap.port),
                                        ("Connection", "close")])
        finally:
            c.close()
        assert r.status == 200 and "sha256:" + h.sha256(r.body) == path.split("/")[-1][:71], \
            (path, r.status)
    for p in paths:
        get(p)
    # HAProxy writes a request's log line after the client has its answer: wait for all.
    routes = h.wait_until(lambda: (lambda r: r if all(p.split("?")[0] in r for p in paths)
                                   else None)(hap.blob_routes()), 5, "haproxy logged every GET")
    name = sorted(next(iter(v)) for v in routes.values())[0]
    victim = insts[int(name[len("site"):]) - 1]
    victim.signal(signal.SIGKILL)
    victim.wait_exit(5)
    theirs = [p for p in paths if routes[p.split("?")[0]] == {name}]
    for p in theirs:
        get(p)
    assert hap.up() == SITE, "the health check acted: this test shows nothing"

    def redispatched():
        r = hap.blob_routes()
        return all(len(r[p.split("?")[0]]) == 2 for p in theirs)
    # As above: the retried GETs' log lines follow their answers.
    try:
        h.wait_until(redispatched, 5, "haproxy logged the retried GETs")
    except h.Timeout:
        raise AssertionError("not sent to a second instance: %r" % (hap.blob_routes(),)) from None


def test_the_whole_site_down():
    insts, hap = site_tier(2)
    # Every instance dead: HAProxy itself answers 503.
    for s in insts:
        s.stop()
    h.wait_until(lambda: hap.up() == 0, 10, "haproxy marks every instance DOWN")
    before = settled_blob_gets()
    ns = nodes(hap.url, 3)
    wave(ns)
    assert settled_blob_gets() - before >= len(IMG.blobs)
    for rp in ns:
        assert "upstream mirror %s failed" % hap.url in rp.stderr(), rp.stderr()[-2000:]
    # HAProxy gone too: the mirror refuses connections.
    hap.stop()
    ns = nodes(hap.url, 3)
    wave(ns)
    for rp in ns:
        assert "upstream mirror %s failed" % hap.url in rp.stderr(), rp.stderr()[-2000:]
        assert_cache_verifies(rp)


if __name__ == "__main__":
    h.main(globals())
