"""`regproxy setup docker|containerd|podman [--dry-run] [--root DIR]` (contract §1, §4): the
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
        "etc/docker/certs.d/ghcr.io/regproxy.crt",
        "etc/docker/certs.d/registry.lan:5000/regproxy.crt",
        "etc/systemd/system/docker.service.d/http-proxy.conf",
        "usr/local/share/ca-certificates/regproxy.crt"]), files_under(root)
    assert read(root, "/etc/docker/certs.d/ghcr.io/regproxy.crt") == pem
    assert "beside the registry's own ca.crt" in out, out
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
        assert read(root, "/etc/containers/certs.d/%s/regproxy.crt" % host) == pem


MIRROR_MITM = "registry-1.docker.io,index.docker.io,GHCR.io,registry.lan:5000,.pkg.dev,*.corp.example,10.0.0.0/8,192.168.1.9:5000"


def hosts_toml(server, url="http://127.0.0.1:2080"):
    return ("# Written by `regproxy setup` containerd --mirror; regproxy owns this file.\n"
            'server = "%s"\n\n[host."%s"]\n  capabilities = ["pull", "resolve"]\n' % (server, url))


def test_containerd_mirror_hosts_toml_without_a_ca():
    root = h.tmpdir()
    rc, out, err, ca_dir = setup_cmd("containerd", root, "--mirror", "--mitm", MIRROR_MITM,
                                     "--listen", "0.0.0.0:3128", "--listen", "127.0.0.1:2081",
                                     check=0)
    certs = "etc/containerd/certs.d/"
    # Concrete registry hosts only; Docker Hub's aliases share the docker.io directory.
    assert files_under(root) == sorted(certs + d + "/hosts.toml" for d in
                                       ("docker.io", "ghcr.io", "registry.lan:5000")), (
        files_under(root), out)
    url = "http://127.0.0.1:3128"  # the first listener, a wildcard as loopback
    assert read(root, certs + "docker.io/hosts.toml") == hosts_toml(
        "https://registry-1.docker.io", url)
    assert read(root, certs + "ghcr.io/hosts.toml") == hosts_toml("https://ghcr.io", url)
    assert read(root, certs + "registry.lan:5000/hosts.toml") == hosts_toml(
        "https://registry.lan:5000", url)
    for entry, why in ((".pkg.dev", "subdomain pattern"), ("*.corp.example", "subdomain pattern"),
                       ("10.0.0.0/8", "IP or CIDR"), ("192.168.1.9:5000", "IP or CIDR")):
        assert re.search(r"skipped mitm entry %s: .*%s" % (re.escape(entry), why), out), out
    # No CA: nothing created, nothing in the trust store, no proxy drop-in.
    assert not os.path.exists(ca_dir), os.listdir(ca_dir)
    # containerd has no config.toml under root: the lines to create it.
    assert 'config.toml does not exist' in out, out
    assert ('[plugins."io.containerd.grpc.v1.cri".registry]\n'
            '  config_path = "/etc/containerd/certs.d"\n') in out, out
    before = {f: os.stat(os.path.join(root, f)).st_mtime_ns for f in files_under(root)}
    rc, out, err, _ = setup_cmd("containerd", root, "--mirror", "--mitm", MIRROR_MITM,
                                "--listen", "0.0.0.0:3128", check=0)
    assert "wrote" not in out and out.count("unchanged") == 3, out
    assert {f: os.stat(os.path.join(root, f)).st_mtime_ns for f in files_under(root)} == before


def test_containerd_mirror_config_path_check():
    cases = [
        # (config.toml, set?, table printed when not set)
        ('version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n'
         '  config_path = "/etc/containerd/certs.d"\n', True, None),
        ('version = 3\n[plugins."io.containerd.cri.v1.images".registry]\n'
         "  config_path = '/etc/containerd/certs.d:/etc/docker/certs.d'\n", True, None),
        ('version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n'
         '  # config_path = "/etc/containerd/certs.d"\n  config_path = ""\n', False,
         'plugins."io.containerd.grpc.v1.cri".registry'),
        ('version = 3\nroot = "/var/lib/containerd"\n', False,
         'plugins."io.containerd.cri.v1.images".registry'),
        ('root = "/var/lib/containerd"\n', False, "plugins.cri.registry"),
    ]
    for conf, is_set, table in cases:
        root = h.tmpdir()
        h.write_file(os.path.join(root, "etc/containerd/config.toml"), conf)
        rc, out, err, _ = setup_cmd("containerd", root, "--mirror", "--mitm", "ghcr.io", check=0)
        assert read(root, "/etc/containerd/config.toml") == conf  # never edited
        if is_set:
            assert "sets config_path" in out and "add" not in out, (conf, out)
        else:
            assert "sets no config_path" in out, (conf, out)
            assert '\n[%s]\n  config_path = "/etc/containerd/certs.d"\n' % table in out, (conf, out)


def test_containerd_mirror_leaves_a_foreign_hosts_toml_alone():
    root = h.tmpdir()
    mine = 'server = "https://ghcr.io"\n[host."https://mirror.corp:5000"]\n  capabilities = ["pull"]\n'
    path = os.path.join(root, "etc/containerd/certs.d/ghcr.io/hosts.toml")
    h.write_file(path, mine)
    rc, out, err, _ = setup_cmd("containerd", root, "--mirror", "--mitm", "ghcr.io,quay.io", check=1)
    assert "ghcr.io/hosts.toml exists and was not written by regproxy" in err, err
    assert '[host."http://127.0.0.1:2080"]' in err, err  # the lines to merge
    assert read(root, "/etc/containerd/certs.d/ghcr.io/hosts.toml") == mine
    assert read(root, "/etc/containerd/certs.d/quay.io/hosts.toml") == hosts_toml("https://quay.io")


def test_containerd_mirror_dry_run_and_usage():
    root = h.tmpdir()
    rc, out, err, _ = setup_cmd("containerd", root, "--mirror", "--dry-run", "--mitm", "quay.io",
                                check=0)
    assert "would write" in out and 'server = "https://quay.io"' in out, out
    assert files_under(root) == [] and not os.path.exists(os.path.join(root, "var-lib-regproxy-ca"))
    for engine in ("docker", "podman"):
        rc, out, err, _ = setup_cmd(engine, root, "--mirror", check=2)
        assert "--mirror is for containerd" in err, err


def test_usage_errors():
    root = h.tmpdir()
    for args in ([], ["rkt"], ["docker", "extra"]):
        p = h.run([h.regproxy_bin(), "setup"] + args + ["--root", root], check=False)
        assert p.returncode == 2, (args, p)
        assert b"usage: regproxy setup" in p.stderr


if __name__ == "__main__":
    h.main(globals())
