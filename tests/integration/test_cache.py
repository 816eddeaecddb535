"""The registry cache inside MITM (contract §3, issue 4 — blobs and manifests by digest):
the second pull of an image makes no upstream blob request and gets identical bytes;
two repositories sharing a layer store it once; an object cached for one client is
never served from the cache to a client the registry would refuse; a fill killed with
SIGKILL leaves nothing partial behind."""

import glob
import json
import os
import shutil
import signal
import subprocess

import harness as h

HOST = "registry-1.docker.io"


def setup():
    global CA, REG, IMG, IMG2, TS, TREG, PRIV
    CA = h.shared_ca()
    REG = h.Registry()
    IMG = h.OciImage(os.path.join(h.tmpdir(), "src"), layer_sizes=(4096, 2 * 1024 * 1024))
    push(IMG, "docker://127.0.0.1:%d/library/alpine:3.18" % REG.port)
    # A second repository holding the same layers.
    push(IMG, "docker://127.0.0.1:%d/other/copy:3.18" % REG.port)
    TS = h.HubTokenServer(users={"alice": "s3cret"}, public=("library/alpine",))
    TREG = h.TokenRegistry(TS)
    tunnel = h.Regproxy(["--mitm", "", "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, TREG.port),
                         "--connect-to", "auth.docker.io:443:127.0.0.1:%d" % TS.port])
    IMG2 = h.OciImage(os.path.join(h.tmpdir(), "pub"), tag="1", layer_sizes=(5000,))
    PRIV = h.OciImage(os.path.join(h.tmpdir(), "priv"), tag="1", layer_sizes=(70 * 1024,))
    for img, repo in ((IMG2, "library/alpine"), (PRIV, "private/app")):
        h.skopeo(["copy", "--dest-cert-dir", CA.certdir, "--dest-creds", "alice:s3cret",
                  "oci:%s:1" % img.path, "docker://%s/%s:1" % (HOST, repo)],
                 env={"HTTPS_PROXY": tunnel.url})
    tunnel.stop()


def push(img, dest):
    h.skopeo(["copy", "--dest-cert-dir", CA.certdir, "oci:%s:%s" % (img.path, img.tag), dest])


def proxy(reg=None, cache_dir=None):
    args = ["--mitm", HOST, "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, (reg or REG).port),
            "--connect-to", "auth.docker.io:443:127.0.0.1:%d" % TS.port,
            "--upstream-ca", CA.ca_crt]
    if cache_dir:
        args += ["--cache-dir", cache_dir]
    return h.Regproxy(args)


def certdir(rp):
    d = h.tmpdir()
    shutil.copy(os.path.join(rp.dir, "ca", "ca.crt"), os.path.join(d, "regproxy.crt"))
    shutil.copy(CA.ca_crt, os.path.join(d, "test-ca.crt"))
    return d


def pull(rp, repo="library/alpine", tag="3.18", creds=None, check=True):
    out = os.path.join(h.tmpdir(), "out")
    args = ["copy", "--src-cert-dir", certdir(rp)] + (["--src-creds", creds] if creds else [])
    p = h.skopeo(args + ["docker://%s/%s:%s" % (HOST, repo, tag), "oci:%s:%s" % (out, tag)],
                 env={"HTTPS_PROXY": rp.url}, check=check)
    return out, p


def upstream_blob_gets(reg, repo="library/alpine"):
    text = open(reg.log_path, errors="replace").read()
    return text.count("GET /v2/%s/blobs/sha256:" % repo)


def upstream_manifest_gets(reg, repo="library/alpine"):
    text = open(reg.log_path, errors="replace").read()
    return text.count("GET /v2/%s/manifests/" % repo)


def upstream_manifest_heads(reg, repo="library/alpine"):
    text = open(reg.log_path, errors="replace").read()
    return text.count("HEAD /v2/%s/manifests/" % repo)


