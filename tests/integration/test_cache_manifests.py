"""Manifests from registries the distribution registry cannot imitate (contract §3
"Manifests"): a stand-in that answers a tag HEAD with 405, or without
Docker-Content-Digest, gets a GET whose body regproxy hashes and keeps (the next GET by
digest is a cache hit, the tag is remembered for answers from memory); a signed
schema-1 manifest (`…manifest.v1+prettyjws`) passes through and is never cached."""

import glob
import hashlib
import http.server
import json
import os
import signal
import ssl
import subprocess
import threading

import harness as h

HOST = "registry-1.docker.io"
OCI = "application/vnd.oci.image.manifest.v1+json"
SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"
MANIFEST = json.dumps({
    "schemaVersion": 2, "mediaType": OCI,
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 2,
               "digest": "sha256:" + hashlib.sha256(b"{}").hexdigest()},
    "layers": []}, indent=3).encode()
SIGNED = json.dumps({"schemaVersion": 1, "name": "library/x", "tag": "1",
                     "architecture": "amd64", "fsLayers": [], "history": [],
                     "signatures": [{"protected": "e30", "signature": "AAAA"}]},
                    indent=3).encode()


def digest(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


class Standin:
    """mode: 'head405' | 'nodigest' | 'schema1'."""

    def __init__(self, ca, mode):
        self.mode = mode
        self.down = False  # answer 503 to everything (keep-alive connections included)
        self.stalled, self.release = threading.Event(), threading.Event()
        self.requests = []
        outer = self
        body, ctype = (SIGNED, SCHEMA1) if mode == "schema1" else (MANIFEST, OCI)

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _answer(self, head_only):
                outer.requests.append((self.command, self.path))
                if outer.down:
                    return self._send(503, b"down", "text/plain", head_only, False)
                if self.path == "/v2/":
                    return self._send(200, b"{}", "application/json", head_only, False)
                if not self.path.startswith("/v2/library/x/manifests/"):
                    return self._send(404, b"{}", "application/json", head_only, False)
                if head_only and outer.mode == "stall":
                    outer.stalled.set()
                    outer.release.wait(30)  # a HEAD that does not answer
                    return self._send(503, b"", "text/plain", True, False)
                if head_only and outer.mode == "head405":
                    return self._send(405, b"", "text/plain", True, False)
                named = outer.mode != "nodigest" or not head_only
                self._send(200, body, ctype, head_only, named and outer.mode != "head405")

            def _send(self, code, data, ctype, head_only, with_digest):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                if with_digest:
                    self.send_header("Docker-Content-Digest", digest(data))
                self.end_headers()
                if not head_only:
                    self.wfile.write(data)

            def do_GET(self):
                self._answer(False)

            def do_HEAD(self):
                self._answer(True)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(ca.chain, ca.key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        h.defer(self.stop)

    def stop(self):
        self.release.set()
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def gets(self):
        return [p for m, p in self.requests if m == "GET" and "/manifests/" in p]


def setup():
    global CA
    CA = h.shared_ca()


def proxy(st):
    return h.Regproxy(["--mitm", HOST, "--upstream-ca", CA.ca_crt,
                       "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, st.port)])


def get(rp, ref, accept=OCI):
    out = os.path.join(h.tmpdir(), "m")
    r = h.curl(["-o", out, "-D", "-", "-w", "%{http_code}", "-x", rp.url, "--cacert",
                os.path.join(rp.dir, "ca", "ca.crt"), "-H", "Accept: " + accept,
                "https://%s/v2/library/x/manifests/%s" % (HOST, ref)])
    data = open(out, "rb").read() if os.path.exists(out) else b""
    return r.stdout, data


def stored(rp, dg):
    return glob.glob(os.path.join(rp.dir, "cache", "blobs", "sha256", "*", dg[7:]))


def check_hashed_and_kept(mode):
    st = Standin(CA, mode)
    rp = proxy(st)
    head, data = get(rp, "1")
    assert head.endswith(b"200") and data == MANIFEST, head
    dg = digest(MANIFEST)
    h.wait_until(lambda: stored(rp, dg), 5, "the manifest kept under its sha256")
    n = len(st.gets())
    head, data = get(rp, dg)
    assert head.endswith(b"200") and data == MANIFEST, head
    assert b"docker-content-digest: " + dg.encode() in head.lower(), head
    assert len(st.gets()) == n, "GET by digest went upstream: %r" % st.gets()
    assert rp.wait_log(path="/v2/library/x/manifests/" + dg)["cache"] == "hit"
    # The tag is remembered: with the registry failing it is answered from memory.
    st.down = True
    head, data = get(rp, "1")
    assert head.endswith(b"200") and data == MANIFEST, head
    assert rp.wait_log(path="/v2/library/x/manifests/1", cache="stale")


def test_head_405_gets_a_get_that_is_hashed_and_kept():
    check_hashed_and_kept("head405")


def test_head_without_digest_gets_a_get_that_is_hashed_and_kept():
    check_hashed_and_kept("nodigest")


def test_signed_schema1_passes_and_is_never_cached():
    st = Standin(CA, "schema1")
    rp = proxy(st)
    dg = digest(SIGNED)
    for ref in ("1", "1", dg, dg):
        head, data = get(rp, ref, accept=SCHEMA1)
        assert head.endswith(b"200") and data == SIGNED, (ref, head)
    # Every GET reached the registry (by tag: after the HEAD, by digest; by digest: as is).
    assert len(st.gets()) == 4, st.gets()
    assert not stored(rp, dg), "a signed schema-1 manifest entered the cache"
    assert not rp.request_logs(path="/v2/library/x/manifests/" + dg, cache="hit")


def test_sigterm_with_a_tag_check_in_flight():
    """A tag HEAD that never answers: SIGTERM still exits within the grace time, and
    (under ASan) nothing it allocated is leaked."""
    st = Standin(CA, "stall")
    rp = h.Regproxy(["--mitm", HOST, "--upstream-ca", CA.ca_crt, "--shutdown-grace", "1s",
                     "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, st.port)])
    p = subprocess.Popen(["curl", "-sS", "-o", "/dev/null", "-x", rp.url, "--cacert",
                          os.path.join(rp.dir, "ca", "ca.crt"),
                          "https://%s/v2/library/x/manifests/1" % HOST],
                         stderr=subprocess.DEVNULL)
    h.defer(lambda: p.poll() is None and p.kill())
    assert st.stalled.wait(10), "the tag HEAD never reached the registry"
    rp.signal(signal.SIGTERM)
    assert rp.wait_exit(10) == 0
    rp.check()  # raises if a sanitizer reported anything (a leak at exit)


if __name__ == "__main__":
    h.main(globals())
