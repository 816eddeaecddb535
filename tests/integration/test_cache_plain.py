"""The registry cache for a plain-HTTP (insecure) registry (contract §2 route=http, §3):
a client that pulls `registry.insecure.test:5000/…` through HTTP_PROXY sends absolute-form
requests; when the host is in `mitm` they get the same cache as MITM requests, keyed
apart from HTTPS. The second pull makes no upstream blob or manifest GET, and the image
still pulls with the registry stopped. Other paths on that host keep the byte relay."""

import os
import signal

import harness as h

NAME = "registry.insecure.test"
PORT = 5000


def setup():
    global REG, IMG
    REG = h.PlainRegistry()
    IMG = h.OciImage(os.path.join(h.tmpdir(), "src"), layer_sizes=(4096, 1024 * 1024))
    h.skopeo(["copy", "--dest-tls-verify=false", "oci:%s:%s" % (IMG.path, IMG.tag),
              "docker://127.0.0.1:%d/library/alpine:3.18" % REG.port])


def proxy(reg):
    return h.Regproxy(["--mitm", "%s:%d" % (NAME, PORT), "--connect-to",
                       "%s:%d:127.0.0.1:%d" % (NAME, PORT, reg.port)])


def pull(rp, check=True):
    out = os.path.join(h.tmpdir(), "out")
    # An insecure registry: skopeo tries https first (CONNECT, refused here by the
    # registry's plain socket), then http:// through HTTP_PROXY.
    p = h.skopeo(["copy", "--src-tls-verify=false",
                  "docker://%s:%d/library/alpine:3.18" % (NAME, PORT), "oci:%s:3.18" % out],
                 env={"HTTPS_PROXY": rp.url, "HTTP_PROXY": rp.url}, check=check)
    return out, p


def test_second_pull_from_cache():
    rp = proxy(REG)
    blobs = lambda: REG.count("GET /v2/library/alpine/blobs/sha256:")
    manifests = lambda: REG.count("GET /v2/library/alpine/manifests/")
    b0 = h.settled(blobs)
    out1, _ = pull(rp)
    assert h.settled(blobs) - b0 == len(IMG.blobs), "first pull: blobs not fetched once each"
    assert rp.request_logs(route="http", cache="miss"), "no cache=miss on the http route"
    b1, m1 = h.settled(blobs), h.settled(manifests)
    out2, _ = pull(rp)
    assert h.settled(blobs) == b1, "the second pull fetched blobs upstream"
    assert h.settled(manifests) == m1, "the second pull made an upstream manifest GET"
    assert rp.request_logs(route="http", cache="revalidated"), "tag not revalidated"
    hits = rp.request_logs(route="http", cache="hit")
    assert {ln["path"].rsplit("/", 1)[1] for ln in hits} >= IMG.blobs, hits
    assert h.layout_blobs(out1) == h.layout_blobs(out2) and h.layout_blobs(out2)[1] == IMG.blobs
    # No https attempt was ever mistaken for a reachable registry.
    assert not rp.request_logs(route="mitm", method="GET", status="200")


def test_registry_down_pulls_from_memory():
    reg = h.PlainRegistry()
    h.skopeo(["copy", "--dest-tls-verify=false", "oci:%s:%s" % (IMG.path, IMG.tag),
              "docker://127.0.0.1:%d/library/alpine:3.18" % reg.port])
    rp = proxy(reg)
    pull(rp)
    reg.proc.stop(signal.SIGTERM, timeout=3)
    out, _ = pull(rp)
    assert h.layout_blobs(out)[1] == IMG.blobs
    stale = rp.request_logs(route="http", cache="stale")
    assert any(ln["path"] == "/v2/" for ln in stale), stale
    assert any("/manifests/3.18" in ln["path"] for ln in stale), stale


def test_relayed_answers_carry_via():
    rp = proxy(REG)
    r = h.curl(["-sS", "-D", "-", "-o", "/dev/null", "-x", rp.url,
                "http://%s:%d/v2/" % (NAME, PORT)])
    head = r.stdout.decode().lower()
    assert head.startswith("http/1.1 200") and "via: 1.1 regproxy" in head, head


def test_other_paths_use_the_byte_relay():
    rp = proxy(REG)
    r = h.curl(["-o", "/dev/null", "-w", "%{http_code}", "-x", rp.url,
                "http://%s:%d/v2/library/alpine/tags/list" % (NAME, PORT)])
    assert r.stdout.strip() == b"200", r
    ln = rp.wait_log(route="http", path="/v2/library/alpine/tags/list")
    assert ln.get("cache", "-") in ("-", None), ln


def test_https_and_http_keep_apart():
    """A digest cached over plain HTTP is not known in the same repository over HTTPS:
    registry identities carry the scheme (contract §3)."""
    rp = proxy(REG)
    pull(rp)
    layer = sorted(IMG.blobs)[0]
    ca = os.path.join(rp.dir, "ca", "ca.crt")
    # Inside MITM (https) the same repository is another registry: the cache does not
    # answer it; the upstream (a plain socket) fails the TLS handshake, and so does the
    # client's connection (no answer), as through a tunnel: clients then fall back to
    # http:// for an insecure registry.
    r = h.curl(["-o", "/dev/null", "-w", "%{http_code}", "-x", rp.url, "--cacert", ca,
                "https://%s:%d/v2/library/alpine/blobs/%s" % (NAME, PORT, layer)])
    assert r.returncode == 52 and r.stdout.strip() == b"000", r
    line = rp.wait_log(route="mitm", method="GET", status="502")
    assert "wrong version number" in line.get("reason", ""), line
    assert not rp.request_logs(route="mitm", cache="hit")


if __name__ == "__main__":
    h.main(globals())