def test_second_pull_served_from_cache():
    rp = proxy()
    before = h.settled(lambda: upstream_blob_gets(REG))
    out1, _ = pull(rp)
    first = h.settled(lambda: upstream_blob_gets(REG)) - before
    assert first == len(IMG.blobs), "first pull fetched %d blobs upstream" % first
    man_before = h.settled(lambda: upstream_manifest_gets(REG))
    out2, _ = pull(rp)
    assert h.settled(lambda: upstream_blob_gets(REG)) - before == first, \
        "the second pull fetched blobs upstream"
    # skopeo GETs the manifest by tag: regproxy asks upstream with a HEAD only.
    assert h.settled(lambda: upstream_manifest_gets(REG)) == man_before, \
        "the second pull made an upstream manifest GET"
    assert rp.request_logs(route="mitm", cache="revalidated"), "no revalidated manifest"
    assert h.layout_blobs(out1) == h.layout_blobs(out2) and h.layout_blobs(out2)[1] == IMG.blobs
    hits = rp.request_logs(route="mitm", cache="hit")
    assert {ln["path"].rsplit("/", 1)[1] for ln in hits} >= IMG.blobs, hits
    assert rp.metrics().sum("regproxy_bytes_total", direction="out", source="cache") > 2 << 20


def test_warm_pull_after_restart_makes_no_manifest_get():
    """Issue 14: what a restart keeps (the index, loaded at open while the files are
    checked in the background) is enough for a warm pull: the tag is checked with a
    HEAD, the manifest and every blob come from the cache, nothing is GET upstream."""
    cache = os.path.join(h.tmpdir(), "cache")
    rp = proxy(cache_dir=cache)
    pull(rp)
    rp.stop()
    rp = proxy(cache_dir=cache)
    blobs = h.settled(lambda: upstream_blob_gets(REG))
    manifests = h.settled(lambda: upstream_manifest_gets(REG))
    heads = h.settled(lambda: upstream_manifest_heads(REG))
    out, _ = pull(rp)
    assert h.layout_blobs(out)[1] == IMG.blobs
    assert h.settled(lambda: upstream_manifest_gets(REG)) == manifests, \
        "the warm pull after a restart made an upstream manifest GET"
    assert h.settled(lambda: upstream_blob_gets(REG)) == blobs, \
        "the warm pull after a restart fetched blobs upstream"
    # The tag was still checked with the registry (contract §3 "Manifests by tag").
    assert h.settled(lambda: upstream_manifest_heads(REG)) > heads, "no tag HEAD upstream"
    assert rp.request_logs(route="mitm", cache="revalidated"), "no revalidated manifest"
    hits = rp.request_logs(route="mitm", cache="hit")
    assert {ln["path"].rsplit("/", 1)[1] for ln in hits} >= IMG.blobs, hits


def test_range_from_cache():
    rp = proxy()
    pull(rp)  # cached, and this client confirmed for the repository
    layer = IMG.layers[1]
    with open(os.path.join(IMG.path, "blobs", "sha256", layer[7:]), "rb") as f:
        data = f.read()
    rpca = os.path.join(rp.dir, "ca", "ca.crt")
    url = "https://%s/v2/library/alpine/blobs/%s" % (HOST, layer)
    for rng, want in (("100-199", data[100:200]), ("%d-" % (len(data) - 5000), data[-5000:])):
        out = os.path.join(h.tmpdir(), "r")
        r = h.curl(["-o", out, "-w", "%{http_code}", "-r", rng, "-x", rp.url, "--cacert", rpca,
                    "-H", "Accept: */*", url])
        assert r.stdout.strip() == b"206", (rng, r)
        assert open(out, "rb").read() == want, "wrong bytes for range " + rng
    lines = rp.request_logs(route="mitm", path="/v2/library/alpine/blobs/" + layer, status="206")
    assert lines and all(ln.get("cache") == "hit" for ln in lines), lines


