"""A CA that can only sign registries (issue 8): a new CA carries a critical
nameConstraints extension permitting just the mitm hosts, so its key cannot impersonate
any other site. Seen from Go (skopeo, the crypto/x509 of dockerd and containerd) and
OpenSSL (curl): leaves regproxy mints inside the constraints are accepted, for names and
IP literals; a leaf for www.bank.example signed with the same CA key is refused, while
the same leaf from a CA made with --unconstrained gets through. `run` refuses (exit 2) a
mitm list the CA does not cover, names the way out, and a SIGHUP that widens mitm is
refused; `ca init --force` re-issues the CA for the new list."""

import os
import secrets
import signal
import socket
import ssl
import subprocess
import threading

import harness as h

HOST = "registry-1.docker.io"
IP_REGISTRY = "10.20.30.40"  # no such host: --connect-to maps it to the registry
BANK = "www.bank.example"


def setup():
    global CA, REG, IMG
    # The registry's certificate also names IP_REGISTRY, so regproxy's upstream
    # fetches verify it when the registry is reached as an IP literal.
    CA = h.TestCA(ips=("127.0.0.1", "::1", IP_REGISTRY))
    REG = h.Registry(ca=CA)
    IMG = h.OciImage(os.path.join(h.tmpdir(), "src"), layer_sizes=(4096, 300 * 1024))
    h.skopeo(["copy", "--dest-cert-dir", CA.certdir, "oci:%s:3.18" % IMG.path,
              "docker://127.0.0.1:%d/library/alpine:3.18" % REG.port])


# ---- helpers --------------------------------------------------------------------------

def regproxy(args, check=True):
    """A regproxy subcommand with no config file; returns the CompletedProcess."""
    home = h.tmpdir("rpit-home-")
    p = subprocess.run([h.regproxy_bin(), "--config", ""] + list(args), capture_output=True,
                       timeout=30, env=h.clean_env(HOME=home))
    if check and p.returncode != 0:
        raise AssertionError("regproxy %r: exit %d\n%s" % (args, p.returncode,
                                                          p.stderr.decode(errors="replace")))
    return p


def ca_text(ca_dir):
    return h.run(["openssl", "x509", "-noout", "-text", "-in",
                  os.path.join(ca_dir, "ca.crt")]).stdout.decode()


def constraints(ca_dir):
    """The Name Constraints section of `openssl x509 -text`, or None."""
    lines = ca_text(ca_dir).splitlines()
    for i, ln in enumerate(lines):
        if "X509v3 Name Constraints" in ln:
            out = [ln.strip()]
            for more in lines[i + 1:]:
                if not more.startswith(" " * 16):
                    break
                out.append(more.strip())
            return out
    return None


def certdir_of(ca_dir):
    """A skopeo --cert-dir trusting only this CA (what a client that trusts it has)."""
    d = h.tmpdir()
    with open(os.path.join(ca_dir, "ca.crt")) as f:
        h.write_file(os.path.join(d, "ca.crt"), f.read())
    return d


def mitm_proxy(mitm, *extra, ca_dir=None):
    args = ["--mitm", mitm, "--upstream-ca", CA.ca_crt,
            "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, REG.port),
            "--connect-to", "%s:443:127.0.0.1:%d" % (IP_REGISTRY, REG.port)]
    if ca_dir:
        args += ["--ca-dir", ca_dir]
    return h.Regproxy(args + list(extra))


def sign_leaf(ca_dir, name):
    """A leaf for name signed with the key of the CA in ca_dir, by the openssl CLI (what
    a thief holding ca.key could do). Nothing is written into ca_dir."""
    d = h.tmpdir("rpit-leaf-")
    key, csr, crt = (os.path.join(d, n) for n in ("leaf.key", "leaf.csr", "leaf.crt"))
    ext = h.write_file(os.path.join(d, "leaf.ext"),
                       "basicConstraints=critical,CA:FALSE\n"
                       "keyUsage=critical,digitalSignature\n"
                       "extendedKeyUsage=serverAuth\n"
                       "subjectAltName=DNS:%s\n" % name)
    h.run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
           "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=%s" % name])
    h.run(["openssl", "x509", "-req", "-in", csr, "-CA", os.path.join(ca_dir, "ca.crt"),
           "-CAkey", os.path.join(ca_dir, "ca.key"), "-set_serial",
           "0x" + secrets.token_hex(16), "-days", "2", "-extfile", ext, "-out", crt])
    return crt, key


