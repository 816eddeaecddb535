"""Gateway transparent mode (contract §1 "Gateway", §2 way in `transparent`, issue 9) with
real network namespaces, veth pairs and nft rules (TESTING.md "Transparent mode"):

    client ns  10.200.1.2 / fd00:200:1::2
        | veth
    gateway ns 10.200.1.1 | 10.200.2.1   regproxy --transparent, nft REDIRECT / TPROXY
        | veth
    server ns  10.200.2.2 registry.test (distribution over TLS, :443)
               10.200.2.3 origin.test   (TLS :443, plain HTTP :80, raw :7777)

The client has no proxy settings: its packets to ports 80, 443 and 7777 are turned
towards regproxy by the gateway. Sockets of the test itself are created inside a
namespace by a thread that entered it (setns), so every server and client here is a
real process or socket in the right place. Runs only as root; skips otherwise.
"""

import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time

import harness as h

TAG = "%d" % os.getpid()
NS = {"c": "rpc" + TAG, "g": "rpg" + TAG, "s": "rps" + TAG}
REG_IP, ORIGIN_IP = "10.200.2.2", "10.200.2.3"
REG6_IP, ORIGIN6_IP = "fd00:200:2::2", "fd00:200:2::3"
GW_IP = "10.200.1.1"
MARK = 0x2a


# ---- namespaces ------------------------------------------------------------------

def sh(*argv, check=True):
    r = subprocess.run(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=20)
    if check and r.returncode != 0:
        raise AssertionError("%s failed (%d): %s" % (" ".join(argv), r.returncode,
                                                    r.stderr.decode(errors="replace")))
    return r


def nsx(ns, *argv, check=True):
    return sh("ip", "netns", "exec", NS[ns], *argv, check=check)


def nft(ns, ruleset):
    path = os.path.join(h.tmpdir("rpit-nft-"), "rules.nft")
    h.write_file(path, ruleset)
    nsx(ns, "nft", "-f", path)


def in_ns(ns, fn):
    """Run fn() on a thread that entered namespace ns: sockets it makes live there."""
    return h.in_netns(NS[ns], fn)


def ns_connect(ns, host, port, timeout=10.0):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET

    def mk():
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(timeout)
        s.connect((host, port))
        return s
    return in_ns(ns, mk)


def ns_listen(ns, host, port):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET

    def mk():
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(64)
        return s
    return in_ns(ns, mk)


