"""A real registry client through regproxy (contract §1 "Developer laptop", TESTING.md):
the distribution registry serves registry-1.docker.io over TLS with the test CA, an OCI
image is pushed to it directly, and skopeo pulls docker://registry-1.docker.io/... with
HTTPS_PROXY pointing at regproxy (--mitm '' so the registry is tunnelled untouched,
--connect-to mapping registry-1.docker.io:443 to the local registry)."""

import os

import harness as h


def setup():
    global CA, REG, IMG
    CA = h.shared_ca()
    REG = h.Registry()
    IMG = h.OciImage(os.path.join(h.tmpdir(), "src"), layer_sizes=(4096, 1024 * 1024,
                                                                  300 * 1024))
    h.skopeo(["copy", "--dest-cert-dir", CA.certdir, "oci:%s:3.18" % IMG.path,
              "docker://127.0.0.1:%d/library/alpine:3.18" % REG.port])


def start_proxy():
    return h.Regproxy(["--mitm", "", "--connect-to",
                       "registry-1.docker.io:443:127.0.0.1:%d" % REG.port])


def pull(rp, out, ref="docker://registry-1.docker.io/library/alpine:3.18"):
    return h.skopeo(["copy", "--src-cert-dir", CA.certdir, ref, "oci:%s:3.18" % out],
                    env={"HTTPS_PROXY": rp.url, "https_proxy": rp.url})


def test_skopeo_pull_through_tunnel():
    rp = start_proxy()
    out = os.path.join(h.tmpdir(), "out")
    pull(rp, out)
    mdg, blobs = h.layout_blobs(out)
    assert blobs == IMG.blobs, "pulled blobs %s != pushed %s" % (sorted(blobs),
                                                                 sorted(IMG.blobs))
    assert mdg == IMG.manifest, (mdg, IMG.manifest)
    layer_bytes = sum(os.path.getsize(os.path.join(IMG.path, "blobs", "sha256",
                                                   dg.split(":")[1])) for dg in IMG.layers)

    def tunnel_lines():
        lines = rp.request_logs(route="tunnel", host="registry-1.docker.io")
        if sum(int(ln.get("bytes_out", "0")) for ln in lines) >= layer_bytes:
            return lines
        return None
    try:
        lines = h.wait_until(tunnel_lines, 5, "route=tunnel host=registry-1.docker.io "
                             "lines carrying >= %d bytes" % layer_bytes)
    except h.Timeout as e:
        raise AssertionError("%s; got %r" % (e, rp.request_logs())) from None
    assert all(ln.get("status") == "200" and ln.get("method") == "CONNECT" and
               ln.get("via") == "proxy" for ln in lines), lines
    # The registry saw the pull (and nothing was intercepted: it's the registry's TLS).
    reg_log = open(REG.log_path, errors="replace").read()
    for dg in IMG.layers:
        assert "/v2/library/alpine/blobs/%s" % dg in reg_log, "registry never served " + dg


def test_skopeo_pull_twice_same_digests():
    rp = start_proxy()
    outs = []
    for i in range(2):
        out = os.path.join(h.tmpdir(), "out%d" % i)
        pull(rp, out)
        outs.append(h.layout_blobs(out))
    assert outs[0] == outs[1] and outs[0][1] == IMG.blobs


def test_skopeo_inspect_through_proxy():
    rp = start_proxy()
    p = h.skopeo(["inspect", "--raw", "--cert-dir", CA.certdir,
                  "docker://registry-1.docker.io/library/alpine:3.18"],
                 env={"HTTPS_PROXY": rp.url})
    assert h.sha256(p.stdout) == IMG.manifest.split(":")[1], p.stdout[:200]


def test_registry_down_fails_cleanly():
    # With the upstream gone, a tunnelled (non-MITM) pull fails with regproxy's 502,
    # and regproxy stays up.
    rp = h.Regproxy(["--mitm", "", "--connect-to",
                     "registry-1.docker.io:443:127.0.0.1:%d" % h.free_port()])
    p = h.skopeo(["copy", "--src-cert-dir", CA.certdir,
                  "docker://registry-1.docker.io/library/alpine:3.18",
                  "oci:%s:3.18" % os.path.join(h.tmpdir(), "out")],
                 env={"HTTPS_PROXY": rp.url}, check=False)
    assert p.returncode != 0, "pull succeeded with the registry down"
    err = p.stderr.decode(errors="replace")
    assert "502" in err or "Bad Gateway" in err, "skopeo did not see a 502: " + err[-800:]
    rp.wait_log(route="tunnel", host="registry-1.docker.io", status="502")
    assert rp.alive()


if __name__ == "__main__":
    h.main(globals())
