"""Who may receive what (contract §3), tried as an attacker would (issue 8): cached private
layers are never served through a `?ns=` host the client names, through plain HTTP to a
registry `mitm` covers only over HTTPS, or as a tag digest from memory; a relay that
loses its client while another repository fills the same layer does not crash the
process; varied `Accept` headers do not grow tag memory; and a public image pulled once
still pulls with the registry down, in the same process and after a restart, while a
private one does not (unless `access_check: off`)."""

import hashlib
import http.server
import json
import os
import shutil
import sqlite3
import ssl
import subprocess
import threading
import time

import harness as h

HOST = "registry-1.docker.io"
MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json"])


def setup():
    global CA, TS, TREG, PUB, PRIV
    CA = h.shared_ca()
    TS = h.HubTokenServer(users={"alice": "s3cret"}, public=("library/alpine",))
    TREG = h.TokenRegistry(TS)
    PUB = h.OciImage(os.path.join(h.tmpdir(), "pub"), tag="1", layer_sizes=(5000, 80 * 1024))
    PRIV = h.OciImage(os.path.join(h.tmpdir(), "priv"), tag="1", layer_sizes=(70 * 1024,))
    push_all(TREG)


def push_all(treg):
    tunnel = h.Regproxy(["--mitm", "", "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, treg.port),
                         "--connect-to", "auth.docker.io:443:127.0.0.1:%d" % TS.port])
    for img, repo in ((PUB, "library/alpine"), (PRIV, "private/app")):
        h.skopeo(["copy", "--dest-cert-dir", CA.certdir, "--dest-creds", "alice:s3cret",
                  "oci:%s:1" % img.path, "docker://%s/%s:1" % (HOST, repo)],
                 env={"HTTPS_PROXY": tunnel.url})
    tunnel.stop()


def proxy(*extra, treg=None, cache_dir=None):
    args = ["--mitm", HOST, "--upstream-ca", CA.ca_crt,
            "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, (treg or TREG).port),
            "--connect-to", "auth.docker.io:443:127.0.0.1:%d" % TS.port]
    if cache_dir:
        args += ["--cache-dir", cache_dir]
    return h.Regproxy(args + list(extra))


def certdir(rp):
    d = h.tmpdir()
    shutil.copy(getattr(rp, "ca_crt", os.path.join(rp.dir, "ca", "ca.crt")),
                os.path.join(d, "regproxy.crt"))
    shutil.copy(CA.ca_crt, os.path.join(d, "test-ca.crt"))
    return d


def pull(rp, repo, creds=None, check=True):
    out = os.path.join(h.tmpdir(), "out")
    args = ["copy", "--src-cert-dir", certdir(rp)] + (["--src-creds", creds] if creds else [])
    p = h.skopeo(args + ["docker://%s/%s:1" % (HOST, repo), "oci:%s:1" % out],
                 env={"HTTPS_PROXY": rp.url}, check=check)
    return out, p


def alice_token(repo="private/app", user="alice:s3cret"):
    creds = ["-u", user] if user else []
    tok = h.run(["curl", "-sS"] + creds + ["--cacert", CA.ca_crt, "--connect-to",
                 "auth.docker.io:443:127.0.0.1:%d" % TS.port,
                 "https://auth.docker.io/token?service=%s&scope=repository:%s:pull" %
                 (TS.service, repo)]).stdout
    return json.loads(tok)["token"]


def via_proxy(rp, url, *args):
    """curl through regproxy: (status, body bytes, headers text)."""
    body = os.path.join(h.tmpdir(), "body")
    hdrs = os.path.join(h.tmpdir(), "hdrs")
    r = h.curl(["-sS", "-o", body, "-D", hdrs, "-w", "%{http_code}", "-x", rp.url, "--cacert",
                os.path.join(rp.dir, "ca", "ca.crt")] + list(args) + [url])
    data = open(body, "rb").read() if os.path.exists(body) else b""
    head = open(hdrs, errors="replace").read() if os.path.exists(hdrs) else ""
    return int(r.stdout.strip() or 0), data, head


class Catchall:
    """An origin that answers every request the same way and counts them: an
    attacker's HTTPS host that says 200 to anything, or a port-80 origin that
    redirects every path to https (as most registries' port 80 does)."""

    def __init__(self, tls, status):
        self.requests = []
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _answer(self, body):
                outer.requests.append((self.command, self.path))
                self.send_response(status)
                if status in (301, 302, 307, 308):
                    self.send_header("Location", "https://%s%s" % (HOST, self.path))
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self):
                self._answer(b"attacker bytes" if status == 200 else b"")

            def do_HEAD(self):
                self._answer(b"")

        self.port = h.serve_http(H, CA if tls else None).server_address[1]


# -- ?ns= names only registries regproxy trusts --------------------------------------------