def make_namespaces():
    for ns in NS.values():
        sh("ip", "netns", "add", ns)
    h.defer(remove_namespaces)
    c, g, s = NS["c"], NS["g"], NS["s"]
    sh("ip", "link", "add", "c0", "netns", c, "type", "veth", "peer", "name", "gc",
       "netns", g)
    sh("ip", "link", "add", "s0", "netns", s, "type", "veth", "peer", "name", "gs",
       "netns", g)
    for ns, cmds in (
            ("c", [["ip", "addr", "add", "10.200.1.2/24", "dev", "c0"],
                   ["ip", "-6", "addr", "add", "fd00:200:1::2/64", "dev", "c0", "nodad"],
                   ["ip", "link", "set", "c0", "up"], ["ip", "link", "set", "lo", "up"],
                   ["ip", "route", "add", "default", "via", GW_IP],
                   ["ip", "-6", "route", "add", "default", "via", "fd00:200:1::1"]]),
            ("g", [["ip", "addr", "add", "10.200.1.1/24", "dev", "gc"],
                   ["ip", "addr", "add", "10.200.2.1/24", "dev", "gs"],
                   ["ip", "-6", "addr", "add", "fd00:200:1::1/64", "dev", "gc", "nodad"],
                   ["ip", "-6", "addr", "add", "fd00:200:2::1/64", "dev", "gs", "nodad"],
                   ["ip", "link", "set", "gc", "up"], ["ip", "link", "set", "gs", "up"],
                   ["ip", "link", "set", "lo", "up"],
                   ["sysctl", "-qw", "net.ipv4.ip_forward=1"],
                   ["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]]),
            ("s", [["ip", "addr", "add", REG_IP + "/24", "dev", "s0"],
                   ["ip", "addr", "add", ORIGIN_IP + "/24", "dev", "s0"],
                   ["ip", "-6", "addr", "add", REG6_IP + "/64", "dev", "s0", "nodad"],
                   ["ip", "-6", "addr", "add", ORIGIN6_IP + "/64", "dev", "s0", "nodad"],
                   ["ip", "link", "set", "s0", "up"], ["ip", "link", "set", "lo", "up"],
                   ["ip", "route", "add", "default", "via", "10.200.2.1"],
                   ["ip", "-6", "route", "add", "default", "via", "fd00:200:2::1"]])):
        for cmd in cmds:
            nsx(ns, *cmd)
    # Names without DNS: `ip netns exec` binds /etc/netns/NS/hosts over /etc/hosts.
    for ns in ("c", "s"):
        d = "/etc/netns/%s" % NS[ns]
        os.makedirs(d, exist_ok=True)
        h.write_file(os.path.join(d, "hosts"),
                     "127.0.0.1 localhost\n%s registry.test\n%s origin.test\n" % (
                         REG_IP, ORIGIN_IP), mode=0o644)


def remove_namespaces():
    for ns in NS.values():
        sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree("/etc/netns/%s" % ns, ignore_errors=True)


REDIRECT_RULES = """
table inet rp_redirect {
  chain pre {
    type nat hook prerouting priority dstnat; policy accept;
    iifname "gc" tcp dport { 80, 443, 5000, 7777 } redirect to :%(port)d
  }
}
"""

# regproxy's own outgoing connections to :7777 sent back to it, with no mark exemption.
LOOP_RULES = """
table ip rp_loop {
  chain out {
    type nat hook output priority -100; policy accept;
    ip daddr %(origin)s tcp dport %(dport)d redirect to :%(port)d
  }
}
"""


# ---- servers in the server namespace --------------------------------------------

def serve(ns, host, port, handler):
    """Accept loop on a thread; handler(conn) per connection on its own thread."""
    ls = ns_listen(ns, host, port)
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            try:
                conn, _ = ls.accept()
            except OSError:
                return
            threading.Thread(target=handler, args=(conn,), daemon=True).start()
    threading.Thread(target=loop, daemon=True).start()

    def close():
        stop.set()
        ls.close()
    h.defer(close)
    return ls


def read_head(conn):
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = conn.recv(4096)
        if not d:
            break
        buf += d
    return buf


ORIGIN_BODY = b"the origin itself\n" * 100


def tls_origin(conn):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(CA.chain, CA.key)
    try:
        s = ctx.wrap_socket(conn, server_side=True)
        head = read_head(s)
        host = [ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"host:")]
        body = ORIGIN_BODY + b"host=" + (host[0][5:].strip() if host else b"-") + b"\n"
        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" %
                  len(body) + body)
        s.close()
    except (OSError, ssl.SSLError):
        conn.close()


def http_origin(ip):
    def handler(conn):
        try:
            head = read_head(conn)
            line = head.split(b"\r\n")[0]
            host = [ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"host:")]
            body = b"server=%s request=%s host=%s\n" % (
                ip.encode(), line, host[0][5:].strip() if host else b"-")
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n" % len(body) + body)
        except OSError:
            pass
        conn.close()
    return handler


def raw_origin(conn):
    """Speaks first (a banner), then echoes everything until EOF."""
    try:
        conn.sendall(b"banner from %s\n" % ORIGIN_IP.encode())
        while True:
            d = conn.recv(65536)
            if not d:
                break
            conn.sendall(d)
    except OSError:
        pass
    conn.close()


def relay_to(ip, port):
    def handler(conn):
        try:
            up = ns_connect("s", ip, port)
        except OSError:
            conn.close()
            return

        def pipe(a, b):
            try:
                while True:
                    d = a.recv(65536)
                    if not d:
                        break
                    b.sendall(d)
                b.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        t = threading.Thread(target=pipe, args=(up, conn), daemon=True)
        t.start()
        pipe(conn, up)
        t.join(30)
        conn.close()
        up.close()
    return handler


class NsRegistry(h.Registry):
    """distribution in the server namespace on REG_IP:443, TLS for registry.test (and a
    relay on REG6_IP:443 to it, as distribution listens on one address)."""

    def __init__(self, ca):
        self.ca = ca
        self.dir = h.tmpdir("rptransparent-registry-")
        self.port = 443
        self.conf = h.render("registry.yml.in", os.path.join(self.dir, "config.yml"),
                             dir=self.dir, port=443, cert=ca.chain, key=ca.key)
        with open(self.conf) as f:
            text = f.read().replace("addr: 127.0.0.1:443", "addr: %s:443" % REG_IP)
        h.write_file(self.conf, text)
        self.log_path = os.path.join(self.dir, "registry.log")
        self.proc = h.Proc(["ip", "netns", "exec", NS["s"], "docker-registry", "serve",
                            self.conf], name="docker-registry", stdout=self.log_path,
                           stderr=self.log_path)
        h.defer(lambda: self.proc.stop(signal.SIGTERM, timeout=3))
        ctx = ssl.create_default_context(cafile=ca.ca_crt)

        def ready():
            if not self.proc.alive():
                raise AssertionError("registry exited: %s" % h.tail(self.log_path))
            try:
                s = ctx.wrap_socket(ns_connect("s", REG_IP, 443, 2),
                                    server_hostname="registry.test")
            except OSError:
                return False
            c = h.HttpConn(sock=s)
            try:
                return c.request("GET", "/v2/", [("Host", "registry.test")]).status == 200
            finally:
                c.close()
        h.wait_until(ready, 15, "registry GET /v2/ in the server namespace")

    def blob_gets(self):
        text = open(self.log_path, errors="replace").read()
        return sum(1 for ln in text.splitlines()
                   if '"GET /v2/library/alpine/blobs/' in ln)


