"""Plain-HTTP forwarding of absolute-form requests (contract §2 route=http): keep-alive on
both sides, Via, hop-by-hop headers dropped, bodies streamed in both directions
(chunked and Content-Length), pipelining, response framing (HEAD, 304, HTTP/1.0)."""

import gzip
import os
import uuid

import harness as h


def setup():
    global ORIGIN, RP, BASE, REFUSED
    ORIGIN = h.Nginx(files={"big.bin": 24 * 1024 * 1024})
    REFUSED = h.free_port()
    # Loopback destinations are always direct (route=bypass), so the origin is reached
    # by a test name mapped with --connect-to: those requests are route=http.
    RP = h.Regproxy(["--connect-to", "plain.test:80:127.0.0.1:%d" % ORIGIN.http_port,
                     "--connect-to", "refused.test:80:127.0.0.1:%d" % REFUSED])
    BASE = "http://plain.test"


def mark():
    return uuid.uuid4().hex[:12]


def test_keepalive_two_requests_one_connection():
    m = mark()
    c = RP.conn()
    r1 = c.request("GET", BASE + "/a.txt", [("X-Mark", m + "-1")])
    assert r1.status == 200 and h.sha256(r1.body) == ORIGIN.files["a.txt"], r1
    assert (r1.header("Connection") or "").lower() != "close", r1.headers
    r2 = c.request("GET", BASE + "/b.txt", [("X-Mark", m + "-2")])
    assert r2.status == 200 and h.sha256(r2.body) == ORIGIN.files["b.txt"], r2
    l1 = ORIGIN.wait_access(xmark=m + "-1")[-1]
    l2 = ORIGIN.wait_access(xmark=m + "-2")[-1]
    assert l1["uri"] == "/a.txt" and l2["uri"] == "/b.txt"
    # Keep-alive upstream: nginx saw both requests on one connection.
    assert l1["conn"] == l2["conn"], \
        "upstream connection not reused: nginx conn %s then %s" % (l1["conn"], l2["conn"])
    assert int(l2["reqs"]) == int(l1["reqs"]) + 1, (l1, l2)
    # regproxy logged both, on the same client connection.
    a = RP.wait_log(route="http", method="GET", path="/a.txt", status="200")
    b = RP.wait_log(route="http", method="GET", path="/b.txt", status="200")
    assert a["conn"] == b["conn"], (a, b)
    assert a.get("via") == "proxy" and h.host_is("plain.test", a.get("host")), a
    assert int(b.get("bytes_out", "0")) >= len(r2.body), b


def test_via_added_to_response():
    r = RP.conn().request("GET", BASE + "/a.txt")
    assert r.status == 200
    assert r.header("Via"), "response lacks Via: %r" % r.headers


def test_via_added_to_forwarded_request():
    m = mark()
    r = RP.conn().request("GET", BASE + "/a.txt", [("X-Mark", m)])
    assert r.status == 200
    line = ORIGIN.wait_access(xmark=m)[-1]
    assert line["via"], "request reached the origin without Via: %r" % line


def test_hop_by_hop_headers_not_forwarded():
    m = mark()
    r = RP.conn().request("GET", BASE + "/a.txt", [
        ("Connection", "keep-alive, X-Foo"), ("X-Foo", "1"),
        ("Proxy-Connection", "keep-alive"), ("Keep-Alive", "timeout=5"),
        ("X-Bar", "2"), ("X-Mark", m)])
    assert r.status == 200, r
    line = ORIGIN.wait_access(xmark=m)[-1]
    assert line["xfoo"] == "", "X-Foo (named in Connection) was forwarded: %r" % line
    assert line["pconn"] == "", "Proxy-Connection was forwarded: %r" % line
    assert line["keepalive"] == "", "Keep-Alive was forwarded: %r" % line
    assert "x-foo" not in line["connection"].lower(), line
    assert line["xbar"] == "2", "end-to-end header X-Bar lost: %r" % line


def test_chunked_upload_then_download():
    data = os.urandom(8 * 1024 * 1024 + 12345)
    name = "up-%s.bin" % mark()
    c = RP.conn(timeout=30)
    r = c.request("PUT", BASE + "/dav/" + name, [("Transfer-Encoding", "chunked")],
                  body=h.chunked(data))
    assert r.status in (201, 204), r
    assert h.sha256_file(ORIGIN.dav_path(name)) == h.sha256(data), \
        "origin stored different bytes"
    r = c.request("GET", BASE + "/dav/" + name)
    assert r.status == 200 and len(r.body) == len(data), r
    assert h.sha256(r.body) == h.sha256(data)
    RP.wait_log(route="http", method="PUT", path="/dav/" + name,
                bytes_in=lambda v: int(v) >= len(data))


