"""podman as a fourth client through regproxy's MITM (TESTING.md recipe): it pulls
docker.io/library/alpine:3.18 with regproxy's CA in --cert-dir; after `podman rmi` the
second pull takes every layer from regproxy's cache."""

import os
import shutil

import harness as h

HOST = "registry-1.docker.io"


def setup():
    global CA, REG, IMG, RP, CERTS
    if shutil.which("podman") is None:
        raise h.Skip("podman not installed (apt-get install podman)")
    CA = h.shared_ca()
    REG = h.Registry()
    IMG = h.OciImage(os.path.join(h.tmpdir(), "src"), layer_sizes=(5000, 180 * 1024))
    h.skopeo(["copy", "--dest-cert-dir", CA.certdir, "oci:%s:3.18" % IMG.path,
              "docker://127.0.0.1:%d/library/alpine:3.18" % REG.port])
    RP = h.Regproxy(["--mitm", HOST, "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, REG.port),
                     "--upstream-ca", CA.ca_crt])
    CERTS = h.tmpdir()
    shutil.copy(os.path.join(RP.dir, "ca", "ca.crt"), os.path.join(CERTS, "regproxy.crt"))


def podman(args, home):
    regconf = h.write_file(os.path.join(home, "registries.conf"), "")
    env = h.clean_env(HOME=home, TMPDIR=home, HTTPS_PROXY=RP.url, HTTP_PROXY=RP.url,
                      CONTAINERS_REGISTRIES_CONF=regconf, XDG_RUNTIME_DIR=home)
    return h.run(["podman", "--root", os.path.join(home, "root"),
                  "--runroot", os.path.join(home, "runroot"), "--storage-driver", "vfs",
                  "--cgroup-manager", "cgroupfs", "--events-backend", "file"] + args,
                 timeout=180, env=env)


def blob_gets():
    return open(REG.log_path, errors="replace").read().count("GET /v2/library/alpine/blobs/")


def test_podman_pull_and_pull_again_from_the_cache():
    home = h.tmpdir()
    podman(["pull", "--cert-dir", CERTS, "docker.io/library/alpine:3.18"], home)
    p = podman(["images", "--digests", "--format", "{{.Digest}}"], home)
    assert IMG.manifest in p.stdout.decode(), p.stdout
    assert RP.request_logs(route="mitm", cache="miss"), "nothing was cached"
    podman(["rmi", "docker.io/library/alpine:3.18"], home)
    before = h.settled(blob_gets)
    podman(["pull", "--cert-dir", CERTS, "docker.io/library/alpine:3.18"], home)
    assert h.settled(blob_gets) == before, "the second pull fetched layers upstream"
    hits = {ln["path"].rsplit("/", 1)[-1] for ln in RP.request_logs(route="mitm", cache="hit")}
    assert set(IMG.layers) <= hits, hits


if __name__ == "__main__":
    h.main(globals())
