"""Mirror mode (contract §3): origin-form /v2/… on the --listen port, no CA. dockerd with
"registry-mirrors" (and no proxy environment) pulls Docker Hub names through it;
regproxy fetches with its own anonymous token from the (stand-in) auth.docker.io, or
with --registry-auth credentials, caches, and serves the second pull from the cache.
?ns= picks the registry and is echoed as OCI-Namespace, never sent upstream. What the
mirror fetched with regproxy's credentials is never confirmed for an anonymous client
of the MITM path."""

import json
import os
import shutil

import harness as h

HOST = "registry-1.docker.io"
MANIFEST_TYPES = ("application/vnd.oci.image.index.v1+json, "
                  "application/vnd.oci.image.manifest.v1+json, "
                  "application/vnd.docker.distribution.manifest.v2+json")


def setup():
    global CA, TS, TREG, IMG, PRIV
    CA = h.shared_ca()
    TS = h.HubTokenServer(users={"alice": "s3cret"}, public=("library/alpine",))
    TREG = h.TokenRegistry(TS)
    IMG = h.OciImage(os.path.join(h.tmpdir(), "pub"), tag="3.18", layer_sizes=(4000, 150 * 1024))
    PRIV = h.OciImage(os.path.join(h.tmpdir(), "priv"), tag="1", layer_sizes=(90 * 1024,))
    tunnel = h.Regproxy(["--mitm", "", "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, TREG.port),
                         "--connect-to", "auth.docker.io:443:127.0.0.1:%d" % TS.port])
    for img, repo in ((IMG, "library/alpine"), (PRIV, "private/app")):
        h.skopeo(["copy", "--dest-cert-dir", CA.certdir, "--dest-creds", "alice:s3cret",
                  "oci:%s:%s" % (img.path, img.tag), "docker://%s/%s:%s" % (HOST, repo, img.tag)],
                 env={"HTTPS_PROXY": tunnel.url})
    tunnel.stop()


def mirror(*extra):
    return h.Regproxy(["--mitm", HOST, "--upstream-ca", CA.ca_crt,
                       "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, TREG.port),
                       "--connect-to", "auth.docker.io:443:127.0.0.1:%d" % TS.port] + list(extra))


def creds_file():
    import base64
    d = h.tmpdir()
    return h.write_file(os.path.join(d, "config.json"), json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"alice:s3cret").decode()}}}))


def get(rp, path, headers=(), method="GET"):
    c = rp.conn()
    try:
        return c.request(method, path, [("Host", "127.0.0.1:%d" % rp.port)] + list(headers))
    finally:
        c.close()


def blob_gets(repo):
    return open(TREG.log_path, errors="replace").read().count("GET /v2/%s/blobs/" % repo)


def test_v2_answered_by_the_mirror_itself():
    rp = mirror()
    r = get(rp, "/v2/")
    assert r.status == 200 and r.body == b"{}", r
    assert r.header("docker-distribution-api-version") == "registry/2.0"
    assert rp.wait_log(via="mirror", path="/v2/")["status"] == "200"
    r = get(rp, "/v2/?ns=docker.io")
    assert r.status == 200 and r.header("oci-namespace") == "docker.io" and r.body == b"{}", r
    # A registry the mirror does not serve (not in mitm, not mirror_default): 404 with an
    # OCI error, even for the longest name ns= may carry, and no upstream request.
    ns = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    r = get(rp, "/v2/?ns=" + ns)
    assert r.status == 404 and r.header("oci-namespace") == ns, r
    assert json.loads(r.body)["errors"][0]["code"] == "NAME_UNKNOWN", r


