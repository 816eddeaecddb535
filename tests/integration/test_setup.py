"""`regproxy setup docker|containerd|podman [--dry-run] [--root DIR]` (SPEC §1, §4): the
proxy drop-in and the CA where each engine looks, written under --root as if it were /,
idempotent, never over a file regproxy did not write, nothing written with --dry-run."""

import os
import re

import harness as h


def setup_cmd(engine, root, *extra, check=None):
    d = h.tmpdir()
    ca_dir = os.path.join(root, "var-lib-regproxy-ca")
    argv = [h.regproxy_bin(), "setup", engine, "--root", root, "--ca-dir", ca_dir] + list(extra)
    p = h.run(argv, check=False, env=h.clean_env(HOME=d))
    out, err = p.stdout.decode(), p.stderr.decode()
    if check is not None:
        assert p.returncode == check, (p.returncode, out, err)
    return p.returncode, out, err, ca_dir


def ca_pem(ca_dir):
    return h.run([h.regproxy_bin(), "ca", "cert", "--ca-dir", ca_dir]).stdout.decode()


def read(root, path):
    with open(os.path.join(root, path.lstrip("/"))) as f:
        return f.read()


def files_under(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root)
                  for f in fs if "var-lib-regproxy-ca" not in d)


def test_docker_files_and_idempotence():
    root = h.tmpdir()
    rc, out, err, ca_dir = setup_cmd("docker", root, "--mitm",
                                     "registry-1.docker.io,GHCR.io,registry.lan:5000,.pkg.dev",
                                     "--listen", "0.0.0.0:3128", "--allow", "10.0.0.0/8",
                                     "--no-proxy", "internal.example", check=0)
    conf = read(root, "/etc/systemd/system/docker.service.d/http-proxy.conf")
    assert "[Service]" in conf, conf
    env = dict(re.findall(r'"(\w+)=([^"]*)"', conf))
    assert env == {"HTTP_PROXY": "http://127.0.0.1:3128", "HTTPS_PROXY": "http://127.0.0.1:3128",
                   "NO_PROXY": "localhost,127.0.0.0/8,::1,internal.example"}, env
    pem = ca_pem(ca_dir)
    assert read(root, "/usr/local/share/ca-certificates/regproxy.crt") == pem
    # certs.d for the registries dockerd reads it for: not Docker Hub, not suffix entries.
    assert files_under(root) == sorted([
        "etc/docker/certs.d/ghcr.io/ca.crt", "etc/docker/certs.d/registry.lan:5000/ca.crt",
        "etc/systemd/system/docker.service.d/http-proxy.conf",
        "usr/local/share/ca-certificates/regproxy.crt"]), files_under(root)
    assert read(root, "/etc/docker/certs.d/ghcr.io/ca.crt") == pem
    assert "systemctl daemon-reload && systemctl restart docker" in out
    before = {f: os.stat(os.path.join(root, f)).st_mtime_ns for f in files_under(root)}
    rc, out, err, _ = setup_cmd("docker", root, "--mitm",
                                "registry-1.docker.io,GHCR.io,registry.lan:5000,.pkg.dev",
                                "--listen", "0.0.0.0:3128", "--allow", "10.0.0.0/8",
                                "--no-proxy", "internal.example", check=0)
    assert "wrote" not in out and "restart" not in out, out
    assert {f: os.stat(os.path.join(root, f)).st_mtime_ns for f in files_under(root)} == before


def test_a_file_regproxy_did_not_write_is_left_alone():
    root = h.tmpdir()
    mine = "[Service]\nEnvironment=\"HTTPS_PROXY=http://corp-proxy:8080\"\n"
    h.write_file(os.path.join(root, "etc/systemd/system/docker.service.d/http-proxy.conf"), mine)
    rc, out, err, _ = setup_cmd("docker", root, check=1)
    assert "http-proxy.conf exists and was not written by regproxy" in err, err
    assert read(root, "/etc/systemd/system/docker.service.d/http-proxy.conf") == mine


def test_dry_run_writes_nothing():
    root = h.tmpdir()
    h.run([h.regproxy_bin(), "ca", "init", "--ca-dir", os.path.join(root, "var-lib-regproxy-ca")])
    rc, out, err, _ = setup_cmd("containerd", root, "--dry-run", check=0)
    assert "would write" in out and "HTTPS_PROXY=http://127.0.0.1:2080" in out, out
    assert files_under(root) == [], files_under(root)


def test_containerd_and_podman():
    root = h.tmpdir()
    rc, out, err, ca_dir = setup_cmd("containerd", root, check=0)
    conf = read(root, "/etc/systemd/system/containerd.service.d/http-proxy.conf")
    assert '"HTTPS_PROXY=http://127.0.0.1:2080"' in conf, conf
    assert "systemctl daemon-reload && systemctl restart containerd" in out
    assert not [f for f in files_under(root) if "certs.d" in f]
    root = h.tmpdir()
    rc, out, err, ca_dir = setup_cmd("podman", root, "--mitm", "registry-1.docker.io,quay.io",
                                     check=0)
    conf = read(root, "/etc/containers/containers.conf.d/regproxy.conf")
    assert "[engine]" in conf and '"HTTPS_PROXY=http://127.0.0.1:2080"' in conf, conf
    pem = ca_pem(ca_dir)
    # podman reads certs.d for Docker Hub too.
    for host in ("registry-1.docker.io", "quay.io"):
        assert read(root, "/etc/containers/certs.d/%s/ca.crt" % host) == pem


def test_usage_errors():
    root = h.tmpdir()
    for args in ([], ["rkt"], ["docker", "extra"]):
        p = h.run([h.regproxy_bin(), "setup"] + args + ["--root", root], check=False)
        assert p.returncode == 2, (args, p)
        assert b"usage: regproxy setup" in p.stderr


if __name__ == "__main__":
    h.main(globals())
