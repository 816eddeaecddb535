"""Upstream mirrors (contract §3 "Upstream mirrors", issue 10): node regproxy instances chain
to a site tier, a regproxy in mirror mode, by the registry-mirror protocol. The origin is
the distribution registry over TLS (as registry-1.docker.io through --connect-to); skopeo
pulls through each node's MITM. The origin serves each blob once for the whole site; a site
that is down, or a mirror that answers wrong bytes, costs no pull."""

import base64
import http.server
import json
import os
import shutil
import socketserver
import threading

import harness as h

HOST = "registry-1.docker.io"


def setup():
    global CA, REG, IMG, TS, TREG, PRIV, PUB
    CA = h.shared_ca()
    REG = h.Registry()
    IMG = h.OciImage(os.path.join(h.tmpdir(), "src"), tag="1",
                     layer_sizes=(4096, 1024 * 1024, 300 * 1024))
    h.skopeo(["copy", "--dest-cert-dir", CA.certdir, "oci:%s:1" % IMG.path,
              "docker://127.0.0.1:%d/team/app:1" % REG.port])
    # A token registry with a private repository, for who may receive what.
    TS = h.HubTokenServer(users={"alice": "s3cret"}, public=("library/pub",))
    TREG = h.TokenRegistry(TS)
    PRIV = h.OciImage(os.path.join(h.tmpdir(), "priv"), tag="1", layer_sizes=(90 * 1024,))
    PUB = h.OciImage(os.path.join(h.tmpdir(), "pub"), tag="1", layer_sizes=(50 * 1024, 70 * 1024))
    tunnel = h.Regproxy(["--mitm", "", "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, TREG.port),
                         "--connect-to", "auth.docker.io:443:127.0.0.1:%d" % TS.port])
    h.skopeo(["copy", "--dest-cert-dir", CA.certdir, "--dest-creds", "alice:s3cret",
              "oci:%s:1" % PRIV.path, "docker://%s/private/app:1" % HOST],
             env={"HTTPS_PROXY": tunnel.url})
    h.skopeo(["copy", "--dest-cert-dir", CA.certdir, "--dest-creds", "alice:s3cret",
              "oci:%s:1" % PUB.path, "docker://%s/library/pub:1" % HOST],
             env={"HTTPS_PROXY": tunnel.url})
    tunnel.stop()


def origin_args():
    return ["--connect-to", "%s:443:127.0.0.1:%d" % (HOST, REG.port), "--upstream-ca", CA.ca_crt]


def site():
    # Mirror mode serves mirror_default (docker.io) with regproxy's own (anonymous) access.
    return h.Regproxy(["--mitm", ""] + origin_args())


def node(mirror_url):
    return h.Regproxy(["--mitm", HOST, "--upstream-mirror", "docker.io=%s" % mirror_url] +
                      origin_args())


def pull(rp, retries=0):
    certs = h.tmpdir()
    shutil.copy(os.path.join(rp.dir, "ca", "ca.crt"), os.path.join(certs, "regproxy.crt"))
    out = os.path.join(h.tmpdir(), "out")
    args = ["copy", "--src-cert-dir", certs]
    if retries:
        args += ["--retry-times", str(retries)]
    h.skopeo(args + ["docker://%s/team/app:1" % HOST, "oci:%s:1" % out],
             env={"HTTPS_PROXY": rp.url})
    mdg, blobs = h.layout_blobs(out)
    assert blobs == IMG.blobs and mdg == IMG.manifest, (sorted(blobs), sorted(IMG.blobs))


def origin_blob_gets():
    text = open(REG.log_path, errors="replace").read()
    return text.count("GET /v2/team/app/blobs/sha256:")


