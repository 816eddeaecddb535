"""Parent proxy (contract §2 "Parent proxy", §4 precedence) with squid as the parent:
non-bypassed tunnels and plain-HTTP requests go through squid, no_proxy destinations and
loopback never do, SIGHUP reloads no_proxy without dropping an open tunnel, and a parent
taken from the environment that points at regproxy itself is ignored with a warning.

squid's access log is the witness. Test names resolve only inside squid (hosts_file) and,
for direct connections, through regproxy's --connect-to. The bypassed host is served by a
second nginx so its ports never appear in squid's log for any other reason."""

import os
import signal
import uuid

import harness as h

NAMES = ("origin.test", "other.test", "bypass.test")


def setup():
    global CA, ORIGIN, BYPASS, SQUID
    CA = h.shared_ca()
    ORIGIN = h.Nginx()
    BYPASS = h.Nginx()
    SQUID = h.Squid(hosts={n: "127.0.0.1" for n in NAMES})


def connect_to_args():
    out = []
    for name, srv in (("origin.test", ORIGIN), ("other.test", ORIGIN),
                      ("bypass.test", BYPASS)):
        for port in (srv.http_port, srv.https_port):
            out += ["--connect-to", "%s:%d:127.0.0.1:%d" % (name, port, port)]
    return out


def write_config(path, no_proxy, extra=""):
    h.write_file(path, "# regproxy test config\nparent_proxy: \"%s\"\nno_proxy: \"%s\"\n%s" % (
        SQUID.url, no_proxy, extra))


def start_proxy(no_proxy="bypass.test"):
    d = h.tmpdir()
    conf = os.path.join(d, "regproxy.yml")
    write_config(conf, no_proxy)
    rp = h.Regproxy(["--config", conf] + connect_to_args())
    return rp, conf


def squid_connects(port):
    """squid CONNECT entries to port, whatever host name the target carried."""
    return [e for e in SQUID.entries(method="CONNECT")
            if e.get("url", "").endswith(":%d" % port)]


def sentinel():
    """A plain GET through squid that must appear in its log; once it has, every
    transaction squid finished before it is in the log too."""
    m = uuid.uuid4().hex
    h.curl(["-x", SQUID.url, "-o", "/dev/null",
            "http://other.test:%d/a.txt?sentinel=%s" % (ORIGIN.http_port, m)], check=True)
    SQUID.wait_entry(method="GET", url_contains=m)


def tls_tunnel(rp, host, port, name="a.txt"):
    """CONNECT host:port through rp, GET /name over TLS, close; return (route, log)."""
    c = rp.conn()
    r = c.connect_tunnel("%s:%d" % (host, port))
    assert r.status_line == "HTTP/1.1 200 Connection established", r
    local = "127.0.0.1:%d" % c.sock.getsockname()[1]
    c.start_tls(host, CA.ca_crt)
    resp = c.request("GET", "/" + name, [("Connection", "close")], host=host)
    assert resp.status == 200, resp
    c.close()
    line = rp.wait_log(client=local, method="CONNECT")
    return line.get("route"), line


def test_tunnel_goes_through_parent():
    rp, _ = start_proxy()
    route, line = tls_tunnel(rp, "origin.test", ORIGIN.https_port)
    assert route == "tunnel", line
    assert h.host_is("origin.test", line.get("host")), line
    e = h.wait_until(lambda: squid_connects(ORIGIN.https_port), 5,
                     "squid CONNECT to origin.test:%d" % ORIGIN.https_port)
    assert e[-1]["status"] == "200", e[-1]["raw"]


def test_plain_get_goes_through_parent():
    rp, _ = start_proxy()
    m = uuid.uuid4().hex
    r = rp.conn().request("GET", "http://origin.test:%d/a.txt?m=%s" % (ORIGIN.http_port, m))
    assert r.status == 200 and h.sha256(r.body) == ORIGIN.files["a.txt"], r
    e = SQUID.wait_entry(method="GET", url_contains=m)
    assert "/a.txt?m=%s" % m in e[-1]["url"], e
    rp.wait_log(route="http", method="GET", host="origin.test")


def test_bypass_never_reaches_parent():
    rp, _ = start_proxy()
    route, line = tls_tunnel(rp, "bypass.test", BYPASS.https_port)
    assert route == "bypass", "no_proxy destination logged route=%s: %r" % (route, line)
    m = uuid.uuid4().hex
    r = rp.conn().request("GET", "http://bypass.test:%d/b.txt?m=%s" % (BYPASS.http_port, m))
    assert r.status == 200 and h.sha256(r.body) == BYPASS.files["b.txt"], r
    BYPASS.wait_access(uri="/b.txt?m=%s" % m)
    sentinel()
    leaked = [e["raw"] for e in SQUID.access_log()
              if ":%d" % BYPASS.https_port in e.get("url", "")
              or ":%d" % BYPASS.http_port in e.get("url", "") or m in e.get("url", "")]
    assert not leaked, "bypassed requests reached the parent:\n" + "\n".join(leaked)


