"""containerd's ctr as a third client through regproxy's MITM (TESTING.md): ctr fetches
client-side, keeps connections alive and fetches all layers at once; it trusts
regproxy's CA via --tlscacert."""

import os
import shutil

import harness as h

HOST = "registry-1.docker.io"


def setup():
    global CA, REG, IMG, RP, SOCK
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        raise h.Skip("containerd/ctr not installed (apt-get install containerd)")
    CA = h.shared_ca()
    REG = h.Registry()
    IMG = h.OciImage(os.path.join(h.tmpdir(), "src"), layer_sizes=(4096, 300 * 1024, 2000))
    h.skopeo(["copy", "--dest-cert-dir", CA.certdir, "oci:%s:3.18" % IMG.path,
              "docker://127.0.0.1:%d/library/alpine:3.18" % REG.port])
    RP = h.Regproxy(["--mitm", HOST, "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, REG.port),
                     "--upstream-ca", CA.ca_crt])
    d = h.tmpdir("rpit-containerd-")
    SOCK = os.path.join(d, "containerd.sock")
    conf = h.write_file(os.path.join(d, "config.toml"),
                        'version = 2\nroot = "%s/root"\nstate = "%s/state"\n'
                        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
                        '[grpc]\n  address = "%s"\n' % (d, d, SOCK))
    log = os.path.join(d, "containerd.log")
    proc = h.Proc(["containerd", "--config", conf], name="containerd", env=h.clean_env(),
                  stdout=log, stderr=log)
    h.defer(lambda: proc.stop(timeout=10))
    h.wait_until(lambda: h.run(["ctr", "-a", SOCK, "version"], check=False).returncode == 0,
                 30, "containerd answering")


def test_ctr_pull_through_mitm():
    p = h.run(["ctr", "-a", SOCK, "-n", "test", "images", "pull", "--snapshotter", "native",
               "--tlscacert", os.path.join(RP.dir, "ca", "ca.crt"),
               "docker.io/library/alpine:3.18"], timeout=180,
              env=h.clean_env(HTTPS_PROXY=RP.url, HTTP_PROXY=RP.url))
    p = h.run(["ctr", "-a", SOCK, "-n", "test", "images", "ls"])
    assert IMG.manifest in p.stdout.decode(), p.stdout
    lines = RP.request_logs(route="mitm", host=HOST, method="GET")
    got = {ln.get("path", "").rsplit("/", 1)[-1] for ln in lines}
    assert set(IMG.layers) <= got, "layers not fetched through MITM: %s" % (
        set(IMG.layers) - got)
    assert all(ln.get("status") in ("200", "307") for ln in lines), lines


def test_ctr_pull_through_mirror_hosts_toml():
    """containerd's hosts.toml mirror (no proxy environment, no CA): ctr sends
    ?ns=docker.io to regproxy's plain-HTTP listener, which fetches and caches."""
    img = h.OciImage(os.path.join(h.tmpdir(), "bb"), tag="1", layer_sizes=(5000, 200 * 1024))
    h.skopeo(["copy", "--dest-cert-dir", CA.certdir, "oci:%s:1" % img.path,
              "docker://127.0.0.1:%d/library/busybox:1" % REG.port])
    d = h.tmpdir()
    os.makedirs(os.path.join(d, "docker.io"))
    h.write_file(os.path.join(d, "docker.io", "hosts.toml"),
                 'server = "https://registry-1.docker.io"\n'
                 '[host."%s"]\n  capabilities = ["pull", "resolve"]\n' % RP.url)
    h.run(["ctr", "-a", SOCK, "-n", "mirror", "images", "pull", "--snapshotter", "native",
           "--hosts-dir", d, "docker.io/library/busybox:1"], timeout=180, env=h.clean_env())
    p = h.run(["ctr", "-a", SOCK, "-n", "mirror", "images", "ls"])
    assert img.manifest in p.stdout.decode(), p.stdout
    lines = RP.request_logs(via="mirror", method="GET")
    assert lines and all("ns=docker.io" in ln["path"] for ln in lines), lines
    got = {ln["path"].split("?")[0].rsplit("/", 1)[-1] for ln in lines
           if ln.get("status") == "200"}
    assert set(img.layers) <= got, "layers not fetched through the mirror: %s" % lines


if __name__ == "__main__":
    h.main(globals())