class TlsServer:
    """HTTPS on a free loopback port with the given leaf: GET /v2/ answers 200 {} like a
    registry's ping, anything else 404. .requests holds the request lines seen."""

    def __init__(self, crt, key):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(crt, key)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.requests = []
        threading.Thread(target=self._serve, daemon=True).start()
        h.defer(self.sock.close)

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(c,), daemon=True).start()

    def _handle(self, c):
        c.settimeout(10)
        try:
            t = self.ctx.wrap_socket(c, server_side=True)
            head = b""
            while b"\r\n\r\n" not in head:
                b = t.recv(4096)
                if not b:
                    return
                head += b
            line = head.split(b"\r\n", 1)[0].decode(errors="replace")
            self.requests.append(line)
            ok = line.startswith("GET /v2/ ")
            body = b"{}" if ok else b""
            t.sendall(b"HTTP/1.1 %s\r\nContent-Type: application/json\r\n"
                      b"Docker-Distribution-API-Version: registry/2.0\r\n"
                      b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (
                          b"200 OK" if ok else b"404 Not Found", len(body), body))
            t.close()
        except (OSError, ssl.SSLError):
            pass
        finally:
            c.close()


def inspect_via(rp, ref, certdir):
    return h.skopeo(["inspect", "--raw", "--cert-dir", certdir, ref],
                    env={"HTTPS_PROXY": rp.url, "https_proxy": rp.url}, check=False)


# ---- tests ----------------------------------------------------------------------------

def test_new_ca_names_the_mitm_hosts():
    rp = mitm_proxy("%s,registry.lan:5000,.pkg.dev,10.20.0.0/16,[2001:db8::1]:443" % HOST)
    nc = constraints(os.path.join(rp.dir, "ca"))
    assert nc is not None, "no nameConstraints:\n" + ca_text(os.path.join(rp.dir, "ca"))
    assert nc[0].endswith("critical"), nc
    assert nc[1:] == ["Permitted:", "DNS:%s" % HOST, "DNS:registry.lan", "DNS:pkg.dev",
                      "IP:10.20.0.0/255.255.0.0",
                      "IP:2001:DB8:0:0:0:0:0:1/FFFF:FFFF:FFFF:FFFF:FFFF:FFFF:FFFF:FFFF"], nc
    assert not rp.find_logs(msg="the CA has no name constraints: it can sign for any host")

    # Interception off (--mitm ''): a CA for the default list; without IP entries every
    # IP literal is excluded.
    d = os.path.join(h.tmpdir(), "ca")
    out = regproxy(["ca", "init", "--ca-dir", d, "--mitm", ""])
    assert out.stdout.decode() == os.path.join(d, "ca.crt") + "\n", out
    nc = constraints(d)
    assert nc[0].endswith("critical") and "DNS:%s" % HOST in nc and "DNS:ghcr.io" in nc, nc
    assert nc[-3:] == ["Excluded:", "IP:0.0.0.0/0.0.0.0",
                       "IP:0:0:0:0:0:0:0:0/0:0:0:0:0:0:0:0"], nc
    # Key 0600, directory 0700, nothing else on disk.
    assert oct(os.stat(d).st_mode & 0o777) == "0o700"
    assert oct(os.stat(os.path.join(d, "ca.key")).st_mode & 0o777) == "0o600"
    assert sorted(os.listdir(d)) == ["ca.crt", "ca.key"], os.listdir(d)


def test_go_and_openssl_accept_leaves_inside():
    rp = mitm_proxy(HOST)
    certdir = certdir_of(os.path.join(rp.dir, "ca"))
    out = os.path.join(h.tmpdir(), "out")
    h.skopeo(["copy", "--src-cert-dir", certdir, "docker://%s/library/alpine:3.18" % HOST,
              "oci:%s:3.18" % out], env={"HTTPS_PROXY": rp.url, "https_proxy": rp.url})
    mdg, blobs = h.layout_blobs(out)
    assert mdg == IMG.manifest and blobs == IMG.blobs, (mdg, blobs)
    assert rp.request_logs(route="mitm", host=HOST, method="GET")
    r = h.curl(["-x", rp.url, "--cacert", os.path.join(rp.dir, "ca", "ca.crt"), "-o",
                "/dev/null", "-w", "%{http_code}", "https://%s/v2/" % HOST])
    assert r.returncode == 0 and r.stdout == b"200", (r.returncode, r.stdout, r.stderr)


