"""CONNECT tunnels (contract §2 route=tunnel, §7): a 100 MiB download through a tunnel,
the exact 200 status line, the tunnel's log line, 502/504/400 refusals with a reason,
and half-close relayed in both directions."""

import os
import subprocess
import time

import harness as h

BIG = 100 * 1024 * 1024


def setup():
    global CA, ORIGIN, RP, EOFSRV, BACKLOG, CLOSED
    CA = h.shared_ca()
    ORIGIN = h.Nginx(files={"big.bin": BIG})
    EOFSRV = h.EofServer()   # answers only after it has seen the client's FIN
    BACKLOG = h.FullBacklog()  # SYNs to it are dropped: connects can only time out
    CLOSED = h.free_port()
    # Loopback destinations are always direct (route=bypass, contract §2 host lists), so the
    # tunnel cases use test names mapped with --connect-to; those log route=tunnel.
    maps = {"tls.test:443": ORIGIN.https_port, "tls.test:%d" % ORIGIN.https_port:
            ORIGIN.https_port, "plain.test:80": ORIGIN.http_port,
            "eof.test:80": EOFSRV.port, "closed.test:80": CLOSED,
            "slow.test:443": BACKLOG.port}
    args = ["--connect-timeout", "1s"]
    for src, port in maps.items():
        args += ["--connect-to", "%s:127.0.0.1:%d" % (src, port)]
    RP = h.Regproxy(args)


def test_big_download_through_tunnel_curl():
    out = os.path.join(h.tmpdir(), "big.bin")
    p = h.curl(["-o", out, "-w", "%{http_code} %{http_connect}", "-x", RP.url,
                "--cacert", CA.ca_crt, "--http1.1",
                "https://tls.test:%d/big.bin" % ORIGIN.https_port], timeout=120)
    assert p.returncode == 0, "curl failed: %r" % p.stderr
    assert p.stdout == b"200 200", "curl saw http_code/http_connect %r" % p.stdout
    assert os.path.getsize(out) == BIG, os.path.getsize(out)
    assert h.sha256_file(out) == ORIGIN.files["big.bin"], "sha256 differs"
    line = RP.wait_log(route="tunnel", host="tls.test", method="CONNECT")
    assert line.get("via") == "proxy", line
    assert line.get("status") == "200", line
    assert int(line.get("bytes_out", "0")) >= BIG, \
        "bytes_out=%s < body size %d" % (line.get("bytes_out"), BIG)
    assert int(line.get("bytes_in", "0")) > 0, line
    for k in ("conn", "client", "ms"):
        assert k in line, "log line lacks %s=: %r" % (k, line)
    assert line["client"].startswith("127.0.0.1:"), line


def test_exact_status_line_and_tls_inside():
    c = RP.conn()
    r = c.connect_tunnel("tls.test:443")
    assert r.status_line == "HTTP/1.1 200 Connection established", r.raw_head
    c.start_tls("tls.test", CA.ca_crt)
    for name in ("a.txt", "small.bin"):  # two requests, one tunnel (keep-alive inside)
        resp = c.request("GET", "/" + name, host="tls.test")
        assert resp.status == 200 and h.sha256(resp.body) == ORIGIN.files[name], resp


def test_loopback_literal_target():
    c = RP.conn()
    r = c.connect_tunnel("127.0.0.1:%d" % ORIGIN.https_port)
    assert r.status_line == "HTTP/1.1 200 Connection established", r.raw_head
    c.start_tls("localhost", CA.ca_crt)
    resp = c.request("GET", "/small.bin", host="localhost")
    assert resp.status == 200 and h.sha256(resp.body) == ORIGIN.files["small.bin"], resp


def test_ipv6_literal_target():
    srv = h.EofServer("::1")
    c = RP.conn()
    r = c.connect_tunnel("[::1]:%d" % srv.port)
    assert r.status_line == "HTTP/1.1 200 Connection established", r.raw_head
    c.send(b"over v6")
    c.shutdown_write()
    assert c.read_to_eof() == b"got 7 sha256=%s\n" % h.sha256(b"over v6").encode()


