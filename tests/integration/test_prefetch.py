"""`regproxy prefetch <image-ref>...` (contract §4): every platform of an image into the
cache, with progress. Without a running instance it starts one in-process on an
ephemeral port; with one holding the cache directory it goes through that instance's
listener (mirror mode). Afterwards a pull of every platform through MITM makes no blob
request upstream. Private images need --registry-auth; bad references exit 2."""

import base64
import json
import os
import re
import shutil

import harness as h

HOST = "registry-1.docker.io"


def setup():
    global CA, TS, TREG, MULTI, PRIV
    CA = h.shared_ca()
    TS = h.HubTokenServer(users={"alice": "s3cret"}, public=("library/alpine",))
    TREG = h.TokenRegistry(TS)
    MULTI = h.multiarch_layout()
    PRIV = h.OciImage(os.path.join(h.tmpdir(), "priv"), tag="1", layer_sizes=(70 * 1024,))
    tunnel = h.Regproxy(["--mitm", "", "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, TREG.port),
                         "--connect-to", "auth.docker.io:443:127.0.0.1:%d" % TS.port])
    for args in (["--all", "oci:%s:multi" % MULTI["path"], "docker://%s/library/alpine:3.18" % HOST],
                 ["oci:%s:1" % PRIV.path, "docker://%s/private/app:1" % HOST]):
        h.skopeo(["copy", "--dest-cert-dir", CA.certdir, "--dest-creds", "alice:s3cret"] + args,
                 env={"HTTPS_PROXY": tunnel.url})
    tunnel.stop()


def upstream_args():
    return ["--upstream-ca", CA.ca_crt,
            "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, TREG.port),
            "--connect-to", "auth.docker.io:443:127.0.0.1:%d" % TS.port]


def prefetch(cache_dir, *refs, extra=(), check=None):
    d = h.tmpdir()
    argv = [h.regproxy_bin(), "prefetch", "--cache-dir", cache_dir,
            "--ca-dir", os.path.join(d, "ca"), "--mitm", HOST] + upstream_args() + \
        list(extra) + list(refs)
    p = h.run(argv, check=False, timeout=120, env=h.clean_env(HOME=d))
    out, err = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
    if check is not None:
        assert p.returncode == check, "exit %d, want %d\nstdout: %s\nstderr: %s" % (
            p.returncode, check, out, err)
    return p.returncode, out, err


def blob_gets():
    return open(TREG.log_path, errors="replace").read().count("GET /v2/library/alpine/blobs/")


def digests_in(cache_dir):
    root = os.path.join(cache_dir, "blobs", "sha256")
    return {"sha256:" + f for _, _, files in os.walk(root) for f in files}


def test_every_platform_without_a_running_instance():
    cache = os.path.join(h.tmpdir(), "cache")
    rc, out, err = prefetch(cache, "alpine:3.18", check=0)
    assert "docker.io/library/alpine:3.18" in out and "2 manifest(s)" in out, out
    assert "linux/amd64" in out and "linux/arm64" in out, out
    assert re.search(r"prefetched 3 manifest\(s\) and \d+ blob\(s\)", out), out
    have = digests_in(cache)
    assert MULTI["blobs"] | {MULTI["index"]} <= have, MULTI["blobs"] - have
    # The instance it started is gone: the directory is free again.
    rp = h.Regproxy(["--mitm", HOST, "--cache-dir", cache] + upstream_args())
    before = h.settled(blob_gets)
    d = h.tmpdir()
    shutil.copy(os.path.join(rp.dir, "ca", "ca.crt"), os.path.join(d, "regproxy.crt"))
    shutil.copy(CA.ca_crt, os.path.join(d, "test-ca.crt"))
    out_dir = os.path.join(h.tmpdir(), "out")
    h.skopeo(["copy", "--all", "--src-cert-dir", d, "docker://%s/library/alpine:3.18" % HOST,
              "oci:%s:3.18" % out_dir], env={"HTTPS_PROXY": rp.url})
    assert h.settled(blob_gets) == before, "a pull after prefetch fetched blobs upstream"


def test_through_the_running_instance():
    cache = os.path.join(h.tmpdir(), "cache")
    rp = h.Regproxy(["--mitm", HOST, "--cache-dir", cache] + upstream_args())
    rc, out, err = prefetch(cache, "docker.io/library/alpine:3.18", check=0)
    assert "through the running regproxy (PID %d)" % rp.proc.pid in out, out
    assert rp.request_logs(via="mirror", cache="miss"), "the instance fetched nothing"
    assert MULTI["blobs"] <= digests_in(cache)
    # Again: everything is there already (hits), still exit 0.
    prefetch(cache, "alpine:3.18", check=0)
    assert rp.request_logs(via="mirror", cache="hit")


def test_private_image_needs_registry_auth():
    cache = os.path.join(h.tmpdir(), "cache")
    rc, out, err = prefetch(cache, "private/app:1", check=1)
    assert "Unauthorized" in out, out
    d = h.tmpdir()
    conf = h.write_file(os.path.join(d, "config.json"), json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"alice:s3cret").decode()}}}))
    prefetch(cache, "private/app:1", extra=["--registry-auth", conf], check=0)
    assert PRIV.blobs <= digests_in(cache)


def test_bad_references_exit_2():
    cache = os.path.join(h.tmpdir(), "cache")
    for ref in ("Alpine:3.18", "https://docker.io/alpine", "alpine:", "alpine@sha256:abc"):
        rc, out, err = prefetch(cache, ref, check=2)
        assert ref in err, err
    rc, out, err = prefetch(cache, check=2)
    assert "no image" in err, err


if __name__ == "__main__":
    h.main(globals())