# ---- regproxy in the gateway namespace ------------------------------------------

def start_regproxy(tproxy=False, extra=(), mitm="registry.test"):
    wrapper = os.path.join(h.tmpdir("rpit-nsbin-"), "regproxy-in-gw")
    h.write_file(wrapper, '#!/bin/sh\nexec ip netns exec %s %s "$@"\n' % (
        NS["g"], REAL_BIN), mode=0o755)
    port = h.free_port()
    tport = h.free_port()
    args = ["--listen", "127.0.0.1:%d" % port, "--listen", "%s:%d" % (GW_IP, port),
            "--transparent", "0.0.0.0:%d" % tport, "--transparent", "[::]:%d" % tport,
            "--allow", "127.0.0.0/8,10.200.0.0/16,fd00:200::/32",
            "--mitm", mitm, "--upstream-ca", CA.ca_crt,
            "--mark", str(MARK), "--log-level", "info"] + list(extra)
    if tproxy:
        args.append("--tproxy")
    saved = os.environ.get("REGPROXY_BIN")
    os.environ["REGPROXY_BIN"] = wrapper
    try:
        rp = h.Regproxy(args, ready=None)
    finally:
        if saved is None:
            os.environ.pop("REGPROXY_BIN", None)
        else:
            os.environ["REGPROXY_BIN"] = saved
    rp.tport = tport

    def ready():
        if not rp.alive():
            raise AssertionError("regproxy exited: %s" % h.tail(rp.stderr_path))
        return admin(rp, "/healthz").status == 200
    h.wait_until(ready, 15, "regproxy healthz in the gateway namespace")
    return rp


def admin(rp, path):
    try:
        s = ns_connect("g", "127.0.0.1", rp.port, 2)
    except OSError:
        return h.Response("HTTP/1.1", 0, "", [], b"", b"")
    c = h.HttpConn(sock=s)
    try:
        return c.request("GET", path, [("Host", "127.0.0.1"), ("Connection", "close")])
    finally:
        c.close()


def metrics(rp):
    return h.Metrics.parse(admin(rp, "/metrics").text())


def regproxy_ca(rp):
    """What a LAN host does: GET /ca.crt from the gateway's listener."""
    s = ns_connect("c", GW_IP, rp.port)
    c = h.HttpConn(sock=s)
    try:
        r = c.request("GET", "/ca.crt", [("Host", GW_IP), ("Connection", "close")])
    finally:
        c.close()
    assert r.status == 200 and b"BEGIN CERTIFICATE" in r.body, r
    d = h.tmpdir("rpit-lanca-")
    h.write_file(os.path.join(d, "ca.crt"), r.body)
    return d


def https_get(ip, name, cafile, path="/", port=443, sni=True, ns="c"):
    """A client in namespace ns (the client's), no proxy: returns (response, peer cert)."""
    ctx = ssl.create_default_context(cafile=cafile)
    if not sni:
        ctx.check_hostname = False
    s = ctx.wrap_socket(ns_connect(ns, ip, port), server_hostname=name if sni else None)
    cert = s.getpeercert()
    c = h.HttpConn(sock=s)
    try:
        return c.request("GET", path, [("Host", name), ("Connection", "close")]), cert
    finally:
        c.close()


def issuer_cn(cert):
    return dict(x[0] for x in cert["issuer"]).get("commonName", "")


# ---- TLS by hand: a ClientHello cut where we like --------------------------------

class TlsByHand:
    """A TLS client over a socket whose ClientHello is sent as the test says."""

    def __init__(self, sock, name, cafile):
        ctx = ssl.create_default_context(cafile=cafile)
        self.sock = sock
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.inc, self.out, server_hostname=name)
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        self.hello = self.out.read()

    def finish(self):
        deadline = time.monotonic() + 10
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            data = self.out.read()
            if data:
                self.sock.sendall(data)
            if time.monotonic() > deadline:
                raise AssertionError("handshake did not finish")
            d = self.sock.recv(65536)
            if not d:
                raise AssertionError("connection closed during the handshake")
            self.inc.write(d)
        data = self.out.read()
        if data:
            self.sock.sendall(data)

    def request(self, name, path="/"):
        self.tls.write(b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (
            path.encode(), name.encode()))
        self.sock.sendall(self.out.read())
        buf = b""
        while True:
            try:
                d = self.tls.read(65536)
                if not d:
                    break
                buf += d
                continue
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                break
            data = self.out.read()
            if data:
                self.sock.sendall(data)
            d = self.sock.recv(65536)
            if not d:
                break
            self.inc.write(d)
        return buf