def test_ip_registry_inside_the_constraints():
    # An IP-only mitm list: the CA permits that address and excludes every DNS name.
    rp = mitm_proxy(IP_REGISTRY)
    ca_dir = os.path.join(rp.dir, "ca")
    nc = constraints(ca_dir)
    assert nc[1:] == ["Permitted:", "IP:%s/255.255.255.255" % IP_REGISTRY, "Excluded:",
                      "DNS:"], nc
    out = os.path.join(h.tmpdir(), "out")
    h.skopeo(["copy", "--src-cert-dir", certdir_of(ca_dir),
              "docker://%s/library/alpine:3.18" % IP_REGISTRY, "oci:%s:3.18" % out],
             env={"HTTPS_PROXY": rp.url, "https_proxy": rp.url})
    assert h.layout_blobs(out)[1] == IMG.blobs
    assert rp.request_logs(route="mitm", host=IP_REGISTRY, method="GET")
    # OpenSSL too: the IP leaf has no CN that it would check as a DNS name.
    r = h.curl(["-x", rp.url, "--cacert", os.path.join(ca_dir, "ca.crt"), "-o", "/dev/null",
                "-w", "%{http_code}", "https://%s/v2/" % IP_REGISTRY])
    assert r.returncode == 0 and r.stdout == b"200", (r.returncode, r.stdout, r.stderr)
    # Every name is outside this CA: Go reads the excluded empty dNSName as all names.
    server = TlsServer(*sign_leaf(ca_dir, HOST))
    tunnel = h.Regproxy(["--mitm", "", "--connect-to",
                         "%s:443:127.0.0.1:%d" % (HOST, server.port)])
    p = inspect_via(tunnel, "docker://%s/library/alpine:3.18" % HOST, certdir_of(ca_dir))
    err = p.stderr.decode(errors="replace")
    assert p.returncode != 0 and "is excluded by constraint" in err, err
    assert not server.requests, server.requests


def test_leaf_outside_is_refused_by_go_and_openssl():
    rp = mitm_proxy(HOST)
    ca_dir = os.path.join(rp.dir, "ca")
    bank = TlsServer(*sign_leaf(ca_dir, BANK))
    # The bank is not in mitm: the CONNECT is tunnelled to the stand-in server, which
    # presents a leaf signed with regproxy's CA key.
    tunnel = h.Regproxy(["--mitm", "", "--connect-to", "%s:443:127.0.0.1:%d" % (BANK, bank.port)])
    p = inspect_via(tunnel, "docker://%s/library/alpine:3.18" % BANK, certdir_of(ca_dir))
    err = p.stderr.decode(errors="replace")
    assert p.returncode != 0, "skopeo accepted a leaf for %s: %s" % (BANK, p.stdout)
    assert "not authorized to sign for this name" in err and BANK in err, err
    assert not bank.requests, bank.requests
    r = h.curl(["-x", tunnel.url, "--cacert", os.path.join(ca_dir, "ca.crt"),
                "https://%s/v2/" % BANK])
    assert r.returncode == 60 and b"subtree violation" in r.stderr, (r.returncode, r.stderr)
    assert not bank.requests, bank.requests

    # The control: the same kind of leaf from a CA made with --unconstrained passes TLS
    # in both (the stand-in answers /v2/ and has no image).
    loose = os.path.join(h.tmpdir(), "ca")
    regproxy(["ca", "init", "--unconstrained", "--ca-dir", loose])
    assert constraints(loose) is None, ca_text(loose)
    bank2 = TlsServer(*sign_leaf(loose, BANK))
    tunnel2 = h.Regproxy(["--mitm", "",
                          "--connect-to", "%s:443:127.0.0.1:%d" % (BANK, bank2.port)])
    p = inspect_via(tunnel2, "docker://%s/library/alpine:3.18" % BANK, certdir_of(loose))
    err = p.stderr.decode(errors="replace")
    assert p.returncode != 0 and "x509" not in err, err
    assert "GET /v2/ HTTP/1.1" in bank2.requests, bank2.requests
    r = h.curl(["-x", tunnel2.url, "--cacert", os.path.join(loose, "ca.crt"), "-o",
                "/dev/null", "-w", "%{http_code}", "https://%s/v2/" % BANK])
    assert r.returncode == 0 and r.stdout == b"200", (r.returncode, r.stderr)


