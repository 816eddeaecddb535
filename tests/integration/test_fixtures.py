"""The test bed itself, without regproxy: nginx serves HTTP/HTTPS/PUT/chunked, squid
proxies (CONNECT and GET) and logs, the registry answers /v2/ over TLS, skopeo pushes and
pulls. When this file fails, the other files' failures say nothing about regproxy."""

import gzip
import os
import socket
import time

import harness as h


def setup():
    global CA, ORIGIN
    CA = h.shared_ca()
    ORIGIN = h.Nginx()


def test_nginx_http_https():
    c = h.HttpConn("127.0.0.1", ORIGIN.http_port)
    r = c.request("GET", "/a.txt")
    assert r.status == 200 and h.sha256(r.body) == ORIGIN.files["a.txt"], r
    t = h.HttpConn("127.0.0.1", ORIGIN.https_port).start_tls("localhost", CA.ca_crt)
    r = t.request("GET", "/small.bin", host="localhost")
    assert r.status == 200 and h.sha256(r.body) == ORIGIN.files["small.bin"], r
    log = ORIGIN.wait_access(uri="/small.bin", scheme="https")
    assert log[-1]["status"] == "200"


def test_nginx_chunked_put_and_gzip():
    data = os.urandom(300000)
    c = h.HttpConn("127.0.0.1", ORIGIN.http_port)
    r = c.request("PUT", "/dav/fx/up.bin", [("Transfer-Encoding", "chunked")],
                  body=h.chunked(data))
    assert r.status in (201, 204), r
    r = c.request("GET", "/dav/fx/up.bin")
    assert r.status == 200 and r.body == data
    r = c.request("GET", "/gz/text.txt", [("Accept-Encoding", "gzip"), ("Via", "1.1 x")])
    assert r.status == 200 and r.header("Transfer-Encoding") == "chunked", r.headers
    assert h.sha256(gzip.decompress(r.body)) == ORIGIN.files["gz/text.txt"]


def test_squid_connect_and_get():
    sq = h.Squid(hosts={"origin.test": "127.0.0.1"})
    p = h.curl(["-o", "/dev/null", "-w", "%{http_code}", "-x", sq.url, "--cacert",
                CA.ca_crt, "https://origin.test:%d/a.txt" % ORIGIN.https_port], check=True)
    assert p.stdout == b"200", p
    p = h.curl(["-o", "/dev/null", "-w", "%{http_code}", "-x", sq.url,
                "http://origin.test:%d/b.txt" % ORIGIN.http_port], check=True)
    assert p.stdout == b"200", p
    sq.wait_entry(method="CONNECT", url_contains="origin.test:%d" % ORIGIN.https_port)
    sq.wait_entry(method="GET", url_contains="origin.test:%d/b.txt" % ORIGIN.http_port)


def test_registry_and_skopeo_push_pull():
    reg = h.Registry()
    d = h.tmpdir()
    img = h.OciImage(os.path.join(d, "src"))
    h.skopeo(["copy", "--dest-cert-dir", CA.certdir, "oci:%s:3.18" % img.path,
              "docker://127.0.0.1:%d/library/alpine:3.18" % reg.port])
    r = reg.get("/v2/library/alpine/manifests/3.18",
                [("Accept", h.OciImage.MT_MANIFEST)])
    assert r.status == 200 and r.header("Docker-Content-Digest") == img.manifest, r
    out = os.path.join(d, "out")
    h.skopeo(["copy", "--src-cert-dir", CA.certdir,
              "docker://127.0.0.1:%d/library/alpine:3.18" % reg.port, "oci:%s:3.18" % out])
    _, blobs = h.layout_blobs(out)
    assert blobs == img.blobs, (blobs, img.blobs)


def test_full_backlog_times_out():
    fb = h.FullBacklog()
    s = socket.socket()
    s.settimeout(1.0)
    t0 = time.monotonic()
    try:
        s.connect(("127.0.0.1", fb.port))
        raise AssertionError("connect to a full backlog succeeded")
    except socket.timeout:
        assert time.monotonic() - t0 >= 0.9
    finally:
        s.close()


def test_eof_server():
    srv = h.EofServer()
    c = h.HttpConn("127.0.0.1", srv.port)
    c.send(b"hello")
    c.shutdown_write()
    assert c.read_to_eof() == b"got 5 sha256=%s\n" % h.sha256(b"hello").encode()


if __name__ == "__main__":
    h.main(globals())