def two_records(hello):
    """The ClientHello's handshake message cut into two TLS records."""
    assert hello[0] == 0x16
    body = hello[5:5 + int.from_bytes(hello[3:5], "big")]
    k = len(body) // 2
    return (hello[:3] + k.to_bytes(2, "big") + body[:k] +
            hello[:3] + (len(body) - k).to_bytes(2, "big") + body[k:])


# ---- fixtures ---------------------------------------------------------------------

def setup():
    global CA, REG, IMG, REAL_BIN
    if os.geteuid() != 0:
        raise h.Skip("needs root (network namespaces, nft)")
    for tool in ("ip", "nft", "docker-registry", "skopeo"):
        if shutil.which(tool) is None:
            raise h.Skip("%s is not installed" % tool)
    probe = "rpprobe" + TAG
    if sh("ip", "netns", "add", probe, check=False).returncode != 0:
        raise h.Skip("cannot create a network namespace here")
    sh("ip", "netns", "del", probe, check=False)
    REAL_BIN = h.regproxy_bin()
    # The file's fixtures live a minute: a prefix of their own, apart from rpit-* dirs.
    CA = h.TestCA(names=["registry.test", "origin.test"],
                  ips=(REG_IP, ORIGIN_IP, REG6_IP, ORIGIN6_IP),
                  scoped_dir=h.tmpdir("rptransparent-ca-"))
    make_namespaces()
    REG = NsRegistry(CA)
    for ip in (ORIGIN_IP, ORIGIN6_IP):
        serve("s", ip, 443, tls_origin)
        serve("s", ip, 80, http_origin(ip))
    serve("s", ORIGIN_IP, 7777, raw_origin)
    serve("s", REG6_IP, 443, relay_to(REG_IP, 443))
    IMG = h.OciImage(os.path.join(h.tmpdir("rptransparent-img-"), "src"),
                     layer_sizes=(4096, 300 * 1024))
    ns_skopeo("s", ["copy", "--dest-cert-dir", CA.certdir, "oci:%s:3.18" % IMG.path,
                    "docker://registry.test/library/alpine:3.18"])


def ns_skopeo(ns, args):
    d = h.tmpdir("rpit-skopeo-")
    regconf = h.write_file(os.path.join(d, "registries.conf"), "")
    env = h.clean_env(HOME=d, CONTAINERS_REGISTRIES_CONF=regconf, TMPDIR=d,
                      XDG_RUNTIME_DIR=d)
    return h.run(["ip", "netns", "exec", NS[ns], "skopeo", "--insecure-policy", "--tmpdir", d,
                  "--override-os", "linux", "--override-arch", "amd64"] + list(args),
                 timeout=120, env=env)


def generated_rules(rp, tproxy=False, which="lan"):
    """What `regproxy setup gateway` writes for a LAN gateway, loaded in the gateway."""
    root = h.tmpdir("rpit-gwsetup-")
    argv = [REAL_BIN, "setup", "gateway", "--root", root, "--interface", "gc",
            "--transparent", "0.0.0.0:%d" % rp.tport, "--mark", str(MARK),
            "--allow", "10.200.0.0/16", "--mitm", "registry.test"]
    if tproxy:
        argv.append("--tproxy")
    r = sh(*argv)
    assert b"regproxy must run with" in r.stdout, r.stdout
    gwdir = os.path.join(root, "etc/regproxy/gateway")
    nsx("g", "nft", "-f", os.path.join(gwdir, which + ".nft"))
    h.defer(lambda: nsx("g", "nft", "delete", "table", "inet", "regproxy_" + which,
                        check=False))
    if tproxy:
        for line in open(os.path.join(gwdir, "policy-routing.sh")):
            if line.startswith("ip "):
                nsx("g", *line.split())
                undo = line.split()
                undo[undo.index("add")] = "del"
                h.defer(lambda undo=undo: nsx("g", *undo, check=False))


def with_rules(rules, **values):
    table = rules.split("table ", 1)[1].split(" {", 1)[0]
    nft("g", rules % values)
    h.defer(lambda: nsx("g", "nft", "delete", "table", *table.split(), check=False))


# ---- tests ------------------------------------------------------------------------

