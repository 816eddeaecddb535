"""Issue 15's last claim, end to end: `setup docker --root` on a tree whose
`certs.d/<registry>/ca.crt` (the registry's own self-signed CA) exists adds `regproxy.crt`
beside it, the original untouched, and dockerd with that tree pulls through regproxy.

dockerd reads only /etc/docker/certs.d, so this file re-executes itself in a private mount
namespace (`unshare --mount`, `mount --make-rprivate /`), puts a tmpfs over /etc/docker
and bind-mounts the tree's certs.d there. dockerd gets HTTPS_PROXY = regproxy and the
system pool as it is (regproxy's CA is NOT in its SSL_CERT_FILE, unlike test_dockerd.py):
regproxy's leaf for the registry is trusted only through certs.d/<registry>/regproxy.crt.
regproxy reads the same tree with --upstream-certs-dir to trust the registry's CA."""

import json
import os
import shutil
import subprocess
import sys

INNER = "RP_TEST_CERTSD_DOCKERD_INNER"

if os.environ.get(INNER) != "1":
    why = None
    if os.geteuid() != 0:
        why = "needs root (mount namespace, bind mounts)"
    elif shutil.which("unshare") is None:
        why = "needs unshare (util-linux)"
    elif shutil.which("dockerd") is None or shutil.which("docker") is None:
        why = "dockerd not installed (apt-get install docker.io)"
    if why:
        print("skipped: %s" % why)
        print("0 passed, 0 failed, 1 skipped")
        sys.exit(0)
    os.execvpe("unshare", ["unshare", "--mount", "--", sys.executable, "-u",
                           os.path.abspath(__file__)], dict(os.environ, **{INNER: "1"}))

import harness as h  # noqa: E402

NAME = "selfsigned.certsd.test"
PORT = 5443  # the port clients name; --connect-to maps it to the real one
REGISTRY = "%s:%d" % (NAME, PORT)
REF = "%s/library/alpine:3.18" % REGISTRY
ETC_CERTS_D = "/etc/docker/certs.d"


def mount(*args):
    subprocess.run(["mount"] + list(args), check=True)


def private_etc_docker_certs_d(tree):
    """/etc/docker/certs.d = tree, in this mount namespace only."""
    mount("--make-rprivate", "/")
    created = not os.path.isdir("/etc/docker")
    if created:  # the only change outside the namespace; removed again below
        os.mkdir("/etc/docker", 0o755)
        h.defer(lambda: os.rmdir("/etc/docker"))
    mount("-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", "/etc/docker")
    h.defer(lambda: subprocess.run(["umount", "-l", "/etc/docker"]))
    os.mkdir(ETC_CERTS_D, 0o755)
    mount("--bind", tree, ETC_CERTS_D)
    h.defer(lambda: subprocess.run(["umount", "-l", ETC_CERTS_D]))


def setup():
    global CA, REG, IMG, ROOT, REG_DIR, CA_CRT_BEFORE, CA_DIR, RP, DOCKER
    if h.docker_bin() is None:
        raise h.Skip("docker CLI not installed")
    CA = h.TestCA(names=[NAME])  # the registry's own self-signed CA, known to nobody
    REG = h.Registry(ca=CA)
    IMG = h.OciImage(os.path.join(h.tmpdir(), "src"), layer_sizes=(4096, 256 * 1024))
    h.skopeo(["copy", "--dest-cert-dir", CA.certdir, "oci:%s:3.18" % IMG.path,
              "docker://127.0.0.1:%d/library/alpine:3.18" % REG.port])
    # The tree as an admin has it before regproxy: certs.d/<registry>/ca.crt.
    ROOT = h.tmpdir("rpit-root-")
    REG_DIR = os.path.join(ROOT, "etc/docker/certs.d", REGISTRY)
    os.makedirs(REG_DIR)
    shutil.copy(CA.ca_crt, os.path.join(REG_DIR, "ca.crt"))
    CA_CRT_BEFORE = open(os.path.join(REG_DIR, "ca.crt"), "rb").read()
    private_etc_docker_certs_d(os.path.join(ROOT, "etc/docker/certs.d"))
    # regproxy's CA exists before `setup` so that dockerd can first be shown refusing it.
    CA_DIR = os.path.join(h.tmpdir(), "ca")
    h.run([h.regproxy_bin(), "ca", "init", "--ca-dir", CA_DIR, "--mitm", REGISTRY])
    RP = h.Regproxy(["--mitm", REGISTRY,
                     "--connect-to", "%s:127.0.0.1:%d" % (REGISTRY, REG.port),
                     "--upstream-certs-dir", os.path.join(ROOT, "etc/docker/certs.d"),
                     "--ca-dir", CA_DIR])
    DOCKER = h.Dockerd(RP, rp_ca_in_bundle=False)