def test_range_of_uncached_blob_fills_the_cache():
    """containerd and dockerd resume with Range: on an object nobody fetches yet the
    whole fill starts and the range is served from it; afterwards it is cached."""
    rp = proxy()
    layer = IMG.layers[1]
    with open(os.path.join(IMG.path, "blobs", "sha256", layer[7:]), "rb") as f:
        data = f.read()
    rpca = os.path.join(rp.dir, "ca", "ca.crt")
    url = "https://%s/v2/library/alpine/blobs/%s" % (HOST, layer)
    before = h.settled(lambda: upstream_blob_gets(REG))
    out = os.path.join(h.tmpdir(), "r")
    r = h.curl(["-o", out, "-D", "-", "-w", "%{http_code}", "-r", "1000-", "-x", rp.url,
                "--cacert", rpca, url])
    assert r.stdout.strip().endswith(b"206"), r
    assert b"content-range: bytes 1000-%d/%d" % (len(data) - 1, len(data)) in r.stdout.lower()
    assert open(out, "rb").read() == data[1000:], "wrong bytes for a range of a cold blob"
    assert rp.wait_log(path="/v2/library/alpine/blobs/" + layer, status="206")["cache"] == "miss"
    # The whole object was fetched once (no Range upstream) and published.
    out2 = os.path.join(h.tmpdir(), "w")
    h.wait_until(lambda: rp.metrics().sum("regproxy_cache_objects") >= 1, 10, "published")
    r = h.curl(["-o", out2, "-w", "%{http_code}", "-x", rp.url, "--cacert", rpca, url])
    assert r.stdout.strip() == b"200" and open(out2, "rb").read() == data
    assert h.settled(lambda: upstream_blob_gets(REG)) - before == 1
    assert rp.request_logs(path="/v2/library/alpine/blobs/" + layer, status="200")[-1][
        "cache"] == "hit"
    # A range past the end: 416 with the size.
    r = h.curl(["-o", "/dev/null", "-D", "-", "-w", "%{http_code}", "-r",
                "%d-" % (len(data) + 10), "-x", rp.url, "--cacert", rpca, url])
    assert r.stdout.strip().endswith(b"416"), r


def test_tag_ttl_answers_tags_from_memory():
    rp = h.Regproxy(["--mitm", HOST, "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, REG.port),
                     "--upstream-ca", CA.ca_crt, "--tag-ttl", "1h"])
    pull(rp)

    def manifest_requests():
        text = open(REG.log_path, errors="replace").read()
        return text.count("/v2/library/alpine/manifests/")
    before = h.settled(manifest_requests)
    out, _ = pull(rp)
    assert h.layout_blobs(out)[1] == IMG.blobs
    assert h.settled(manifest_requests) == before, "a tag within --tag-ttl was asked upstream"
    lines = rp.request_logs(route="mitm", path="/v2/library/alpine/manifests/3.18")
    assert lines[-1].get("cache") == "hit", lines[-1]


def test_shared_layers_stored_once():
    rp = proxy()
    pull(rp)
    before = h.settled(lambda: upstream_blob_gets(REG, "other/copy"))
    out, _ = pull(rp, repo="other/copy")
    assert h.layout_blobs(out)[1] == IMG.blobs
    for dg in IMG.blobs:
        files = glob.glob(os.path.join(rp.dir, "cache", "blobs", "sha256", "*", dg[7:]))
        assert len(files) == 1, "%s stored %d times" % (dg, len(files))
    # Layers cached through library/alpine are confirmed for other/copy with an upstream
    # HEAD each; their bytes come from the cache.
    assert h.settled(lambda: upstream_blob_gets(REG, "other/copy")) == before, \
        "a layer already cached was fetched again through another repository"
    # A request's log line is written once its response is done, which can be just
    # after the client has every byte and exits.
    def reval():
        return {ln["path"].rsplit("/", 1)[1] for ln in rp.request_logs(
            route="mitm", cache="revalidated") if "/other/copy/blobs/" in ln["path"]}
    try:
        h.wait_until(lambda: reval() >= IMG.blobs, 5, "every layer of other/copy revalidated")
    except h.Timeout:
        raise AssertionError(reval()) from None


