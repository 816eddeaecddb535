"""Bad input (contract §7): each malformed request gets its status code, the proxy keeps
serving afterwards, and nothing of a rejected request reaches the origin."""

import os
import select
import time

import harness as h


def setup():
    global ORIGIN, RP, BASE
    ORIGIN = h.Nginx()
    RP = h.Regproxy(["--header-timeout", "1s"])
    BASE = "http://127.0.0.1:%d" % ORIGIN.http_port


def send_raw(data, timeout=10.0):
    """Send raw bytes on a fresh connection; return the first response."""
    c = RP.conn(timeout=timeout)
    try:
        c.send(data)
        return c.read_response()
    finally:
        c.close()


def expect(data, want, what):
    r = send_raw(data)
    assert r.status == want, "%s: expected %d, got %r" % (what, want, r)
    return r


def assert_still_serving():
    assert RP.alive(), "regproxy is gone"
    r = RP.conn().request("GET", BASE + "/a.txt")
    assert r.status == 200 and h.sha256(r.body) == ORIGIN.files["a.txt"], r
    r = RP.get_admin("/healthz")
    assert r.status == 200 and r.body.strip() == b"ok"


def req(head_lines, body=b""):
    return ("\r\n".join(head_lines) + "\r\n\r\n").encode("latin-1") + body


def test_head_over_64k_431():
    filler = ["X-Fill-%03d: %s" % (i, "f" * 1000) for i in range(70)]  # ~70 KiB
    expect(req(["GET %s/a.txt HTTP/1.1" % BASE, "Host: 127.0.0.1"] + filler), 431,
           "request head > 64 KiB")
    big_line = "X-Big: " + "b" * (66 * 1024)
    expect(req(["GET %s/a.txt HTTP/1.1" % BASE, "Host: 127.0.0.1", big_line]), 431,
           "one header line > 64 KiB")
    expect(req(["GET %s/%s HTTP/1.1" % (BASE, "u" * (66 * 1024)), "Host: x"]), 431,
           "request target > 64 KiB")
    assert_still_serving()


def test_head_under_64k_passes():
    filler = ["X-Fill-%03d: %s" % (i, "f" * 1000) for i in range(48)]  # ~48 KiB
    r = send_raw(req(["GET %s/a.txt HTTP/1.1" % BASE, "Host: 127.0.0.1"] + filler))
    assert r.status == 200, "48 KiB request head refused: %r" % r


def test_obsolete_line_folding_400():
    expect(req(["GET %s/a.txt HTTP/1.1" % BASE, "Host: 127.0.0.1", "X-A: one",
                " two"]), 400, "obs-fold with a space")
    expect(req(["GET %s/a.txt HTTP/1.1" % BASE, "Host: 127.0.0.1", "X-A: one",
                "\ttwo"]), 400, "obs-fold with a tab")
    expect(req(["CONNECT 127.0.0.1:%d HTTP/1.1" % ORIGIN.http_port, "Host: 127.0.0.1",
                "X-A: one", " two"]), 400, "obs-fold in CONNECT")
    assert_still_serving()


def test_content_length_and_transfer_encoding_400():
    m = "cl-te-smuggle"
    expect(req(["POST %s/a.txt?%s HTTP/1.1" % (BASE, m), "Host: 127.0.0.1",
                "Content-Length: 5", "Transfer-Encoding: chunked"], b"0\r\n\r\n"),
           400, "Content-Length + Transfer-Encoding")
    expect(req(["POST %s/a.txt?%s HTTP/1.1" % (BASE, m), "Host: 127.0.0.1",
                "Transfer-Encoding: chunked", "Content-Length: 5"], b"0\r\n\r\n"),
           400, "Transfer-Encoding + Content-Length")
    expect(req(["POST %s/a.txt?%s HTTP/1.1" % (BASE, m), "Host: 127.0.0.1",
                "Content-Length: 5", "Content-Length: 6"], b"hello!"),
           400, "two different Content-Length values")
    assert not [d for d in ORIGIN.access_log() if m in d.get("uri", "")], \
        "a rejected request reached the origin"
    assert_still_serving()


def test_bare_lf_and_cr_400():
    expect(("GET %s/a.txt HTTP/1.1\nHost: 127.0.0.1\n\n" % BASE).encode(), 400,
           "bare LF line ends")
    expect(("GET %s/a.txt HTTP/1.1\r\nHost: 127.0.0.1\nX-A: 1\r\n\r\n" % BASE).encode(),
           400, "one bare LF among CRLFs")
    expect(("GET %s/a.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: a\rb\r\n\r\n" % BASE)
           .encode(), 400, "bare CR inside a header value")
    assert_still_serving()


