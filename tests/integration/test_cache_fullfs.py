"""The cache on a full filesystem (contract §3 ENOSPC): inside a private mount namespace the
cache directory is a 3 MiB tmpfs, and an image with an 8 MiB layer is pulled through
regproxy. The pull succeeds with the right bytes (the fill keeps streaming to the client
after the disk error), nothing corrupt or partial is kept, and the next pull works."""

import glob
import os
import shutil
import subprocess
import sys

INNER = "RP_TEST_FULLFS_INNER"

if os.environ.get(INNER) != "1":
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        print("skipped: needs root and unshare")
        print("0 passed, 0 failed, 1 skipped")
        sys.exit(0)
    os.execvpe("unshare", ["unshare", "--mount", "--", sys.executable, "-u",
                           os.path.abspath(__file__)], dict(os.environ, **{INNER: "1"}))

import harness as h  # noqa: E402

HOST = "registry-1.docker.io"


def setup():
    global CA, REG, IMG, CACHE, RP
    CA = h.shared_ca()
    REG = h.Registry()
    IMG = h.OciImage(os.path.join(h.tmpdir(), "src"), layer_sizes=(2048, 8 * 1024 * 1024))
    h.skopeo(["copy", "--dest-cert-dir", CA.certdir, "oci:%s:3.18" % IMG.path,
              "docker://127.0.0.1:%d/library/alpine:3.18" % REG.port])
    CACHE = os.path.join(h.tmpdir(), "cache")
    os.makedirs(CACHE)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs", CACHE],
                   check=True)
    h.defer(lambda: subprocess.run(["umount", "-l", CACHE]))
    RP = h.Regproxy(["--mitm", HOST, "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, REG.port),
                     "--upstream-ca", CA.ca_crt, "--cache-dir", CACHE])


def pull():
    d = h.tmpdir()
    shutil.copy(os.path.join(RP.dir, "ca", "ca.crt"), os.path.join(d, "ca.crt"))
    out = os.path.join(h.tmpdir(), "out")
    h.skopeo(["copy", "--src-cert-dir", d, "docker://%s/library/alpine:3.18" % HOST,
              "oci:%s:3.18" % out], env={"HTTPS_PROXY": RP.url})
    return out


def test_pull_succeeds_on_a_full_disk():
    out = pull()
    assert h.layout_blobs(out)[1] == IMG.blobs
    big = IMG.layers[1]
    assert not glob.glob(os.path.join(CACHE, "blobs", "sha256", "*", big[7:])), \
        "a blob larger than the filesystem was published"
    h.wait_until(lambda: not glob.glob(os.path.join(CACHE, "tmp", "*")), 5,
                 "temp files removed after the disk error")
    assert "no space left on device" in RP.stderr().lower(), "the disk error was not logged"
    # Whatever was published is whole: every stored file hashes to its name.
    for f in glob.glob(os.path.join(CACHE, "blobs", "sha256", "*", "*")):
        assert h.sha256_file(f) == os.path.basename(f), "corrupt object " + f


def test_next_pull_still_works():
    out = pull()
    assert h.layout_blobs(out)[1] == IMG.blobs
    assert RP.alive()


if __name__ == "__main__":
    h.main(globals())