def test_dockerd_pulls_through_the_mirror_and_again_from_the_cache():
    if shutil.which("dockerd") is None or h.docker_bin() is None:
        return  # dockerd missing: the curl tests below still cover the mirror
    rp = mirror()
    d = h.tmpdir()
    conf = h.write_file(os.path.join(d, "daemon.json"),
                        json.dumps({"registry-mirrors": [rp.url]}))
    docker = h.Dockerd(None, ["--config-file", conf])
    docker.docker(["pull", "alpine:3.18"], timeout=180)
    assert rp.request_logs(via="mirror", cache="miss"), "nothing fetched through the mirror"
    p = docker.docker(["image", "inspect", "alpine:3.18", "--format", "{{json .RepoDigests}}"])
    assert IMG.manifest in p.stdout.decode()
    docker.docker(["rmi", "alpine:3.18"])
    before = h.settled(lambda: blob_gets("library/alpine"))
    docker.docker(["pull", "alpine:3.18"], timeout=180)
    assert h.settled(lambda: blob_gets("library/alpine")) == before, \
        "the second pull fetched layers upstream"
    hits = {ln["path"].rsplit("/", 1)[-1] for ln in rp.request_logs(via="mirror", cache="hit")}
    assert set(IMG.layers) <= hits, hits


def test_ns_selects_the_registry_is_echoed_and_never_sent_upstream():
    rp = mirror()
    r = get(rp, "/v2/library/alpine/manifests/3.18?ns=docker.io", [("Accept", MANIFEST_TYPES)])
    assert r.status == 200, r
    assert r.header("oci-namespace") == "docker.io", r.headers
    assert r.header("docker-content-digest") == IMG.manifest
    text = open(TREG.log_path, errors="replace").read()
    assert "ns=" not in text, "ns= reached the registry"
    layer = IMG.layers[1]
    r = get(rp, "/v2/library/alpine/blobs/%s?ns=docker.io" % layer)
    assert r.status == 200 and h.sha256(r.body) == layer[7:], r
    assert r.header("oci-namespace") == "docker.io"
    # A registry the mirror does not serve: 404, it does not go there.
    r = get(rp, "/v2/library/alpine/manifests/3.18?ns=registry.invalid")
    assert r.status == 404, r
    assert json.loads(r.body)["errors"][0]["code"] == "NAME_UNKNOWN", r


def test_private_repository_with_registry_auth():
    rp = mirror()
    r = get(rp, "/v2/private/app/manifests/1", [("Accept", MANIFEST_TYPES)])
    assert r.status == 401, "a private manifest served without credentials: %r" % r
    rp = mirror("--registry-auth", creds_file())
    r = get(rp, "/v2/private/app/manifests/1", [("Accept", MANIFEST_TYPES)])
    assert r.status == 200 and r.header("docker-content-digest") == PRIV.manifest, r
    layer = PRIV.layers[0]
    r = get(rp, "/v2/private/app/blobs/%s" % layer)
    assert r.status == 200 and h.sha256(r.body) == layer[7:], r
    # The client's own Authorization is not what the mirror sends: a bogus one changes
    # nothing (served from the cache now).
    r = get(rp, "/v2/private/app/blobs/%s" % layer, [("Authorization", "Bearer bogus")])
    assert r.status == 200 and h.sha256(r.body) == layer[7:], r
    # What regproxy's credentials read is never confirmed for an anonymous client on
    # the MITM path: the registry's 401, not the cached bytes.
    r = h.curl(["-o", "/dev/null", "-w", "%{http_code}", "-x", rp.url, "--cacert",
                os.path.join(rp.dir, "ca", "ca.crt"),
                "https://%s/v2/private/app/blobs/%s" % (HOST, layer)])
    assert r.stdout.strip() == b"401", r


def test_read_only_and_host_checked():
    rp = mirror()
    r = get(rp, "/v2/library/alpine/blobs/uploads/", method="POST")
    assert r.status == 405, r
    c = rp.conn()
    try:
        r = c.request("GET", "/v2/library/alpine/manifests/3.18", [("Host", "evil.example")])
    finally:
        c.close()
    assert r.status == 421, "a rebinding name reached the mirror: %r" % r


def test_a_request_body_waits_for_the_credential():
    """A body sent with a mirror GET on a fresh connection arrives while regproxy prepares
    its credential: it waits for the relay (it used to be queued before the relay's queue
    existed, a NULL dereference found by fuzz_conn)."""
    rp = mirror()
    c = rp.conn()
    try:
        r = c.request("GET", "/v2/library/alpine/manifests/3.18",
                      [("Host", "127.0.0.1:%d" % rp.port)], body=b"a=1")
    finally:
        c.close()
    assert r.status < 500, r
    assert get(rp, "/v2/").status == 200


if __name__ == "__main__":
    h.main(globals())