def test_malformed_requests_400():
    cases = [
        (req(["GET %s/a.txt HTTP/1.1" % BASE, "Host 127.0.0.1"]), "header without colon"),
        (req(["GET %s/a.txt HTTP/1.1" % BASE, "Host: 127.0.0.1", "Bad Name: x"]),
         "space in header name"),
        (req(["GET %s/a.txt HTTP/1.1" % BASE, "Host: 127.0.0.1", " X-Lead: x"]),
         "header line starting with a space"),
        (req(["GET %s/a.txt HTTP/1.1 extra" % BASE, "Host: 127.0.0.1"]),
         "junk after the version"),
        (req(["GET %s/a.txt HTPT/1.1" % BASE, "Host: 127.0.0.1"]), "bad version token"),
        (req(["GET  %s/a.txt HTTP/1.1" % BASE, "Host: 127.0.0.1"]), "double space"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, "TLS ClientHello"),
        (req(["POST %s/a.txt HTTP/1.1" % BASE, "Host: 127.0.0.1",
              "Content-Length: -1"]), "negative Content-Length"),
        (req(["POST %s/a.txt HTTP/1.1" % BASE, "Host: 127.0.0.1",
              "Content-Length: 12abc"]), "non-numeric Content-Length"),
    ]
    problems = []
    for data, what in cases:
        try:
            r = send_raw(data)
            if r.status != 400:
                problems.append("%s: got %d" % (what, r.status))
        except AssertionError as e:
            problems.append("%s: %s" % (what, str(e).splitlines()[0]))
    assert not problems, "malformed requests not answered 400:\n  " + "\n  ".join(problems)
    assert_still_serving()


def test_unknown_method_501():
    # RFC 9110 §9.1: a method the server does not recognise is 501; 405 means a
    # method it knows that the resource does not allow.
    for line in ("FOO %s/a.txt HTTP/1.1" % BASE, "BREW %s/pot HTTP/1.1" % BASE,
                 "FOO /healthz HTTP/1.1", "FOO /v2/ HTTP/1.1", "FOO 127.0.0.1:443 HTTP/1.1"):
        r = expect(req([line, "Host: 127.0.0.1"]), 501, line)
        assert r.reason == "Not Implemented" and r.body.strip() == b"unknown method", r
    RP.wait_log(method="-", status="501")
    assert_still_serving()
    assert not [d for d in ORIGIN.access_log() if d.get("method") in ("FOO", "BREW")]


def test_known_method_not_allowed_405_with_allow():
    for method, path in (("POST", "/healthz"), ("PUT", "/status.json"),
                         ("DELETE", "/v2/library/alpine/manifests/1"),
                         ("POST", "/v2/library/alpine/blobs/uploads/")):
        r = RP.conn().request(method, path, [("Host", "127.0.0.1")], body=b"")
        assert r.status == 405 and r.reason == "Method Not Allowed", (method, path, r)
        assert r.header("Allow") == "GET, HEAD", (method, path, r)
    assert_still_serving()


def test_malformed_host_on_admin_and_mirror_400():
    # Origin-form requests are answered by regproxy itself; their Host must be one
    # uri-host[:port] (RFC 9112 §3.2).
    bad = [["["], ["[::1"], ["[]"], ["[::1]x"], ["host:"], [":443"], ["host:99999"],
           ["a b"], [""], [], ["127.0.0.1", "127.0.0.1"], ["localhost:x"]]
    c = RP.conn()
    problems = []
    for hosts in bad:
        for path in ("/healthz", "/v2/", "/metrics"):
            c.send("GET %s HTTP/1.1\r\n%s\r\n" % (
                path, "".join("Host: %s\r\n" % v for v in hosts)))
            r = c.read_response()
            if r.status != 400 or not r.body.startswith(b"bad Host header"):
                problems.append("Host %r %s -> %r" % (hosts, path, r))
    assert not problems, "\n".join(problems)
    # The same connection goes on.
    for host in ("127.0.0.1", "[::1]:1", "localhost."):
        r = c.request("GET", "/healthz", [("Host", host)])
        assert r.status == 200 and r.body == b"ok\n", (host, r)
    r = c.request("GET", "/v2/", [("Host", "127.0.0.1")])
    assert r.status == 200, r
    r = c.request("GET", "/healthz", [("Host", "evil.example")])
    assert r.status == 421, r
    c.close()
    assert_still_serving()


def test_stalled_head_408():
    c = RP.conn(timeout=10)
    t0 = time.monotonic()
    c.send("GET %s/a.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half: " % BASE)
    r = c.read_response()
    dt = time.monotonic() - t0
    assert r.status == 408, "stalled head: expected 408, got %r" % r
    assert 0.8 <= dt <= 5.0, "408 after %.2fs with --header-timeout 1s" % dt
    assert c.at_eof(3), "connection not closed after 408"
    assert_still_serving()


def test_slowloris_drip_408():
    # A head dripping in a byte every 0.1 s still has to be complete within
    # header_timeout: the timer is for the whole head, not per read.
    c = RP.conn(timeout=10)
    t0 = time.monotonic()
    head = "GET %s/a.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nX-D: %s" % (BASE, "d" * 100)
    for ch in head:
        if time.monotonic() - t0 > 5:
            break
        try:
            c.send(ch)
        except OSError:
            break
        readable, _, _ = select.select([c.sock], [], [], 0.1)
        if readable:
            break
    r = c.read_response()
    dt = time.monotonic() - t0
    assert r.status == 408, "dripped head: expected 408, got %r" % r
    assert dt <= 5.0, "408 only after %.2fs with --header-timeout 1s" % dt


def test_empty_connection_closed_quietly():
    # A client that connects and closes without a byte must not disturb anything.
    for _ in range(20):
        c = RP.conn()
        c.close()
    c = RP.conn()
    c.send(b"\r\n")
    c.shutdown_write()
    c.read_to_eof()
    assert_still_serving()


def test_garbage_burst_then_normal():
    for i in range(30):
        c = RP.conn(timeout=5)
        try:
            c.send(os.urandom(64 + i * 97))
            c.shutdown_write()
            c.read_to_eof()
        except (OSError, AssertionError):
            pass
        finally:
            c.close()
    assert_still_serving()


if __name__ == "__main__":
    h.main(globals())