def test_redirect_tunnel_mitm_http_and_log():
    rp = start_regproxy()
    generated_rules(rp)
    # A host regproxy does not intercept: the origin's own certificate, bytes untouched.
    r, cert = https_get(ORIGIN_IP, "origin.test", CA.ca_crt)
    assert r.status == 200 and r.body == ORIGIN_BODY + b"host=origin.test\n", r
    assert issuer_cn(cert) == "regproxy integration test CA", cert
    ln = rp.wait_log(via="transparent", host="origin.test", route="tunnel")
    assert ln.get("dst") == "%s:443" % ORIGIN_IP, ln
    assert int(ln["bytes_out"]) > len(ORIGIN_BODY), ln
    # The mitm registry: regproxy's leaf, trusted through /ca.crt alone.
    lan_ca = regproxy_ca(rp)
    r, cert = https_get(REG_IP, "registry.test", os.path.join(lan_ca, "ca.crt"), "/v2/")
    assert r.status == 200, r
    assert issuer_cn(cert) != "regproxy integration test CA", cert
    ln = rp.wait_log(via="transparent", route="mitm", path="/v2/")
    assert ln.get("dst") == "%s:443" % REG_IP and ln.get("host") == "registry.test", ln
    # Plain HTTP: routed by Host, connected to the original destination whatever it says.
    for host in ("origin.test", "elsewhere.test"):
        c = h.HttpConn(sock=ns_connect("c", ORIGIN_IP, 80))
        r = c.request("GET", "/plain?x=1", [("Host", host), ("Connection", "close")])
        c.close()
        assert r.status == 200, r
        assert r.body == b"server=%s request=GET /plain?x=1 HTTP/1.1 host=%s\n" % (
            ORIGIN_IP.encode(), host.encode()), r.body
        ln = rp.wait_log(via="transparent", route="http", host=host)
        assert ln.get("dst") == "%s:80" % ORIGIN_IP and ln.get("path") == "/plain?x=1", ln
    m = metrics(rp)
    assert m.sum("regproxy_requests_total", via="transparent") >= 4, m


def test_skopeo_pulls_through_the_gateway_and_then_from_the_cache():
    rp = start_regproxy()
    with_rules(REDIRECT_RULES, port=rp.tport)
    lan_ca = regproxy_ca(rp)  # the only CA the client trusts: regproxy's
    before = REG.blob_gets()
    outs = []
    for i in range(2):
        out = os.path.join(h.tmpdir(), "out%d" % i)
        ns_skopeo("c", ["copy", "--src-cert-dir", lan_ca,
                        "docker://registry.test/library/alpine:3.18", "oci:%s:3.18" % out])
        mdg, blobs = h.layout_blobs(out)
        assert mdg == IMG.manifest and blobs == IMG.blobs, (mdg, blobs)
        outs.append(REG.blob_gets())
    # First pull: each blob fetched once from the registry; the second: none at all.
    assert outs[0] - before == len(IMG.blobs), (before, outs, len(IMG.blobs))
    assert outs[1] == outs[0], "second pull fetched blobs upstream: %r" % (outs,)
    hits = [ln for ln in rp.request_logs(via="transparent", route="mitm")
            if "/blobs/" in ln.get("path", "") and ln.get("cache") in ("hit", "revalidated")]
    assert len(hits) >= len(IMG.layers), rp.request_logs(via="transparent")


def test_dockerd_pulls_through_the_gateway_and_then_from_the_cache():
    # dockerd in the client namespace, no proxy environment, regproxy's CA beside the
    # system bundle: the pull goes through the gateway; after rmi, the second pull
    # fetches no blob from the registry.
    if h.docker_bin() is None or shutil.which("dockerd") is None:
        print("  (dockerd missing: not checked)")
        return
    rp = start_regproxy()
    generated_rules(rp)
    lan_ca = regproxy_ca(rp)
    d = h.tmpdir("rpit-dockerd-")
    bundle = os.path.join(d, "bundle.pem")
    with open(bundle, "wb") as out:
        if os.path.exists(h.SYSTEM_BUNDLE):
            out.write(open(h.SYSTEM_BUNDLE, "rb").read())
        out.write(open(os.path.join(lan_ca, "ca.crt"), "rb").read())
    sock = os.path.join(d, "docker.sock")
    log = os.path.join(d, "dockerd.log")
    # Not `ip netns exec`: it mounts a fresh /sys, which hides the cgroups dockerd needs.
    # Only the network namespace, and the namespace's hosts file in a private mount.
    hosts = "/etc/netns/%s/hosts" % NS["c"]
    proc = h.Proc(["nsenter", "--net=/var/run/netns/%s" % NS["c"], "unshare", "--mount",
                   "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', hosts,
                   "dockerd", "--iptables=false",
                   "--ip6tables=false", "--bridge=none", "--storage-driver=vfs",
                   "--data-root", os.path.join(d, "data"), "--exec-root", os.path.join(d, "x"),
                   "--pidfile", os.path.join(d, "docker.pid"), "-H", "unix://" + sock],
                  name="dockerd", env=h.clean_env(SSL_CERT_FILE=bundle), stdout=log,
                  stderr=log)
    h.defer(lambda: proc.stop(timeout=10))

    def docker(args, check=True):
        return h.run([h.docker_bin(), "-H", "unix://" + sock] + args, timeout=120,
                     check=check, env=h.clean_env())

    def ready():
        if not proc.alive():
            raise AssertionError("dockerd exited: %s" % h.tail(log))
        return docker(["version"], check=False).returncode == 0
    h.wait_until(ready, 30, "dockerd in the client namespace")
    ref = "registry.test/library/alpine:3.18"
    before = REG.blob_gets()
    docker(["pull", ref])
    first = REG.blob_gets()
    docker(["rmi", ref])
    docker(["pull", ref])
    assert first > before and REG.blob_gets() == first, (before, first, REG.blob_gets())
    lines = rp.request_logs(via="transparent", route="mitm", host="registry.test")
    assert any("/blobs/" in ln.get("path", "") and ln.get("cache") == "hit" for ln in lines), \
        lines