def test_private_blob_not_served_through_public_repo():
    rp = proxy(TREG)
    pull(rp, repo="private/app", tag="1", creds="alice:s3cret")  # cached by alice
    layer = PRIV.layers[0]
    rpca = os.path.join(rp.dir, "ca", "ca.crt")
    # An anonymous client with a valid token for the public repository asks for the
    # private layer through the public path.
    tok = h.run(["curl", "-sS", "--cacert", CA.ca_crt, "--connect-to",
                 "auth.docker.io:443:127.0.0.1:%d" % TS.port,
                 "https://auth.docker.io/token?service=%s&scope=repository:library/alpine:pull" %
                 TS.service]).stdout
    token = json.loads(tok)["token"]
    r = h.curl(["-o", "/dev/null", "-w", "%{http_code}", "-x", rp.url, "--cacert", rpca,
                "-H", "Authorization: Bearer " + token,
                "https://%s/v2/library/alpine/blobs/%s" % (HOST, layer)])
    code = r.stdout.decode().strip()
    assert code in ("401", "403", "404"), "private layer served through a public path: %s" % code
    lines = rp.request_logs(route="mitm", path="/v2/library/alpine/blobs/%s" % layer)
    assert lines and lines[-1].get("cache") != "hit", lines
    # Anonymous on the private repository's own path: the registry's 401, not the bytes.
    url = "https://%s/v2/private/app/blobs/%s" % (HOST, layer)
    r = h.curl(["-o", "/dev/null", "-w", "%{http_code}", "-x", rp.url, "--cacert", rpca, url])
    assert r.stdout.strip() == b"401", r
    # alice with a fresh token (never seen by regproxy): an upstream HEAD confirms it, the
    # bytes come from the cache.
    tok = h.run(["curl", "-sS", "-u", "alice:s3cret", "--cacert", CA.ca_crt, "--connect-to",
                 "auth.docker.io:443:127.0.0.1:%d" % TS.port,
                 "https://auth.docker.io/token?service=%s&scope=repository:private/app:pull" %
                 TS.service]).stdout
    out = os.path.join(h.tmpdir(), "alice")
    r = h.curl(["-o", out, "-w", "%{http_code}", "-x", rp.url, "--cacert", rpca, "-H",
                "Authorization: Bearer " + json.loads(tok)["token"], url])
    assert r.stdout.strip() == b"200" and h.sha256_file(out) == layer[7:], r
    assert rp.wait_log(path="/v2/private/app/blobs/" + layer, status="200")["cache"] == \
        "revalidated"
    # alice, through her own repository, gets it from the cache.
    out, _ = pull(rp, repo="private/app", tag="1", creds="alice:s3cret")
    assert h.layout_blobs(out)[1] == PRIV.blobs


def test_public_repository_detected_with_anonymous_token():
    # --access-ttl 0: no client credential is ever remembered, so only regproxy's own
    # finding that a repository is public lets the cache serve it.
    rp = h.Regproxy(["--mitm", HOST, "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, TREG.port),
                     "--connect-to", "auth.docker.io:443:127.0.0.1:%d" % TS.port,
                     "--upstream-ca", CA.ca_crt, "--access-ttl", "0"])
    pull(rp, repo="library/alpine", tag="1")
    rp.wait_log(msg="repository docker.io/library/alpine is public")
    pull(rp, repo="private/app", tag="1", creds="alice:s3cret")
    rp.wait_log(msg="repository docker.io/private/app is not public")
    out, _ = pull(rp, repo="library/alpine", tag="1")
    assert h.layout_blobs(out)[1] == IMG2.blobs
    hits = {ln["path"].rsplit("/", 1)[1] for ln in rp.request_logs(route="mitm", cache="hit")}
    assert IMG2.blobs <= hits, "public repository not served from the cache: %s" % hits
    pull(rp, repo="private/app", tag="1", creds="alice:s3cret")
    hits = {ln["path"].rsplit("/", 1)[1] for ln in rp.request_logs(route="mitm", cache="hit")}
    assert not (PRIV.blobs & hits), "private blobs served without a confirmed credential"


def test_kill9_during_fill_leaves_nothing_partial():
    cache = os.path.join(h.tmpdir(), "cache")
    big = h.OciImage(os.path.join(h.tmpdir(), "big"), tag="9", layer_sizes=(24 * 1024 * 1024,))
    push(big, "docker://127.0.0.1:%d/library/big:9" % REG.port)
    rp = proxy(cache_dir=cache)
    rpca = os.path.join(rp.dir, "ca", "ca.crt")
    layer = big.layers[0]
    p = subprocess.Popen(["curl", "-sS", "-o", "/dev/null", "--limit-rate", "4M", "-x", rp.url,
                          "--cacert", rpca, "https://%s/v2/library/big/blobs/%s" % (HOST, layer)],
                         stderr=subprocess.PIPE)
    h.defer(lambda: p.poll() is None and p.kill())
    h.wait_until(lambda: glob.glob(os.path.join(cache, "tmp", "*")), 10, "a fill in progress")
    rp.proc.signal(signal.SIGKILL)
    rp.wait_exit(5)
    p.wait(10)
    assert not glob.glob(os.path.join(cache, "blobs", "sha256", "*", layer[7:])), \
        "a partial object was published"
    rp2 = proxy(cache_dir=cache)
    assert not glob.glob(os.path.join(cache, "tmp", "*")), "leftover temp files after restart"
    out = os.path.join(h.tmpdir(), "o")
    h.skopeo(["copy", "--src-cert-dir", certdir(rp2), "docker://%s/library/big:9" % HOST,
              "oci:%s:9" % out], env={"HTTPS_PROXY": rp2.url})
    assert h.layout_blobs(out)[1] == big.blobs