def test_ns_names_an_attacker_host():
    evil = Catchall(tls=True, status=200)
    rp = proxy("--connect-to", "other.test:443:127.0.0.1:%d" % evil.port)
    pull(rp, "private/app", creds="alice:s3cret")  # the private layer is cached now
    layer = PRIV.layers[0]
    for ns in ("other.test", "other.test:443", "OTHER.TEST."):
        st, body, _ = via_mirror(rp, "/v2/anything/blobs/%s?ns=%s" % (layer, ns))
        assert st == 404 and json.loads(body)["errors"][0]["code"] == "NAME_UNKNOWN", (ns, st)
    assert evil.requests == [], "regproxy asked the attacker's host: %r" % evil.requests
    # A registry the mirror does serve, through a repository the layer is not in, and
    # through its own private repository: never the cached bytes to an anonymous client.
    for path in ("/v2/anything/blobs/%s?ns=docker.io" % layer,
                 "/v2/private/app/blobs/%s" % layer, "/v2/private/app/blobs/%s?ns=docker.io" % layer):
        st, body, _ = via_mirror(rp, path)
        assert st != 200 and hashlib.sha256(body).hexdigest() != layer[7:], (path, st)
    assert not rp.request_logs(via="mirror", cache="hit")


def via_mirror(rp, path):
    c = rp.conn()
    c.send(h.build_request("GET", path, host="127.0.0.1"))
    r = c.read_response()
    c.close()
    return r.status, r.body, r.headers


# -- plain HTTP only for registries listed with their port ---------------------------------

def test_plain_http_to_an_https_registry_is_never_cached():
    port80 = Catchall(tls=False, status=301)
    rp = proxy("--connect-to", "%s:80:127.0.0.1:%d" % (HOST, port80.port))
    pull(rp, "private/app", creds="alice:s3cret")
    layer = PRIV.layers[0]
    for repo in ("private/app", "library/alpine"):
        url = "http://%s/v2/%s/blobs/%s" % (HOST, repo, layer)
        st, body, _ = via_proxy(rp, url)
        assert st == 301 and body == b"", "plain http got %d (%d bytes)" % (st, len(body))
    assert len(port80.requests) == 2, port80.requests
    lines = rp.request_logs(route="http")
    assert len(lines) == 2 and all(ln.get("cache") in ("-", "pass", None) for ln in lines), lines


# -- tags from memory pass the same access rule -------------------------------------------

def test_private_tag_digest_not_told_from_memory():
    rp = proxy("--tag-ttl", "1h")
    pull(rp, "private/app", creds="alice:s3cret")  # the tag is in memory now
    url = "https://%s/v2/private/app/manifests/1" % HOST
    st, _, head = via_proxy(rp, url, "-I", "-H", "Accept: " + MANIFEST_TYPES)
    assert st == 401 and PRIV.manifest not in head, (st, head)
    # alice, confirmed for the repository, does get it from memory.
    st, _, head = via_proxy(rp, url, "-I", "-H", "Accept: " + MANIFEST_TYPES,
                            "-H", "Authorization: Bearer " + alice_token())
    assert st == 200 and PRIV.manifest in head, (st, head)


def test_private_tag_digest_not_told_while_the_registry_is_down():
    treg = h.TokenRegistry(TS)
    push_all(treg)
    rp = proxy(treg=treg)
    pull(rp, "private/app", creds="alice:s3cret")
    treg.proc.stop()
    url = "https://%s/v2/private/app/manifests/1" % HOST
    st, _, head = via_proxy(rp, url, "-I", "-H", "Accept: " + MANIFEST_TYPES)
    assert st == 502 and PRIV.manifest not in head, (st, head)


# -- a relay that loses its client while another repository fills the same layer ---------

BIG = os.urandom(8 * 1024 * 1024)
BIG_DIGEST = "sha256:" + hashlib.sha256(BIG).hexdigest()


class TwoAtOnce:
    """A registry that answers blob GETs only once two of them arrived, then trickles
    the body: two repositories' fetches of one uncached layer overlap for sure."""

    def __init__(self):
        self.gets = []
        self.barrier = threading.Barrier(2, timeout=10)
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                if self.path == "/v2/":
                    self.send_response(200)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                    return
                outer.gets.append(self.path)
                if len(outer.gets) <= 2:
                    try:
                        outer.barrier.wait()
                    except threading.BrokenBarrierError:
                        pass
                    if "/team-b/" in self.path:
                        time.sleep(0.3)  # team-a's fill starts; team-b's copy is relayed
                self.send_response(200)
                self.send_header("Content-Length", str(len(BIG)))
                self.send_header("Docker-Content-Digest", BIG_DIGEST)
                self.end_headers()
                step = len(BIG) // 64
                try:
                    for i in range(0, len(BIG), step):
                        self.wfile.write(BIG[i:i + step])
                        self.wfile.flush()
                        time.sleep(0.01)
                except (OSError, ssl.SSLError):
                    self.close_connection = True

        self.port = h.serve_http(H, CA).server_address[1]