def test_clienthello_split_over_segments_and_records():
    rp = start_regproxy()
    with_rules(REDIRECT_RULES, port=rp.tport)
    lan_ca = os.path.join(regproxy_ca(rp), "ca.crt")
    # Two TCP segments, to the mitm registry: regproxy reassembles and terminates.
    s = ns_connect("c", REG_IP, 443)
    t = TlsByHand(s, "registry.test", lan_ca)
    s.sendall(t.hello[:60])
    time.sleep(0.2)  # shapes the traffic (two segments), synchronises nothing
    s.sendall(t.hello[60:])
    t.finish()
    resp = t.request("registry.test", "/v2/")
    s.close()
    assert resp.startswith(b"HTTP/1.1 200"), resp[:200]
    # Two TLS records, to a tunnelled host: the origin gets them as they were sent.
    s = ns_connect("c", ORIGIN_IP, 443)
    t = TlsByHand(s, "origin.test", CA.ca_crt)
    s.sendall(two_records(t.hello))
    t.finish()
    resp = t.request("origin.test")
    s.close()
    assert resp.startswith(b"HTTP/1.1 200") and ORIGIN_BODY in resp, resp[:200]
    # And both together, to the registry.
    s = ns_connect("c", REG_IP, 443)
    t = TlsByHand(s, "registry.test", lan_ca)
    rec = two_records(t.hello)
    s.sendall(rec[:7])
    time.sleep(0.2)  # as above
    s.sendall(rec[7:])
    t.finish()
    resp = t.request("registry.test", "/v2/")
    s.close()
    assert resp.startswith(b"HTTP/1.1 200"), resp[:200]
    assert len(rp.request_logs(via="transparent", route="mitm", path="/v2/")) >= 2


def test_no_sni_garbage_and_silence_are_tunnelled():
    rp = start_regproxy()
    with_rules(REDIRECT_RULES, port=rp.tport)
    # No SNI (a client to a bare IP): the origin's own certificate.
    r, cert = https_get(ORIGIN_IP, "origin.test", CA.ca_crt, sni=False)
    assert r.status == 200 and issuer_cn(cert) == "regproxy integration test CA", cert
    ln = rp.wait_log(via="transparent", reason="no SNI")
    assert ln.get("route") == "tunnel" and ln.get("host") == ORIGIN_IP, ln
    # Garbage after 0x16: tunnelled byte for byte (the raw origin echoes).
    garbage = b"\x16\x03\x01\x00\x07garbage and more" + os.urandom(3000)
    s = ns_connect("c", ORIGIN_IP, 7777)
    s.sendall(garbage)
    s.shutdown(socket.SHUT_WR)
    got = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        got += d
    s.close()
    assert got == b"banner from %s\n" % ORIGIN_IP.encode() + garbage, got[:100]
    rp.wait_log(via="transparent", reason="not a ClientHello")
    # A client that sends nothing: after the peek time, the origin's banner arrives.
    s = ns_connect("c", ORIGIN_IP, 7777)
    t0 = time.monotonic()
    banner = s.recv(100)
    waited = time.monotonic() - t0
    s.sendall(b"now\n")
    assert banner == b"banner from %s\n" % ORIGIN_IP.encode() and s.recv(100) == b"now\n"
    s.close()
    assert waited < 5, waited
    rp.wait_log(via="transparent", reason="nothing sent within the peek time")
    assert admin(rp, "/healthz").status == 200


