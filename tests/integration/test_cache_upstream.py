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
        self.dropped = False
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
                    try:
                        for i in range(0, len(GOOD), step):
                            self.wfile.write(GOOD[i:i + step])
                            self.wfile.flush()
                            time.sleep(0.1)
                    except (OSError, ssl.SSLError):
                        outer.dropped = True  # regproxy stopped the transfer
                        self.close_connection = True
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

        self.port = h.serve_http(H, ca).server_address[1]


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


def blob_gets(st):
    return len([p for _, p in st.requests if "/blobs/" in p])


def log_epoch(line):
    """The ts= of a regproxy log line as seconds since the epoch."""
    import datetime
    return datetime.datetime.strptime(line["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def test_twenty_clients_read_one_fill_as_it_grows():
    """20 concurrent GETs of an uncached blob the upstream trickles over ~2 s: one
    upstream GET, 20 byte-exact bodies, and every client's first byte before the fill
    completes (nobody waits for the whole blob)."""
    st = Standin(CA, "slow")
    rp = proxy(st)
    rpca = os.path.join(rp.dir, "ca", "ca.crt")
    url = "https://%s/v2/library/x/blobs/%s" % (HOST, DIGEST)
    outs = [os.path.join(h.tmpdir(), "b%d" % i) for i in range(20)]
    procs = []
    for o in outs:
        started = time.time()
        procs.append((started, subprocess.Popen(
            ["curl", "-sS", "-o", o, "-w", "%{time_starttransfer}", "-x", rp.url,
             "--cacert", rpca, url], stdout=subprocess.PIPE)))
    for _, p in procs:
        h.defer(lambda p=p: p.poll() is None and p.kill())
    first_bytes = []
    for started, p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        first_bytes.append(started + float(out))
    for o in outs:
        assert h.sha256_file(o) == DIGEST[7:], "a client got different bytes"
    assert blob_gets(st) == 1, st.requests
    done = log_epoch(rp.wait_log(msg="cache fill published"))
    late = [t - done for t in first_bytes if t >= done]
    assert not late, "clients whose first byte came after the fill completed: %r" % late
    kinds = [ln.get("cache") for ln in rp.request_logs(route="mitm", status="200")
             if "/blobs/" in ln["path"]]
    assert kinds.count("miss") == 1 and kinds.count("coalesced") == 19, kinds


def test_status_page_shows_the_fill_in_flight():
    st = Standin(CA, "slow")
    rp = proxy(st)
    p = subprocess.Popen(["curl", "-sS", "-o", "/dev/null", "-x", rp.url, "--cacert",
                          os.path.join(rp.dir, "ca", "ca.crt"),
                          "https://%s/v2/library/x/blobs/%s" % (HOST, DIGEST)])
    h.defer(lambda: p.poll() is None and p.kill())

    def fill():
        import json
        fills = json.loads(rp.get_admin("/status.json").body)["fills"]
        return fills[0] if fills and 0 < fills[0]["received"] < fills[0]["size"] else None
    f = h.wait_until(fill, 10, "a fill in flight on /status.json")
    f = fill() or f
    assert f["digest"] == DIGEST and f["repository"] == "library/x" and \
        f["size"] == len(GOOD), f
    assert p.wait(30) == 0


def test_fill_outlives_the_client_that_started_it():
    st = Standin(CA, "slow")
    rp = proxy(st)
    r = h.curl(["-o", "/dev/null", "--max-time", "0.5", "-x", rp.url, "--cacert",
                os.path.join(rp.dir, "ca", "ca.crt"),
                "https://%s/v2/library/x/blobs/%s" % (HOST, DIGEST)])
    assert r.returncode == 28, "the client should have given up mid-body: %r" % (r,)
    h.wait_until(lambda: published(rp), 10, "the fill completed without its client")
    out = os.path.join(h.tmpdir(), "again")
    r = get_blob(rp, out)
    assert r.stdout.strip() == b"200" and h.sha256_file(out) == DIGEST[7:], r
    assert blob_gets(st) == 1, "the next GET went upstream: %r" % st.requests


def test_orphan_fill_max_stops_a_large_fill_nobody_reads():
    st = Standin(CA, "slow")
    rp = h.Regproxy(["--mitm", HOST, "--upstream-ca", CA.ca_crt, "--orphan-fill-max", "1M",
                     "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, st.port)])
    r = h.curl(["-o", "/dev/null", "--max-time", "0.5", "-x", rp.url, "--cacert",
                os.path.join(rp.dir, "ca", "ca.crt"),
                "https://%s/v2/library/x/blobs/%s" % (HOST, DIGEST)])
    assert r.returncode == 28, r
    rp.wait_log(msg="cache fill failed")
    h.wait_until(lambda: not glob.glob(os.path.join(rp.dir, "cache", "tmp", "*")), 5,
                 "temp file removed")
    assert not published(rp), "a 3 MiB fill over --orphan-fill-max 1M completed without readers"
    h.wait_until(lambda: st.dropped, 5, "regproxy to stop the upstream transfer")


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