def test_loopback_always_direct():
    rp, _ = start_proxy(no_proxy="")
    route, line = tls_tunnel(rp, "localhost", BYPASS.https_port)
    assert route == "bypass", "loopback destination logged route=%s: %r" % (route, line)
    route, line = tls_tunnel(rp, "127.0.0.1", BYPASS.https_port)
    assert route == "bypass", "loopback destination logged route=%s: %r" % (route, line)
    sentinel()
    leaked = [e["raw"] for e in squid_connects(BYPASS.https_port)]
    assert not leaked, "loopback tunnels went through the parent:\n" + "\n".join(leaked)


def test_sighup_reloads_no_proxy_keeps_tunnel():
    sentinel()  # squid's log is shared by the file's tests: count from here on
    base = len(squid_connects(ORIGIN.https_port))
    rp, conf = start_proxy(no_proxy="bypass.test")
    # A tunnel through the parent, opened before the reload and kept open.
    old = rp.conn(timeout=15)
    assert old.connect_tunnel("origin.test:%d" % ORIGIN.https_port).status == 200
    old.start_tls("origin.test", CA.ca_crt)
    r = old.request("GET", "/a.txt", host="origin.test")
    assert r.status == 200
    route, _ = tls_tunnel(rp, "origin.test", ORIGIN.https_port)
    assert route == "tunnel"

    write_config(conf, "bypass.test,origin.test")
    rp.signal(signal.SIGHUP)

    routes = []

    def switched():
        routes.append(tls_tunnel(rp, "origin.test", ORIGIN.https_port)[0])
        return routes[-1] == "bypass"
    try:
        h.wait_until(switched, 10, "route=bypass for origin.test after SIGHUP",
                     interval=0.1)
    except h.Timeout as e:
        raise AssertionError("%s; routes seen: %s" % (e, routes)) from None
    assert rp.alive(), "regproxy died on SIGHUP"

    # Every finished route=tunnel tunnel is in squid's log; nothing else is.
    def through_parent():
        return len(rp.request_logs(route="tunnel", host="origin.test", method="CONNECT"))
    h.wait_until(lambda: len(squid_connects(ORIGIN.https_port)) - base == through_parent(),
                 5, "squid's CONNECT count to match regproxy's route=tunnel count")
    before = len(squid_connects(ORIGIN.https_port))
    route, line = tls_tunnel(rp, "origin.test", ORIGIN.https_port)
    assert route == "bypass", line
    sentinel()
    assert len(squid_connects(ORIGIN.https_port)) == before, \
        "a tunnel after the reload still went through squid"

    # The tunnel opened before the reload still carries requests.
    r = old.request("GET", "/b.txt", host="origin.test")
    assert r.status == 200 and h.sha256(r.body) == ORIGIN.files["b.txt"], r
    r = old.request("GET", "/small.bin", host="origin.test")
    assert r.status == 200 and h.sha256(r.body) == ORIGIN.files["small.bin"], r


def test_parent_from_environment():
    rp = h.Regproxy(connect_to_args(), env={"HTTPS_PROXY": SQUID.url,
                                            "NO_PROXY": "bypass.test"})
    route, line = tls_tunnel(rp, "origin.test", ORIGIN.https_port)
    assert route == "tunnel", line
    h.wait_until(lambda: squid_connects(ORIGIN.https_port), 5, "squid CONNECT")
    route, line = tls_tunnel(rp, "bypass.test", BYPASS.https_port)
    assert route == "bypass", "NO_PROXY from the environment not applied: %r" % line


def test_env_parent_pointing_at_self_is_ignored():
    port = h.free_port()
    own = "http://127.0.0.1:%d" % port
    rp = h.Regproxy(["--listen", "127.0.0.1:%d" % port] + connect_to_args(),
                    env={"HTTPS_PROXY": own, "HTTP_PROXY": own})
    # Ignored: tunnels and plain requests go direct instead of looping into itself.
    route, line = tls_tunnel(rp, "origin.test", ORIGIN.https_port)
    assert route == "tunnel", line
    r = rp.conn().request("GET", "http://origin.test:%d/a.txt" % ORIGIN.http_port)
    assert r.status == 200 and h.sha256(r.body) == ORIGIN.files["a.txt"], r


def test_env_parent_pointing_at_self_warns():
    port = h.free_port()
    own = "http://127.0.0.1:%d" % port
    rp = h.Regproxy(["--listen", "127.0.0.1:%d" % port], env={"HTTPS_PROXY": own})
    warns = [d for d in rp.log_lines() if d.get("level") in ("warn", "warning")
             and "proxy" in " ".join(d.values()).lower()]
    assert warns, "no level=warn line about the ignored self-pointing HTTPS_PROXY:\n" + \
        rp.stderr()[-2000:]


def test_parent_down_502():
    dead = h.free_port()
    rp = h.Regproxy(["--parent-proxy", "http://127.0.0.1:%d" % dead] + connect_to_args())
    c = rp.conn()
    r = c.connect_tunnel("origin.test:%d" % ORIGIN.https_port)
    assert r.status == 502, "CONNECT with the parent down: %r" % r
    r = rp.conn().request("GET", "http://origin.test:%d/a.txt" % ORIGIN.http_port)
    assert r.status == 502, "GET with the parent down: %r" % r


if __name__ == "__main__":
    h.main(globals())