def test_run_refuses_a_host_outside_the_ca():
    d = h.tmpdir()
    ca_dir = os.path.join(d, "ca")
    regproxy(["ca", "init", "--ca-dir", ca_dir, "--mitm", HOST])
    before = open(os.path.join(ca_dir, "ca.crt")).read()
    base = ["--ca-dir", ca_dir, "--cache-dir", os.path.join(d, "cache"), "--config", "",
            "--listen", "127.0.0.1:%d" % h.free_port()]
    rc, err = h.run_regproxy_expect_exit(base + ["--mitm", "%s,registry.lan:5000" % HOST])
    assert rc == 2, (rc, err)
    for want in ('mitm entry "registry.lan:5000" is outside the name constraints of the CA '
                 'in %s/ca.crt (it may sign only for %s)' % (ca_dir, HOST),
                 "regproxy ca init --force", "--unconstrained", "regproxy setup docker",
                 "update-ca-certificates"):
        assert want in err, "stderr lacks %r:\n%s" % (want, err)
    rc, err = h.run_regproxy_expect_exit(base + ["--mitm", "*"])
    assert rc == 2 and 'mitm entry "*" matches every host' in err, (rc, err)
    # An IP registry is outside too: the CA excludes every address.
    rc, err = h.run_regproxy_expect_exit(base + ["--mitm", "10.0.0.5:5000"])
    assert rc == 2 and "(they exclude 0.0.0.0/0)" in err, (rc, err)
    # setup would hand clients the same CA: refused alike.
    p = regproxy(["setup", "docker", "--root", os.path.join(d, "root"), "--ca-dir", ca_dir,
                  "--mitm", "%s,registry.lan:5000" % HOST], check=False)
    assert p.returncode == 2 and b"registry.lan:5000" in p.stderr, p
    assert not os.path.exists(os.path.join(d, "root", "etc")), "setup wrote files"
    # Nothing was changed by the refusals.
    assert open(os.path.join(ca_dir, "ca.crt")).read() == before
    assert sorted(os.listdir(ca_dir)) == ["ca.crt", "ca.key"]

    # The way out: a new CA for the new list, which run then accepts.
    p = regproxy(["ca", "init", "--force", "--ca-dir", ca_dir, "--mitm",
                  "%s,registry.lan:5000" % HOST])
    assert b"must trust this one instead" in p.stderr, p.stderr
    assert open(os.path.join(ca_dir, "ca.crt")).read() != before
    assert oct(os.stat(os.path.join(ca_dir, "ca.key")).st_mode & 0o777) == "0o600"
    assert constraints(ca_dir)[1:] == ["Permitted:", "DNS:%s" % HOST, "DNS:registry.lan",
                                       "Excluded:", "IP:0.0.0.0/0.0.0.0",
                                       "IP:0:0:0:0:0:0:0:0/0:0:0:0:0:0:0:0"]
    rp = h.Regproxy(["--ca-dir", ca_dir, "--mitm", "%s,registry.lan:5000" % HOST])
    assert rp.alive()


def test_sighup_cannot_widen_mitm_past_the_ca():
    d = h.tmpdir()
    conf = h.write_file(os.path.join(d, "rp.yml"), "mitm: \"%s\"\n" % HOST)
    rp = h.Regproxy(["--config", conf, "--upstream-ca", CA.ca_crt,
                     "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, REG.port)],
                    mitm_flag=False)
    h.write_file(conf, "mitm: \"%s,ghcr.io\"\n" % HOST)
    rp.signal(signal.SIGHUP)
    line = rp.wait_log(level="error")
    assert line["msg"].startswith("reload failed, keeping the running configuration: mitm "
                                  "entry \"ghcr.io\" is outside"), line
    assert not rp.find_logs(msg="configuration reloaded")
    # Still serving: HOST is intercepted, ghcr.io is not.
    r = h.curl(["-x", rp.url, "--cacert", os.path.join(rp.dir, "ca", "ca.crt"), "-o",
                "/dev/null", "-w", "%{http_code}", "https://%s/v2/" % HOST])
    assert r.returncode == 0 and r.stdout == b"200", (r.returncode, r.stderr)
    # Narrowing (or keeping) what the CA covers reloads as usual.
    h.write_file(conf, "mitm: \"%s:443\"\n" % HOST)
    rp.signal(signal.SIGHUP)
    rp.wait_log(msg="configuration reloaded")


def test_unconstrained_ca_takes_any_mitm_list():
    d = h.tmpdir()
    ca_dir = os.path.join(d, "ca")
    regproxy(["ca", "init", "--unconstrained", "--ca-dir", ca_dir, "--mitm", ""])
    assert constraints(ca_dir) is None
    rp = h.Regproxy(["--ca-dir", ca_dir, "--mitm", "*"])
    rp.wait_log(msg="the CA has no name constraints: it can sign for any host")
    rp.stop()
    rp = mitm_proxy("%s,anything.example,10.0.0.0/8" % HOST, ca_dir=ca_dir)
    out = os.path.join(h.tmpdir(), "out")
    h.skopeo(["copy", "--src-cert-dir", certdir_of(ca_dir),
              "docker://%s/library/alpine:3.18" % HOST, "oci:%s:3.18" % out],
             env={"HTTPS_PROXY": rp.url, "https_proxy": rp.url})
    assert h.layout_blobs(out)[1] == IMG.blobs
    # ca init on it stays as it is; --unconstrained on a constrained CA needs --force.
    regproxy(["ca", "init", "--ca-dir", ca_dir, "--mitm", "*"])
    d2 = os.path.join(d, "ca2")
    regproxy(["ca", "init", "--ca-dir", d2])
    p = regproxy(["ca", "init", "--unconstrained", "--ca-dir", d2], check=False)
    assert p.returncode == 2 and b"add --force" in p.stderr, p


if __name__ == "__main__":
    h.main(globals())