def _refusal(target, want, rp=None, timeout=10.0):
    rp = rp or RP
    c = rp.conn(timeout=timeout)
    t0 = time.monotonic()
    r = c.connect_tunnel(target)
    dt = time.monotonic() - t0
    assert r.status == want, "CONNECT %s: expected %d, got %r" % (target, want, r)
    # The reply to a failed CONNECT is a normal response whose body is a reason.
    body = r.body
    assert body.strip(), "CONNECT %s -> %d without a reason in the body" % (target, want)
    assert len(body.strip().splitlines()) == 1, "reason is not one line: %r" % body
    return r, body, dt


def test_closed_port_502():
    _refusal("closed.test:80", 502)
    RP.wait_log(route="tunnel", status="502", host="closed.test", method="CONNECT")
    _refusal("127.0.0.1:%d" % CLOSED, 502)


def test_dns_failure_502():
    _refusal("nonexistent.invalid:443", 502)
    RP.wait_log(status="502", host="nonexistent.invalid")


def test_connect_timeout_504():
    _, _, dt = _refusal("slow.test:443", 504, timeout=15)
    assert 0.8 <= dt <= 6.0, "504 after %.2fs with --connect-timeout 1s" % dt
    RP.wait_log(route="tunnel", status="504", host="slow.test")


BAD_TARGETS = [
    "localhost",                # no port
    "127.0.0.1:",               # empty port
    "127.0.0.1:0",              # port 0
    "127.0.0.1:65536",          # port out of range
    "127.0.0.1:99999999999",    # overflow
    "127.0.0.1:8x",             # not a number
    "user@127.0.0.1:443",       # userinfo
    "user:pw@localhost:443",    # userinfo with password
    "[fe80::1%25eth0]:443",     # zone id (URL-escaped)
    "[fe80::1%eth0]:443",       # zone id
    "[::1:443",                 # unbalanced bracket
    "::1:443",                  # IPv6 without brackets
    ":443",                     # no host
    "http://127.0.0.1:443/",    # a URL, not authority-form
    "exa<mple>.com:443",        # characters no host name has
    "%%%:443",                  # garbage
    "127.0.0.1:443/path",       # path
]


def test_bad_targets_400():
    failures = []
    for t in BAD_TARGETS:
        try:
            _refusal(t, 400)
        except AssertionError as e:
            failures.append("CONNECT %s: %s" % (t, str(e).splitlines()[0]))
    assert not failures, "bad CONNECT targets not refused with 400:\n  " + \
        "\n  ".join(failures)
    assert RP.alive()


def test_half_close_relayed():
    c = RP.conn()
    r = c.connect_tunnel("eof.test:80")
    assert r.status == 200, r
    payload = os.urandom(300000)
    c.send(payload)
    c.shutdown_write()
    got = c.read_to_eof()
    assert got == b"got %d sha256=%s\n" % (len(payload), h.sha256(payload).encode()), got
    RP.wait_log(route="tunnel", host="eof.test", status="200",
                bytes_in=lambda v: int(v) >= len(payload))


def test_server_half_close_relayed():
    # nginx answers a Connection: close request and closes; the client still has its
    # side open and must see all the bytes, then EOF.
    c = RP.conn()
    assert c.connect_tunnel("plain.test:80").status == 200
    c.send(h.build_request("GET", "/small.bin", [("Connection", "close")],
                           host="localhost"))
    r = c.read_response()
    assert r.status == 200 and h.sha256(r.body) == ORIGIN.files["small.bin"], r
    assert c.at_eof(5), "tunnel not closed after the origin closed"


def test_parallel_tunnels():
    # Several downloads at once through one proxy (relay fairness, no cross-talk).
    d = h.tmpdir()
    procs = []
    for i in range(6):
        out = os.path.join(d, "f%d" % i)
        name = "small.bin" if i % 2 else "gz/text.txt"
        procs.append((name, out, subprocess.Popen(
            ["curl", "-sS", "-o", out, "-x", RP.url, "--cacert", CA.ca_crt,
             "https://tls.test/%s" % name],
            env=h.clean_env(), stderr=subprocess.PIPE)))
        h.defer(lambda p=procs[-1][2]: p.poll() is None and p.kill())
    for name, out, p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert h.sha256_file(out) == ORIGIN.files[name], name


if __name__ == "__main__":
    h.main(globals())
