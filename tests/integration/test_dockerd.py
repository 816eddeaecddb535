"""dockerd through regproxy's MITM (TESTING.md recipe): HTTPS_PROXY points at regproxy,
regproxy's CA is in the system pool dockerd uses (SSL_CERT_FILE = system bundle + CA;
no certs.d, no /etc/hosts entry), and `docker pull alpine:3.18` fetches Docker Hub's
name from the local registry that --connect-to stands in for registry-1.docker.io."""

import json
import os
import shutil
import subprocess

import harness as h

HOST = "registry-1.docker.io"
INSECURE = "registry.insecure.test:5000"


def setup():
    global CA, REG, IMG, RP, DOCKER, PLAIN, APP
    if shutil.which("dockerd") is None or h.docker_bin() is None:
        raise h.Skip("dockerd not installed (apt-get install docker.io)")
    CA = h.shared_ca()
    REG = h.Registry()
    IMG = h.OciImage(os.path.join(h.tmpdir(), "src"), layer_sizes=(4096, 256 * 1024))
    h.skopeo(["copy", "--dest-cert-dir", CA.certdir, "oci:%s:3.18" % IMG.path,
              "docker://127.0.0.1:%d/library/alpine:3.18" % REG.port])
    # An insecure (plain-HTTP) registry too, as LAN registries often are.
    PLAIN = h.PlainRegistry()
    APP = h.OciImage(os.path.join(h.tmpdir(), "app"), tag="1", layer_sizes=(3000, 120 * 1024))
    h.skopeo(["copy", "--dest-tls-verify=false", "oci:%s:1" % APP.path,
              "docker://127.0.0.1:%d/tools/app:1" % PLAIN.port])
    RP = h.Regproxy(["--mitm", "%s,%s" % (HOST, INSECURE), "--upstream-ca", CA.ca_crt,
                     "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, REG.port),
                     "--connect-to", "%s:127.0.0.1:%d" % (INSECURE, PLAIN.port)])
    DOCKER = h.Dockerd(RP, ["--insecure-registry", INSECURE])


def test_docker_info_shows_proxy():
    p = DOCKER.docker(["info", "--format", "{{json .}}"])
    info = json.loads(p.stdout)
    assert info.get("HttpsProxy", "").startswith(RP.url.split("://")[1]) or \
        RP.url in info.get("HttpsProxy", ""), info.get("HttpsProxy")


def test_docker_pull_through_mitm():
    DOCKER.docker(["pull", "alpine:3.18"], timeout=180)
    p = DOCKER.docker(["image", "inspect", "alpine:3.18", "--format", "{{json .RepoDigests}}"])
    digests = json.loads(p.stdout)
    assert any(d.endswith("@" + IMG.manifest) for d in digests), (digests, IMG.manifest)
    lines = RP.request_logs(route="mitm", host=HOST)
    assert any(ln.get("path", "").endswith(IMG.layers[1]) for ln in lines), \
        "no MITM log line for the layer blob"


def test_docker_warm_pull_from_cache():
    """rmi + pull again: the layers and the manifest come from regproxy's cache; the
    only upstream manifest request is dockerd's HEAD by tag."""
    DOCKER.docker(["pull", "alpine:3.18"], timeout=180)  # warm (no-op if already)
    DOCKER.docker(["rmi", "alpine:3.18"])

    def counts():
        text = open(REG.log_path, errors="replace").read()
        return (text.count("GET /v2/library/alpine/blobs/"),
                text.count("GET /v2/library/alpine/manifests/"))
    before = counts()
    DOCKER.docker(["pull", "alpine:3.18"], timeout=180)
    h.wait_until(lambda: RP.request_logs(route="mitm", cache="hit"), 5, "cache hits")
    assert counts() == before, "warm pull went upstream: %r -> %r" % (before, counts())
    hits = {ln.get("path", "").rsplit("/", 1)[-1] for ln in RP.request_logs(route="mitm",
                                                                            cache="hit")}
    # (dockerd may keep the manifest itself across rmi; when it asks, it is a hit,
    # which the unchanged upstream manifest count above already shows.)
    assert set(IMG.layers) <= hits, hits


def test_docker_pull_with_registry_down():
    DOCKER.docker(["pull", "alpine:3.18"], timeout=180)  # warm
    DOCKER.docker(["rmi", "alpine:3.18"])
    REG.proc.stop()
    DOCKER.docker(["pull", "alpine:3.18"], timeout=180)
    p = DOCKER.docker(["image", "inspect", "alpine:3.18", "--format", "{{json .RepoDigests}}"])
    assert IMG.manifest in p.stdout.decode()
    assert RP.request_logs(route="mitm", cache="stale"), "nothing answered from memory"


def test_insecure_registry_pulled_over_http_and_cached():
    """dockerd with --insecure-registry: its https attempt fails, it falls back to
    http:// through HTTP_PROXY, and regproxy caches the plain-HTTP pull (route=http)."""
    ref = INSECURE + "/tools/app:1"
    DOCKER.docker(["pull", ref], timeout=180)
    assert RP.request_logs(route="http", cache="miss"), "the plain-HTTP pull was not cached"
    DOCKER.docker(["rmi", ref])
    before = PLAIN.count("GET /v2/tools/app/blobs/")
    DOCKER.docker(["pull", ref], timeout=180)
    assert h.settled(lambda: PLAIN.count("GET /v2/tools/app/blobs/")) == before, \
        "the second pull fetched layers from the insecure registry"
    hits = {ln["path"].rsplit("/", 1)[-1] for ln in RP.request_logs(route="http", cache="hit")}
    assert set(APP.layers) <= hits, hits


def test_docker_pull_with_registry_down_after_a_restart():
    """The laptop case (contract §3): what regproxy learnt on the first pull (the repository
    is public) is kept in its index, so the pull works offline after a restart too."""
    global RP
    RP.wait_log(msg="repository docker.io/library/alpine is public")
    DOCKER.docker(["rmi", "alpine:3.18"])
    assert not REG.proc.alive(), "the registry should be down since the last test"
    args = RP.argv[1:]
    RP.stop()
    RP = h.Regproxy(args)  # same port, cache and CA
    DOCKER.docker(["pull", "alpine:3.18"], timeout=180)
    p = DOCKER.docker(["image", "inspect", "alpine:3.18", "--format", "{{json .RepoDigests}}"])
    assert IMG.manifest in p.stdout.decode()
    assert RP.request_logs(route="mitm", cache="stale"), "nothing answered from memory"
    served = {ln["path"].rsplit("/", 1)[-1] for ln in RP.request_logs(route="mitm", status="200")
              if ln.get("cache") in ("hit", "stale")}
    assert set(IMG.layers) <= served, served


if __name__ == "__main__":
    h.main(globals())
