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


def test_ctr_pull_through_setup_containerd_mirror_then_from_the_cache():
    """`regproxy setup containerd --mirror` writes the hosts.toml: ctr, with no proxy
    environment and no CA, pulls through it, and a second pull (after the image and its
    content are removed from containerd, so it fetches again) is served from regproxy's
    cache."""
    img = h.OciImage(os.path.join(h.tmpdir(), "deb"), tag="2", layer_sizes=(6000, 150 * 1024))
    h.skopeo(["copy", "--dest-cert-dir", CA.certdir, "oci:%s:2" % img.path,
              "docker://127.0.0.1:%d/library/debian:2" % REG.port])
    root = h.tmpdir()
    p = h.run([h.regproxy_bin(), "setup", "containerd", "--mirror", "--root", root,
               "--mitm", HOST, "--listen", RP.url[len("http://"):],
               "--ca-dir", os.path.join(root, "no-ca")], env=h.clean_env(HOME=root))
    assert b"wrote" in p.stdout and not os.path.exists(os.path.join(root, "no-ca")), p.stdout
    hosts_dir = os.path.join(root, "etc", "containerd", "certs.d")
    assert os.listdir(hosts_dir) == ["docker.io"], os.listdir(hosts_dir)

    def pull(ns):
        seen = len(RP.request_logs(via="mirror"))
        h.run(["ctr", "-a", SOCK, "-n", ns, "images", "pull", "--snapshotter", "native",
               "--hosts-dir", hosts_dir, "docker.io/library/debian:2"], timeout=180,
              env=h.clean_env())
        p = h.run(["ctr", "-a", SOCK, "-n", ns, "images", "ls"])
        assert img.manifest in p.stdout.decode(), p.stdout
        lines = [ln for ln in RP.request_logs(via="mirror")[seen:]
                 if "/library/debian/blobs/" in ln.get("path", "")]
        assert all("ns=docker.io" in ln["path"] for ln in lines), lines
        return {ln["path"].split("?")[0].rsplit("/", 1)[-1]: ln.get("cache") for ln in lines
                if ln.get("status") == "200"}

    first = pull("setup")
    assert set(img.layers) <= set(first), "layers not fetched through the mirror: %s" % first
    assert all(first[dg] != "hit" for dg in img.layers), first
    h.run(["ctr", "-a", SOCK, "-n", "setup", "images", "rm", "--sync",
           "docker.io/library/debian:2"])
    h.run(["ctr", "-a", SOCK, "-n", "setup", "content", "rm"] + sorted(img.blobs | {img.manifest}))
    second = pull("setup")
    assert set(img.layers) <= set(second), "second pull fetched no layers: %s" % second
    assert all(second[dg] == "hit" for dg in img.layers), second


if __name__ == "__main__":
    h.main(globals())