def test_concurrent_cold_gets_one_upstream_fetch():
    big = h.OciImage(os.path.join(h.tmpdir(), "conc"), tag="c", layer_sizes=(64 * 1024 * 1024,))
    push(big, "docker://127.0.0.1:%d/library/conc:c" % REG.port)
    layer = big.layers[0]
    rp = proxy()
    rpca = os.path.join(rp.dir, "ca", "ca.crt")
    url = "https://%s/v2/library/conc/blobs/%s" % (HOST, layer)
    # No manifest request first: clients that arrive before the upstream answered wait
    # for it, and share the fill once it confirmed their (anonymous) access.
    outs = [os.path.join(h.tmpdir(), "b%d" % i) for i in range(20)]
    procs = [subprocess.Popen(["curl", "-sS", "-o", o, "-x", rp.url, "--cacert", rpca, url])
             for o in outs]
    for p in procs:
        h.defer(lambda p=p: p.poll() is None and p.kill())
    for p in procs:
        assert p.wait(60) == 0
    for o in outs:
        assert h.sha256_file(o) == layer[7:], "a client got different bytes"
    def layer_gets():
        return open(REG.log_path, errors="replace").read().count(
            "GET /v2/library/conc/blobs/%s " % layer)
    # The registry writes its access line when it has sent the body.
    h.wait_until(lambda: layer_gets() >= 1, 5, "the registry's access line for the layer")
    got = layer_gets()
    assert got == 1, "20 concurrent cold GETs made %d upstream GETs" % got
    kinds = [ln.get("cache") for ln in rp.request_logs(route="mitm", path="/v2/library/conc/blobs/" + layer)]
    assert kinds.count("miss") == 1 and kinds.count("coalesced") + kinds.count("hit") == 19, kinds


def test_registry_down_pull_from_cache():
    reg = h.Registry()
    img = h.OciImage(os.path.join(h.tmpdir(), "down"), tag="d", layer_sizes=(3000, 90 * 1024))
    push(img, "docker://127.0.0.1:%d/library/down:d" % reg.port)
    rp = proxy(reg)
    pull(rp, repo="library/down", tag="d")  # warm
    reg.proc.stop()
    out, _ = pull(rp, repo="library/down", tag="d")
    assert h.layout_blobs(out)[1] == img.blobs
    stale = rp.request_logs(route="mitm", cache="stale")
    paths = {ln.get("path") for ln in stale}
    assert "/v2/" in paths and "/v2/library/down/manifests/d" in paths, paths
    # HEAD of a cached blob is answered from the cache while the registry is away.
    r = h.curl(["-I", "-x", rp.url, "--cacert", os.path.join(rp.dir, "ca", "ca.crt"),
                "https://%s/v2/library/down/blobs/%s" % (HOST, img.layers[1])])
    head = r.stdout.decode(errors="replace")
    assert head.startswith("HTTP/1.1 200") and "docker-content-digest: %s" % img.layers[1] in \
        head.lower(), head
    # Something never seen is still a 502, not an invented answer.
    r = h.curl(["-o", "/dev/null", "-w", "%{http_code}", "-x", rp.url, "--cacert",
                os.path.join(rp.dir, "ca", "ca.crt"),
                "https://%s/v2/library/down/manifests/other" % HOST])
    assert r.stdout.strip() == b"502", r