def test_a_site_fetches_each_blob_once():
    s = site()
    before = origin_blob_gets()
    pull(node("http://127.0.0.1:%d" % s.port))
    # Config and layers: each from the origin exactly once, through the site.
    assert origin_blob_gets() - before == len(IMG.layers) + 1, origin_blob_gets() - before
    site_blobs = [ln for ln in s.request_logs(via="mirror") if "/blobs/" in ln.get("path", "")]
    assert len(site_blobs) == len(IMG.layers) + 1 and \
        all(ln.get("status") == "200" for ln in site_blobs), site_blobs
    # A second node, its own empty cache: the site answers, the origin sees no blob GET.
    n2 = node("http://127.0.0.1:%d/" % s.port)
    pull(n2)
    assert origin_blob_gets() - before == len(IMG.layers) + 1, "the origin served a blob twice"
    hits = [ln for ln in s.request_logs(via="mirror", cache="hit") if "/blobs/" in ln["path"]]
    assert len(hits) == len(IMG.layers) + 1, s.request_logs(via="mirror")
    # The node never sent the site a credential, and asked in mirror-mode form.
    assert all("ns=docker.io" in ln["path"] for ln in site_blobs), site_blobs


def test_site_down_nodes_fall_back_to_the_origin():
    s = site()
    url = "http://127.0.0.1:%d" % s.port
    s.stop()
    n = node(url)
    before = origin_blob_gets()
    pull(n)
    assert origin_blob_gets() - before == len(IMG.layers) + 1
    assert "upstream mirror %s failed" % url in n.stderr(), n.stderr()[-2000:]


class WrongBytes(http.server.BaseHTTPRequestHandler):
    """A mirror that answers every request 200 with bytes that are not the object."""
    def do_GET(self):
        body = b"not the layer you asked for\n" * 100
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_mirror_with_wrong_bytes_is_caught():
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", h.free_port()), WrongBytes)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    h.defer(srv.shutdown)
    h.defer(srv.server_close)
    n = node("http://127.0.0.1:%d" % srv.server_address[1])
    before = origin_blob_gets()
    # No retry needed: a mirror's bytes reach no client before they verify, and those
    # that do not are fetched again from the origin.
    pull(n)
    assert origin_blob_gets() > before
    assert "failed verification" in n.stderr(), n.stderr()[-2000:]
    # Nothing wrong was kept: every cached object verifies.
    n.stop()
    rc, err = h.run_regproxy_expect_exit(["cache", "verify", "--cache-dir",
                                          os.path.join(n.dir, "cache")], timeout=60)
    assert rc == 0, err