def test_plain_http_registry_cached_under_its_destination():
    # distribution without TLS on REG_IP:5000 over the same storage; `mitm` names it with
    # its port, so plain HTTP to it gets the cache (contract §3), keyed by destination too.
    d = h.tmpdir("rpit-plainreg-")
    conf = h.write_file(os.path.join(d, "config.yml"), "\n".join([
        "version: 0.1", "log:", "  level: info", "  accesslog:", "    disabled: false",
        "storage:", "  filesystem:", "    rootdirectory: %s/data" % REG.dir,
        "http:", "  addr: %s:5000" % REG_IP, "  secret: regproxy-plain", ""]))
    log = os.path.join(d, "registry.log")
    proc = h.Proc(["ip", "netns", "exec", NS["s"], "docker-registry", "serve", conf],
                  name="docker-registry", stdout=log, stderr=log)
    h.defer(lambda: proc.stop(signal.SIGTERM, timeout=3))

    def up():
        try:
            c = h.HttpConn(sock=ns_connect("s", REG_IP, 5000, 2))
        except OSError:
            return False
        try:
            return c.request("GET", "/v2/", [("Host", "registry.test:5000")]).status == 200
        finally:
            c.close()
    h.wait_until(up, 15, "plain registry on :5000")
    rp = start_regproxy(mitm="registry.test,registry.test:5000")
    with_rules(REDIRECT_RULES, port=rp.tport)
    for i in range(2):
        out = os.path.join(h.tmpdir(), "plain%d" % i)
        ns_skopeo("c", ["copy", "--src-tls-verify=false",
                        "docker://registry.test:5000/library/alpine:3.18", "oci:%s:3.18" % out])
        mdg, blobs = h.layout_blobs(out)
        assert mdg == IMG.manifest and blobs == IMG.blobs, (mdg, blobs)
    gets = open(log, errors="replace").read().count('"GET /v2/library/alpine/blobs/')
    assert gets == len(IMG.blobs), "blob GETs upstream: %d for %d blobs" % (gets, len(IMG.blobs))
    lines = rp.request_logs(via="transparent", route="http", host="registry.test")
    assert lines and all(ln.get("dst") == "%s:5000" % REG_IP for ln in lines), lines
    assert any(ln.get("cache") == "hit" for ln in lines if "/blobs/" in ln.get("path", "")), lines


def test_engines_on_the_gateway_itself_output_rules_and_mark():
    # host.nft: the gateway's own connections (an engine pulling on this host) go to
    # regproxy through OUTPUT; regproxy's own, marked with --mark, are exempt, for its
    # tunnels (dial) and its upstream fetches (libcurl) alike: no loop, no 508.
    rp = start_regproxy()
    generated_rules(rp, which="host")
    r, cert = https_get(ORIGIN_IP, "origin.test", CA.ca_crt, ns="g")
    assert r.status == 200 and issuer_cn(cert) == "regproxy integration test CA", cert
    ln = rp.wait_log(via="transparent", host="origin.test", route="tunnel")
    assert ln.get("dst") == "%s:443" % ORIGIN_IP and ln.get("status") == "200", ln
    lan_ca = regproxy_ca(rp)
    r, cert = https_get(REG_IP, "registry.test", os.path.join(lan_ca, "ca.crt"), "/v2/",
                        ns="g")
    assert r.status == 200 and issuer_cn(cert) != "regproxy integration test CA", r
    rp.wait_log(via="transparent", route="mitm", path="/v2/", dst="%s:443" % REG_IP)
    assert not rp.request_logs(status="508"), rp.request_logs(status="508")
    assert len(rp.request_logs(via="transparent")) == 2, rp.request_logs(via="transparent")


def test_loop_of_its_own_traffic_is_refused():
    rp = start_regproxy()
    with_rules(REDIRECT_RULES, port=rp.tport)
    with_rules(LOOP_RULES, port=rp.tport, origin=ORIGIN_IP, dport=7777)
    s = ns_connect("c", ORIGIN_IP, 7777)
    s.sendall(b"hello loop\n")
    got = b""
    while True:
        try:
            d = s.recv(65536)
        except ConnectionResetError:
            break
        if not d:
            break
        got += d
    s.close()
    assert b"banner" not in got, got
    ln = rp.wait_log(via="transparent", status="508")
    assert "loop" in ln.get("reason", ""), ln
    # One refusal, not a chain of connections: at most the client's and the loop's.
    assert len(rp.request_logs(via="transparent", dst="%s:7777" % ORIGIN_IP)) <= 2, \
        rp.request_logs(via="transparent")
    assert admin(rp, "/healthz").status == 200


def test_loop_of_its_own_upstream_fetch_is_refused_by_its_mark():
    # The MITM's upstream fetch (libcurl, marked --mark) redirected back to regproxy: with
    # net.ipv4.tcp_fwmark_accept (setup gateway's sysctl) the accepted socket carries the
    # mark and is refused at once; the client's request fails, nothing recurses.
    rp = start_regproxy()
    generated_rules(rp)
    nsx("g", "sysctl", "-qw", "net.ipv4.tcp_fwmark_accept=1")
    h.defer(lambda: nsx("g", "sysctl", "-qw", "net.ipv4.tcp_fwmark_accept=0", check=False))
    with_rules(LOOP_RULES, port=rp.tport, origin=REG_IP, dport=443)
    lan_ca = regproxy_ca(rp)
    try:
        r, _ = https_get(REG_IP, "registry.test", os.path.join(lan_ca, "ca.crt"), "/v2/")
        assert r.status == 502, r
    except h.ConnClosed:
        pass  # the upstream handshake failed: the client's connection is closed (no answer)
    ln = rp.wait_log(via="transparent", status="508")
    assert "own --mark" in ln.get("reason", "") and ln.get("dst") == "%s:443" % REG_IP, ln
    assert len(rp.request_logs(status="508")) == 1, rp.request_logs(status="508")
    assert admin(rp, "/healthz").status == 200