def test_shared_layer_relay_loses_its_client():
    up = TwoAtOnce()
    rp = h.Regproxy(["--mitm", HOST, "--upstream-ca", CA.ca_crt,
                     "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, up.port)])
    rpca = os.path.join(rp.dir, "ca", "ca.crt")
    out = os.path.join(h.tmpdir(), "a")
    first = subprocess.Popen(["curl", "-sS", "-o", out, "-x", rp.url, "--cacert", rpca,
                              "https://%s/v2/team-a/app/blobs/%s" % (HOST, BIG_DIGEST)])
    h.defer(lambda: first.poll() is None and first.kill())
    # The second repository's client reads a little of its relayed copy, then leaves.
    c = rp.conn()
    c.connect_tunnel("%s:443" % HOST)
    c.start_tls(HOST, rpca)
    c.send(h.build_request("GET", "/v2/team-b/app/blobs/%s" % BIG_DIGEST, host=HOST))
    head = c.read_head()
    assert head[1] == 200, head
    c.read_exact(64 * 1024)
    c.close()
    assert first.wait(60) == 0 and h.sha256_file(out) == BIG_DIGEST[7:]
    assert len(up.gets) == 2, "the two repositories' fetches did not overlap: %r" % up.gets
    # team-a's answer came first and fills the cache; team-b's copy was relayed.
    miss = rp.wait_log(cache="miss", status="200")
    assert "/team-a/" in miss["path"], miss
    assert rp.wait_log(path="/v2/team-b/app/blobs/" + BIG_DIGEST, cache="pass")
    # Still serving; the layer is a hit for the repository that filled it.
    r = h.curl(["-o", "/dev/null", "-w", "%{http_code}", "-x", rp.url, "--cacert", rpca,
                "https://%s%s" % (HOST, miss["path"])])
    assert r.stdout.strip() == b"200"
    assert rp.wait_log(path=miss["path"], cache="hit")


# -- varied Accept headers do not grow tag memory -----------------------------------------

def test_accept_variations_do_not_grow_tag_memory():
    cache = os.path.join(h.tmpdir(), "cache")
    rp = proxy(cache_dir=cache)
    token = alice_token("library/alpine", user=None)  # anonymous
    url = "https://%s/v2/library/alpine/manifests/1" % HOST
    for i in range(40):
        accept = "application/x-junk-%d, text/x-%d;q=0.5, %s" % (i, i, MANIFEST_TYPES)
        st, _, _ = via_proxy(rp, url, "-I", "-H", "Accept: " + accept,
                             "-H", "Authorization: Bearer " + token)
        assert st == 200, st
    rp.stop()  # the index is written out
    db = sqlite3.connect(os.path.join(cache, "index.db"))
    n = db.execute("SELECT COUNT(*) FROM tags WHERE repository = 'library/alpine' AND tag = '1'"
                   ).fetchone()[0]
    db.close()
    assert n == 1, "40 Accept variations left %d tag rows" % n


# -- offline after one pull, also after a restart -----------------------------------------

def offline_proxy(ca_dir, treg, cache, *extra):
    rp = proxy("--ca-dir", ca_dir, *extra, treg=treg, cache_dir=cache)
    rp.ca_crt = os.path.join(ca_dir, "ca.crt")
    return rp


def test_offline_pull_after_one_pull_and_after_restart():
    treg = h.TokenRegistry(TS)
    push_all(treg)
    cache = os.path.join(h.tmpdir(), "cache")
    ca_dir = os.path.join(h.tmpdir(), "ca")
    rp = offline_proxy(ca_dir, treg, cache)
    pull(rp, "library/alpine")
    pull(rp, "private/app", creds="alice:s3cret")
    # The public probe runs in the background on the first pull; what it found is kept.
    rp.wait_log(msg="repository docker.io/library/alpine is public")
    rp.wait_log(msg="repository docker.io/private/app is not public")
    treg.proc.stop()  # the token service stays up, as Docker Hub's does
    out, _ = pull(rp, "library/alpine")
    assert h.layout_blobs(out)[1] == PUB.blobs
    _, p = pull(rp, "private/app", check=False)
    assert p.returncode != 0, "a private image pulled anonymously with the registry down"
    rp.stop()
    rp = offline_proxy(ca_dir, treg, cache)
    out, _ = pull(rp, "library/alpine")
    assert h.layout_blobs(out)[1] == PUB.blobs
    assert rp.request_logs(path="/v2/library/alpine/manifests/1", cache="stale")
    _, p = pull(rp, "private/app", check=False)
    assert p.returncode != 0, "a private image pulled anonymously after a restart"
    rp.stop()
    # A single-user machine that wants it: access_check off serves every hit.
    rp = offline_proxy(ca_dir, treg, cache, "--access-check", "off")
    out, _ = pull(rp, "private/app")
    assert h.layout_blobs(out)[1] == PRIV.blobs


if __name__ == "__main__":
    h.main(globals())