def test_token_registry_down_public_image_pulls_from_cache():
    """Docker Hub's shape: the registry is down, its token service is up. A public
    image pulled before still pulls; a private one does not leak (contract §3)."""
    treg = h.TokenRegistry(TS)
    tunnel = h.Regproxy(["--mitm", "", "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, treg.port),
                         "--connect-to", "auth.docker.io:443:127.0.0.1:%d" % TS.port])
    for img, repo in ((IMG2, "library/alpine"), (PRIV, "private/app")):
        h.skopeo(["copy", "--dest-cert-dir", CA.certdir, "--dest-creds", "alice:s3cret",
                  "oci:%s:1" % img.path, "docker://%s/%s:1" % (HOST, repo)],
                 env={"HTTPS_PROXY": tunnel.url})
    tunnel.stop()
    rp = proxy(treg)
    pull(rp, repo="library/alpine", tag="1")
    pull(rp, repo="private/app", tag="1", creds="alice:s3cret")
    rp.wait_log(msg="repository docker.io/library/alpine is public")
    treg.proc.stop()
    out, _ = pull(rp, repo="library/alpine", tag="1")
    assert h.layout_blobs(out)[1] == IMG2.blobs
    assert rp.request_logs(route="mitm", path="/v2/library/alpine/manifests/1", cache="stale")
    _, p = pull(rp, repo="private/app", tag="1", check=False)
    assert p.returncode != 0, "a private image pulled anonymously while the registry was down"


def test_eviction_keeps_cache_under_bound():
    imgs = []
    for i in range(3):
        img = h.OciImage(os.path.join(h.tmpdir(), "ev%d" % i), tag="e",
                         layer_sizes=(3 * 1024 * 1024,))
        push(img, "docker://127.0.0.1:%d/library/ev%d:e" % (REG.port, i))
        imgs.append(img)
    cache = os.path.join(h.tmpdir(), "cache")
    rp = h.Regproxy(["--mitm", HOST, "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, REG.port),
                     "--upstream-ca", CA.ca_crt, "--cache-dir", cache, "--cache-max-size", "5M"])

    def stored():
        return sum(os.path.getsize(f) for f in glob.glob(os.path.join(cache, "blobs", "*", "*", "*")))
    for i, img in enumerate(imgs):
        out, _ = pull(rp, repo="library/ev%d" % i, tag="e")
        assert h.layout_blobs(out)[1] == img.blobs  # the pull itself is unaffected
        h.wait_until(lambda: stored() <= 5 * 1024 * 1024, 10, "cache under its 5 MiB bound")
    m = rp.metrics()
    assert m.sum("regproxy_evictions_total") >= 1, "no eviction counted"
    assert m.sum("regproxy_cache_size_bytes") <= 5 * 1024 * 1024


def test_fills_bounded_by_the_cache_size():
    """A registry announcing more than the cache can hold (or fills that together
    would pass the bound) gets its bytes relayed, not written to disk (contract §3)."""
    img = h.OciImage(os.path.join(h.tmpdir(), "huge"), tag="h", layer_sizes=(3 * 1024 * 1024,))
    push(img, "docker://127.0.0.1:%d/library/huge:h" % REG.port)
    cache = os.path.join(h.tmpdir(), "cache")
    rp = h.Regproxy(["--mitm", HOST, "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, REG.port),
                     "--upstream-ca", CA.ca_crt, "--cache-dir", cache, "--cache-max-size", "2M"])
    out, _ = pull(rp, repo="library/huge", tag="h")
    assert h.layout_blobs(out)[1] == img.blobs
    layer = img.layers[0]
    line = rp.wait_log(path="/v2/library/huge/blobs/" + layer, status="200")
    assert line["cache"] == "pass", line
    refused = rp.wait_log(msg="cache fill refused")
    assert refused["digest"] == layer and refused["reason"] == "larger than the cache can hold"
    assert not glob.glob(os.path.join(cache, "blobs", "*", "*", layer[7:]))
    assert not glob.glob(os.path.join(cache, "tmp", "*"))


def test_second_instance_on_same_cache_dir_refused():
    cache = os.path.join(h.tmpdir(), "cache")
    rp = proxy(cache_dir=cache)
    rc, err = h.run_regproxy_expect_exit(["--cache-dir", cache, "--mitm", "",
                                          "--listen", "127.0.0.1:%d" % h.free_port()])
    assert rc == 2 and str(rp.proc.pid) in err, (rc, err)


if __name__ == "__main__":
    h.main(globals())