def test_ipv6_redirect_tunnel_and_mitm():
    rp = start_regproxy()
    generated_rules(rp)
    r, cert = https_get(ORIGIN6_IP, "origin.test", CA.ca_crt)
    assert r.status == 200 and issuer_cn(cert) == "regproxy integration test CA", cert
    ln = rp.wait_log(via="transparent", host="origin.test", route="tunnel")
    assert ln.get("dst") == "[%s]:443" % ORIGIN6_IP, ln
    lan_ca = regproxy_ca(rp)
    r, cert = https_get(REG6_IP, "registry.test", os.path.join(lan_ca, "ca.crt"), "/v2/")
    assert r.status == 200 and issuer_cn(cert) != "regproxy integration test CA", r
    ln = rp.wait_log(via="transparent", route="mitm", path="/v2/")
    assert ln.get("dst") == "[%s]:443" % REG6_IP, ln


def test_tproxy_tunnel_mitm_and_http():
    rp = start_regproxy(tproxy=True)
    generated_rules(rp, tproxy=True)
    r, cert = https_get(ORIGIN_IP, "origin.test", CA.ca_crt)
    assert r.status == 200 and issuer_cn(cert) == "regproxy integration test CA", cert
    # TPROXY that misses the listener passes traffic silently: regproxy must have seen it.
    ln = rp.wait_log(via="transparent", host="origin.test", route="tunnel")
    assert ln.get("dst") == "%s:443" % ORIGIN_IP, ln
    lan_ca = regproxy_ca(rp)
    r, cert = https_get(REG_IP, "registry.test", os.path.join(lan_ca, "ca.crt"), "/v2/")
    assert r.status == 200 and issuer_cn(cert) != "regproxy integration test CA", r
    rp.wait_log(via="transparent", route="mitm", path="/v2/", dst="%s:443" % REG_IP)
    c = h.HttpConn(sock=ns_connect("c", ORIGIN_IP, 80))
    r = c.request("GET", "/t", [("Host", "origin.test"), ("Connection", "close")])
    c.close()
    assert r.status == 200 and b"server=%s" % ORIGIN_IP.encode() in r.body, r
    # IPv6 through TPROXY too.
    r, cert = https_get(REG6_IP, "registry.test", os.path.join(lan_ca, "ca.crt"), "/v2/")
    assert r.status == 200 and issuer_cn(cert) != "regproxy integration test CA", r
    rp.wait_log(via="transparent", route="mitm", path="/v2/", dst="[%s]:443" % REG6_IP)


NO_NET_CAPS = ["setpriv", "--inh-caps=-net_admin,-net_raw",
               "--bounding-set=-net_admin,-net_raw"]


def test_tproxy_without_cap_net_admin_says_so_and_exits_2():
    if shutil.which("setpriv") is None:
        print("  (setpriv missing: not checked)")
        return
    d = h.tmpdir("rpit-nocap-")
    r = subprocess.run(NO_NET_CAPS + [REAL_BIN, "--listen", "127.0.0.1:%d" % h.free_port(),
                                      "--transparent", "127.0.0.1:%d" % h.free_port(),
                                      "--tproxy", "--mitm", "", "--cache-dir", d + "/c",
                                      "--ca-dir", d + "/ca"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 2, (r.returncode, err)
    assert "--tproxy" in err and "CAP_NET_ADMIN" in err, err


def test_mark_without_cap_net_admin_is_reported_at_start():
    if shutil.which("setpriv") is None:
        print("  (setpriv missing: not checked)")
        return
    wrapper = os.path.join(h.tmpdir("rpit-nsbin-"), "regproxy-nocap")
    h.write_file(wrapper, '#!/bin/sh\nexec %s %s "$@"\n' % (" ".join(NO_NET_CAPS), REAL_BIN),
                 mode=0o755)
    saved = os.environ.get("REGPROXY_BIN")
    os.environ["REGPROXY_BIN"] = wrapper
    try:
        rp = h.Regproxy(["--transparent", "127.0.0.1:%d" % h.free_port(), "--mark", "7"])
    finally:
        if saved is None:
            os.environ.pop("REGPROXY_BIN", None)
        else:
            os.environ["REGPROXY_BIN"] = saved
    ln = rp.wait_log(level="error")
    assert "SO_MARK needs CAP_NET_ADMIN" in ln.get("msg", ""), ln


if __name__ == "__main__":
    h.main(globals())