def test_content_length_upload_curl():
    d = h.tmpdir()
    src = os.path.join(d, "src.bin")
    digest = h.random_file(src, 3 * 1024 * 1024)
    name = "cl-%s.bin" % mark()
    p = h.curl(["-x", RP.url, "-T", src, "-o", "/dev/null", "-w", "%{http_code}",
                BASE + "/dav/" + name], timeout=60)
    assert p.returncode == 0 and p.stdout in (b"201", b"204"), (p.stdout, p.stderr)
    assert h.sha256_file(ORIGIN.dav_path(name)) == digest
    out = os.path.join(d, "back.bin")
    p = h.curl(["-x", RP.url, "-o", out, BASE + "/dav/" + name], timeout=60)
    assert p.returncode == 0 and h.sha256_file(out) == digest, p.stderr


def test_big_download_curl():
    out = os.path.join(h.tmpdir(), "big.bin")
    p = h.curl(["-x", RP.url, "-o", out, "-w", "%{http_code}", BASE + "/big.bin"],
               timeout=120)
    assert p.returncode == 0 and p.stdout == b"200", (p.stdout, p.stderr)
    assert h.sha256_file(out) == ORIGIN.files["big.bin"]


def test_chunked_response():
    c = RP.conn()
    r = c.request("GET", BASE + "/gz/text.txt", [("Accept-Encoding", "gzip")])
    assert r.status == 200, r
    assert r.header("Content-Encoding") == "gzip", r.headers
    assert h.sha256(gzip.decompress(r.body)) == ORIGIN.files["gz/text.txt"]
    # The connection is still usable: the chunked framing ended where it should.
    r = c.request("GET", BASE + "/a.txt")
    assert r.status == 200 and h.sha256(r.body) == ORIGIN.files["a.txt"]


def test_pipelining_in_order():
    c = RP.conn()
    reqs = [("GET", "/a.txt"), ("GET", "/b.txt"), ("HEAD", "/small.bin"),
            ("GET", "/small.bin"), ("GET", "/a.txt")]
    c.send(b"".join(h.build_request(mth, BASE + p) for mth, p in reqs))
    for mth, p in reqs:
        r = c.read_response(mth)
        assert r.status == 200, (mth, p, r)
        name = p[1:]
        if mth == "HEAD":
            assert r.body == b"" and r.header("Content-Length") == str(
                os.path.getsize(ORIGIN.path(name))), r.headers
        else:
            assert h.sha256(r.body) == ORIGIN.files[name], \
                "pipelined response for %s out of order or wrong: %r" % (p, r)


def test_head_and_304_framing():
    c = RP.conn()
    r = c.request("HEAD", BASE + "/small.bin")
    assert r.status == 200 and r.header("Content-Length") == str(64 * 1024), r
    lm = r.header("Last-Modified")
    assert lm
    r = c.request("GET", BASE + "/small.bin", [("If-Modified-Since", lm)])
    assert r.status == 304, r
    r = c.request("GET", BASE + "/a.txt")
    assert r.status == 200 and h.sha256(r.body) == ORIGIN.files["a.txt"], r


def test_http10_client():
    c = RP.conn()
    c.send("GET %s/a.txt HTTP/1.0\r\nHost: plain.test\r\n\r\n" % BASE)
    r = c.read_response()
    assert r.status == 200 and h.sha256(r.body) == ORIGIN.files["a.txt"], r
    assert c.at_eof(5), "HTTP/1.0 client connection without keep-alive not closed"


def test_upstream_refused_502():
    r = RP.conn().request("GET", "http://refused.test/x")
    assert r.status == 502, r
    assert r.body.strip() and len(r.body.strip().splitlines()) == 1, r
    RP.wait_log(route="http", status="502", host="refused.test")
    r = RP.conn().request("GET", "http://127.0.0.1:%d/x" % REFUSED)
    assert r.status == 502, r


def test_404_passed_through():
    r = RP.conn().request("GET", BASE + "/no-such-file")
    assert r.status == 404, r
    RP.wait_log(route="http", path="/no-such-file", status="404")


if __name__ == "__main__":
    h.main(globals())
