"""The cache against a misbehaving upstream (issue 4): a stand-in registry (the one
thing the distribution registry cannot do: answer with a CDN redirect, wrong bytes, or a
cut body). (a) A 307 to a second host is followed by regproxy and the blob is cached
under its digest; (b) wrong bytes never enter the cache and the client never receives a
complete body; (c) a body cut mid-way is resumed from the registry URL with Range (at most three
times) and publishes nothing when it cannot be completed."""

import glob
import hashlib
import http.server
import os
import ssl
import subprocess
import threading
import time

import harness as h

HOST = "registry-1.docker.io"
GOOD = os.urandom(3 * 1024 * 1024)
DIGEST = "sha256:" + hashlib.sha256(GOOD).hexdigest()


class Standin:
    def __init__(self, ca, mode):
        self.mode = mode
        self.requests = []
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.requests.append((self.headers.get("Host"), self.path))
                if self.path == "/v2/":
                    return self._send(200, b"{}")
                if self.path.startswith("/cdn/"):
                    return self._send(200, GOOD)
                if outer.mode == "redirect":
                    self.send_response(307)
                    self.send_header("Location", "https://other.test/cdn/blob?sig=abc")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if outer.mode == "slow":
                    # The whole blob, trickled over ~2 s: a fill that stays open.
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(GOOD)))
                    self.send_header("Docker-Content-Digest", DIGEST)
                    self.end_headers()
                    step = len(GOOD) // 20
                    for i in range(0, len(GOOD), step):
                        self.wfile.write(GOOD[i:i + step])
                        self.wfile.flush()
                        time.sleep(0.1)
                    return
                if outer.mode == "wrong":
                    bad = bytearray(GOOD)
                    bad[len(bad) // 2] ^= 0xff
                    return self._send(200, bytes(bad))
                # cut / cut-once: Range is honoured; a cut body announces its full
                # length, sends half and closes.
                rng = self.headers.get("Range")
                start = int(rng[6:-1]) if rng else 0
                body = GOOD[start:]
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", "bytes %d-%d/%d" % (
                        start, len(GOOD) - 1, len(GOOD)))
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Docker-Content-Digest", DIGEST)
                self.end_headers()
                if outer.mode == "cut" or not rng:
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def _send(self, code, body):
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Docker-Content-Digest", DIGEST)
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(ca.chain, ca.key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        h.defer(self.httpd.shutdown)


def setup():
    global CA
    CA = h.shared_ca()


def proxy(st):
    return h.Regproxy(["--mitm", HOST, "--upstream-ca", CA.ca_crt,
                       "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, st.port),
                       "--connect-to", "other.test:443:127.0.0.1:%d" % st.port])


def get_blob(rp, out):
    return h.curl(["-o", out, "-w", "%{http_code}", "-x", rp.url, "--cacert",
                   os.path.join(rp.dir, "ca", "ca.crt"),
                   "https://%s/v2/library/x/blobs/%s" % (HOST, DIGEST)])


def published(rp):
    return glob.glob(os.path.join(rp.dir, "cache", "blobs", "sha256", "*", DIGEST[7:]))


def test_redirect_followed_and_cached():
    st = Standin(CA, "redirect")
    rp = proxy(st)
    out = os.path.join(h.tmpdir(), "a")
    r = get_blob(rp, out)
    assert r.stdout.strip() == b"200" and h.sha256_file(out) == DIGEST[7:], r
    assert ("other.test", "/cdn/blob?sig=abc") in st.requests, st.requests
    h.wait_until(lambda: published(rp), 5, "the blob published under its digest")
    n = len(st.requests)
    r = get_blob(rp, os.path.join(h.tmpdir(), "b"))
    assert r.stdout.strip() == b"200" and len(st.requests) == n, "second GET went upstream"
    assert rp.request_logs(route="mitm", cache="hit")


def test_wrong_bytes_never_cached_nor_delivered_whole():
    st = Standin(CA, "wrong")
    rp = proxy(st)
    out = os.path.join(h.tmpdir(), "w")
    r = get_blob(rp, out)
    assert r.returncode != 0, "curl completed a blob whose digest does not match"
    size = os.path.getsize(out) if os.path.exists(out) else 0
    assert size < len(GOOD), "the client received all %d bytes of a wrong blob" % size
    assert not published(rp), "a blob that failed verification was published"
    assert not glob.glob(os.path.join(rp.dir, "cache", "tmp", "*")), "temp file left behind"
    h.wait_until(lambda: rp.metrics().sum("regproxy_digest_mismatch_total") >= 1, 5,
                 "regproxy_digest_mismatch_total counted")
    assert "digest_mismatch" in rp.stderr()


def test_range_served_from_a_growing_fill():
    st = Standin(CA, "slow")
    rp = proxy(st)
    rpca = os.path.join(rp.dir, "ca", "ca.crt")
    url = "https://%s/v2/library/x/blobs/%s" % (HOST, DIGEST)
    first = subprocess.Popen(["curl", "-sS", "-o", os.path.join(h.tmpdir(), "f"), "-x", rp.url,
                              "--cacert", rpca, url])
    h.defer(lambda: first.poll() is None and first.kill())
    h.wait_until(lambda: glob.glob(os.path.join(rp.dir, "cache", "tmp", "*")), 10,
                 "the fill running")
    out = os.path.join(h.tmpdir(), "part")
    r = h.curl(["-o", out, "-w", "%{http_code}", "-r", "100-199", "-x", rp.url, "--cacert",
                rpca, url])
    assert r.stdout.strip() == b"206" and open(out, "rb").read() == GOOD[100:200], r
    line = rp.wait_log(route="mitm", status="206")
    assert line.get("cache") == "coalesced", line
    assert first.wait(30) == 0
    assert len([p for _, p in st.requests if "/blobs/" in p]) == 1, st.requests


def test_cut_once_resumed_with_range():
    st = Standin(CA, "cut-once")
    rp = proxy(st)
    out = os.path.join(h.tmpdir(), "r")
    r = get_blob(rp, out)
    assert r.stdout.strip() == b"200" and h.sha256_file(out) == DIGEST[7:], \
        "the client did not get the whole blob after a resumption: %r" % (r,)
    h.wait_until(lambda: published(rp), 5, "the resumed blob published")
    gets = [p for _, p in st.requests if "/blobs/" in p]
    assert len(gets) == 2, "expected the cut GET and one resumption, saw %r" % gets
    assert "resuming at byte" in rp.stderr()


def test_cut_body_publishes_nothing():
    st = Standin(CA, "cut")
    rp = proxy(st)
    out = os.path.join(h.tmpdir(), "c")
    r = get_blob(rp, out)
    assert r.returncode != 0, "curl completed a cut blob"
    assert not published(rp), "a cut blob was published"
    gets = [p for _, p in st.requests if "/blobs/" in p]
    assert len(gets) == 4, "expected 1 GET and 3 resumptions, saw %d" % len(gets)
    h.wait_until(lambda: not glob.glob(os.path.join(rp.dir, "cache", "tmp", "*")), 5,
                 "temp file removed")
    assert rp.alive()


if __name__ == "__main__":
    h.main(globals())