def test_a_mirror_never_decides_who_may_read():
    # The site can read the private repository (its own registry_auth) and has it cached.
    tok = ["--connect-to", "%s:443:127.0.0.1:%d" % (HOST, TREG.port),
           "--connect-to", "auth.docker.io:443:127.0.0.1:%d" % TS.port, "--upstream-ca", CA.ca_crt]
    creds = h.write_file(os.path.join(h.tmpdir(), "config.json"), json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"alice:s3cret").decode()}}}))
    s = h.Regproxy(["--mitm", "", "--registry-auth", creds] + tok)
    n = h.Regproxy(["--mitm", HOST, "--upstream-mirror", "docker.io=http://127.0.0.1:%d" % s.port]
                   + tok)
    certs = h.tmpdir()
    shutil.copy(os.path.join(n.dir, "ca", "ca.crt"), os.path.join(certs, "regproxy.crt"))
    shutil.copy(CA.ca_crt, os.path.join(certs, "test-ca.crt"))  # the token server's

    def pull_priv(creds, check=True):
        out = os.path.join(h.tmpdir(), "out")
        args = ["copy", "--src-cert-dir", certs] + (["--src-creds", creds] if creds else [])
        return out, h.skopeo(args + ["docker://%s/private/app:1" % HOST, "oci:%s:1" % out],
                             env={"HTTPS_PROXY": n.url}, check=check)
    out, _ = pull_priv("alice:s3cret")
    assert h.layout_blobs(out)[1] == PRIV.blobs
    layer = PRIV.layers[0]
    site = [ln for ln in s.request_logs(via="mirror") if ln.get("path", "").startswith(
        "/v2/private/app/blobs/" + layer)]
    assert site and site[0].get("status") == "200", s.request_logs(via="mirror")
    # Anonymous, and with a wrong password: the registry refuses, so does the node, though
    # the site (and the node itself) hold every byte.
    for creds in (None, "alice:wrong"):
        _, p = pull_priv(creds, check=False)
        assert p.returncode != 0, p.stderr
    lines = n.request_logs(route="mitm", path="/v2/private/app/blobs/" + layer)
    assert all(ln.get("status") in ("200",) and ln.get("cache") == "miss" for ln in lines[:1])
    assert not [ln for ln in lines[1:] if ln.get("status") == "200"], lines
    # An attacker who knows the digest asks a node that has nothing cached: the site would
    # serve it (it has the bytes and a credential), so the registry is asked first.
    fresh = h.Regproxy(["--mitm", HOST, "--upstream-mirror",
                        "docker.io=http://127.0.0.1:%d" % s.port] + tok)
    fca = os.path.join(fresh.dir, "ca", "ca.crt")
    for auth in ([], ["-H", "Authorization: Bearer forged"]):
        p = h.curl(["-o", "/dev/null", "-w", "%{http_code}", "-x", fresh.url, "--cacert", fca] +
                   auth + ["https://%s/v2/private/app/blobs/%s" % (HOST, layer)])
        assert p.stdout.strip() == b"401", (p.stdout, p.stderr)
    got = [ln for ln in s.request_logs(via="mirror") if layer in ln.get("path", "")]
    assert len(got) == 1, "the site was asked for the layer on behalf of a refused client: %r" % got


def test_a_private_refusal_does_not_turn_the_mirror_off():
    # A site without credentials for a private repository answers 401 for it: the node
    # takes that object from the registry, but the site is not broken. The next public
    # image must still come from the site, not from the origin (on a CI node that pulls a
    # private image now and then, a 30 s back-off each time sends every public layer to
    # the internet).
    tok = ["--connect-to", "%s:443:127.0.0.1:%d" % (HOST, TREG.port),
           "--connect-to", "auth.docker.io:443:127.0.0.1:%d" % TS.port, "--upstream-ca", CA.ca_crt]
    s = h.Regproxy(["--mitm", ""] + tok)  # no registry_auth
    n = h.Regproxy(["--mitm", HOST, "--upstream-mirror", "docker.io=http://127.0.0.1:%d" % s.port]
                   + tok)
    certs = h.tmpdir()
    shutil.copy(os.path.join(n.dir, "ca", "ca.crt"), os.path.join(certs, "regproxy.crt"))
    shutil.copy(CA.ca_crt, os.path.join(certs, "test-ca.crt"))

    def pull_ref(ref, img, creds=None):
        out = os.path.join(h.tmpdir(), "out")
        args = ["copy", "--src-cert-dir", certs] + (["--src-creds", creds] if creds else [])
        h.skopeo(args + ["docker://%s/%s" % (HOST, ref), "oci:%s:1" % out],
                 env={"HTTPS_PROXY": n.url})
        assert h.layout_blobs(out)[1] == img.blobs
    pull_ref("private/app:1", PRIV, "alice:s3cret")
    refused = [ln for ln in s.request_logs(via="mirror") if ln.get("status") in ("401", "403")]
    assert refused, "the site was not asked for the private image: %r" % s.request_logs()
    pull_ref("library/pub:1", PUB)
    served = {ln["path"].split("?")[0].rsplit("/", 1)[1] for ln in s.request_logs(via="mirror")
              if "/v2/library/pub/blobs/" in ln.get("path", "") and ln.get("status") == "200"}
    assert served == PUB.blobs, ("the public image did not come from the site after a private "
                                 "refusal", sorted(served), n.stderr()[-1500:])


if __name__ == "__main__":
    h.main(globals())