def test_without_regproxy_crt_dockerd_refuses_the_leaf():
    # The control: only the registry's CA in certs.d, regproxy's CA nowhere dockerd looks.
    assert os.listdir(os.path.join(ETC_CERTS_D, REGISTRY)) == ["ca.crt"]
    p = DOCKER.docker(["pull", REF], check=False, timeout=180)
    err = (p.stdout + p.stderr).decode(errors="replace")
    assert p.returncode != 0, "pulled without trusting regproxy's CA: " + err
    # dockerd's own check of regproxy's leaf (regproxy trusts the registry: ca.crt).
    assert "x509: certificate signed by unknown authority" in err, err


def test_setup_docker_adds_regproxy_crt_beside_ca_crt():
    p = h.run([h.regproxy_bin(), "setup", "docker", "--root", ROOT, "--ca-dir", CA_DIR,
               "--mitm", REGISTRY], env=h.clean_env(HOME=h.tmpdir()))
    assert sorted(os.listdir(REG_DIR)) == ["ca.crt", "regproxy.crt"], os.listdir(REG_DIR)
    # dockerd's view of the same directory (the bind mount).
    assert sorted(os.listdir(os.path.join(ETC_CERTS_D, REGISTRY))) == \
        ["ca.crt", "regproxy.crt"]
    assert open(os.path.join(REG_DIR, "ca.crt"), "rb").read() == CA_CRT_BEFORE
    assert open(os.path.join(REG_DIR, "regproxy.crt"), "rb").read() == \
        open(os.path.join(CA_DIR, "ca.crt"), "rb").read()
    assert "regproxy.crt" in p.stdout.decode(), p.stdout


def blob_gets():
    return open(REG.log_path, errors="replace").read().count("GET /v2/library/alpine/blobs/")


def test_dockerd_pulls_through_regproxy():
    DOCKER.docker(["pull", REF], timeout=180)
    p = DOCKER.docker(["image", "inspect", REF, "--format", "{{json .RepoDigests}}"])
    digests = json.loads(p.stdout)
    assert any(d.endswith("@" + IMG.manifest) for d in digests), (digests, IMG.manifest)
    for dg in IMG.layers:
        lines = RP.request_logs(route="mitm", path="/v2/library/alpine/blobs/" + dg)
        assert [ln.get("cache") for ln in lines] == ["miss"], lines
    assert h.settled(blob_gets) >= len(IMG.layers), "the layers never reached the registry"


def test_rmi_and_pull_again_makes_no_blob_get_upstream():
    DOCKER.docker(["rmi", REF])
    before = h.settled(blob_gets)
    DOCKER.docker(["pull", REF], timeout=180)
    for dg in IMG.layers:
        lines = RP.request_logs(route="mitm", path="/v2/library/alpine/blobs/" + dg)
        assert [ln.get("cache") for ln in lines] == ["miss", "hit"], lines
    assert h.settled(blob_gets) == before, "a blob GET reached the registry on the warm pull"


def test_original_ca_crt_byte_identical():
    assert open(os.path.join(REG_DIR, "ca.crt"), "rb").read() == CA_CRT_BEFORE
    assert open(os.path.join(ETC_CERTS_D, REGISTRY, "ca.crt"), "rb").read() == CA_CRT_BEFORE


if __name__ == "__main__":
    h.main(globals())
