"""Self-hosted registries behind the MITM (issue 15, contract §4 --upstream-certs-dir):
regproxy trusts and presents, upstream, what the engines' certs.d holds for a registry.
A distribution registry with a self-signed CA that only a temp certs.d knows, one that
requires client certificates (http.tls.clientcas), `setup docker` beside a registry's own
ca.crt, and a bad certs.d refused at start."""

import os
import shutil
import signal
import ssl

import harness as h

NAME = "registry.certsd.test"
MTLS_NAME = "mtls.certsd.test"
PORT = 5443  # the port clients name; --connect-to maps it to the real one


def setup():
    global CA, REG, IMG, CCA, MREG
    CA = h.TestCA(names=[NAME, MTLS_NAME])
    REG = h.Registry(ca=CA)
    IMG = h.OciImage(os.path.join(h.tmpdir(), "src"), layer_sizes=(4096, 300 * 1024))
    h.skopeo(["copy", "--dest-cert-dir", CA.certdir, "oci:%s:3.18" % IMG.path,
              "docker://127.0.0.1:%d/library/alpine:3.18" % REG.port])
    CCA = client_ca()
    MREG = MtlsRegistry(CA, CCA)
    push_dir = h.tmpdir()
    shutil.copy(CA.ca_crt, os.path.join(push_dir, "ca.crt"))
    shutil.copy(CCA["crt"], os.path.join(push_dir, "client.cert"))
    shutil.copy(CCA["key"], os.path.join(push_dir, "client.key"))
    h.skopeo(["copy", "--dest-cert-dir", push_dir, "oci:%s:3.18" % IMG.path,
              "docker://127.0.0.1:%d/library/alpine:3.18" % MREG.port])


def client_ca():
    """A CA for client certificates and one client pair it signed."""
    d = h.tmpdir("rpit-clientca-")
    f = {k: os.path.join(d, k) for k in ("ca.crt", "ca.key", "crt", "key", "csr")}
    h.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
           "-nodes", "-keyout", f["ca.key"], "-out", f["ca.crt"], "-days", "3",
           "-subj", "/CN=regproxy test client CA",
           "-addext", "basicConstraints=critical,CA:TRUE",
           "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    h.run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
           "-keyout", f["key"], "-out", f["csr"], "-subj", "/CN=regproxy test client"])
    ext = h.write_file(os.path.join(d, "ext"), "basicConstraints=critical,CA:FALSE\n"
                       "keyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n")
    h.run(["openssl", "x509", "-req", "-in", f["csr"], "-CA", f["ca.crt"], "-CAkey",
           f["ca.key"], "-CAcreateserial", "-out", f["crt"], "-days", "2", "-extfile", ext])
    return f


class MtlsRegistry:
    """distribution over TLS that requires a client certificate from cca."""

    def __init__(self, ca, cca):
        self.dir = h.tmpdir("rpit-registry-")
        self.port = h.free_port()
        conf = h.write_file(os.path.join(self.dir, "config.yml"), "\n".join([
            "version: 0.1", "log:", "  level: info", "  accesslog:", "    disabled: false",
            "storage:", "  filesystem:", "    rootdirectory: %s/data" % self.dir,
            "http:", "  addr: 127.0.0.1:%d" % self.port, "  secret: regproxy-mtls",
            "  tls:", "    certificate: %s" % ca.chain, "    key: %s" % ca.key,
            "    clientcas:", "      - %s" % cca["ca.crt"], ""]))
        self.log_path = os.path.join(self.dir, "registry.log")
        self.proc = h.Proc(["docker-registry", "serve", conf], name="docker-registry",
                           stdout=self.log_path, stderr=self.log_path)
        h.defer(lambda: self.proc.stop(signal.SIGTERM, timeout=3))
        ctx = ssl.create_default_context(cafile=ca.ca_crt)
        ctx.load_cert_chain(cca["crt"], cca["key"])

        def ready():
            if not self.proc.alive():
                raise AssertionError("registry exited: %s" % h.tail(self.log_path))
            c = h.HttpConn("127.0.0.1", self.port, timeout=2)
            try:
                c.sock = ctx.wrap_socket(c.sock, server_hostname="127.0.0.1")
                return c.request("GET", "/v2/", [("Host", "127.0.0.1")]).status == 200
            finally:
                c.close()
        h.wait_until(ready, 15, "mTLS registry GET /v2/")


def certs_d(name, files):
    """A certs.d tree with one host directory: {file name: source path}."""
    d = h.tmpdir("rpit-certsd-")
    os.makedirs(os.path.join(d, name))
    for fname, src in files.items():
        shutil.copy(src, os.path.join(d, name, fname))
    return d


def start_proxy(name, port, certs_dir, *extra):
    """regproxy intercepting name:PORT; .ca_crt is its CA (--ca-dir in extra or its own)."""
    rp = h.Regproxy(["--mitm", "%s:%d" % (name, PORT),
                       "--connect-to", "%s:%d:127.0.0.1:%d" % (name, PORT, port),
                       "--upstream-certs-dir", certs_dir] + list(extra))
    ca_dir = extra[extra.index("--ca-dir") + 1] if "--ca-dir" in extra else \
        os.path.join(rp.dir, "ca")
    rp.ca_crt = os.path.join(ca_dir, "ca.crt")
    return rp


def rp_certdir(rp):
    d = h.tmpdir()
    shutil.copy(rp.ca_crt, os.path.join(d, "ca.crt"))
    return d


def pull(rp, name, check=True):
    out = os.path.join(h.tmpdir(), "out")
    p = h.skopeo(["copy", "--src-cert-dir", rp_certdir(rp),
                  "docker://%s:%d/library/alpine:3.18" % (name, PORT), "oci:%s:3.18" % out],
                 env={"HTTPS_PROXY": rp.url, "https_proxy": rp.url}, check=check)
    return p, out


def assert_pulled_twice_second_from_cache(rp, name):
    _, out = pull(rp, name)
    assert h.layout_blobs(out) == (IMG.manifest, IMG.blobs)
    _, out = pull(rp, name)
    assert h.layout_blobs(out) == (IMG.manifest, IMG.blobs)
    for dg in IMG.layers:
        lines = rp.request_logs(route="mitm", path="/v2/library/alpine/blobs/" + dg)
        assert [ln.get("cache") for ln in lines] == ["miss", "hit"], lines


def test_self_signed_registry_trusted_through_certs_d():
    d = certs_d("%s:%d" % (NAME, PORT), {"ca.crt": CA.ca_crt})
    rp = start_proxy(NAME, REG.port, d)
    assert_pulled_twice_second_from_cache(rp, NAME)


def test_self_signed_registry_without_certs_d_entry_fails():
    rp = start_proxy(NAME, REG.port, h.tmpdir("rpit-certsd-empty-"))
    p, _ = pull(rp, NAME, check=False)
    assert p.returncode != 0, "pulled without trusting the registry's CA"
    errs = [ln.get("reason", "") for ln in rp.request_logs(route="mitm")]
    assert any("self-signed certificate" in e for e in errs), errs


def test_own_ca_in_certs_d_is_not_trusted_upstream():
    # regproxy.crt = regproxy's own CA (what `setup` writes) beside the registry's CA:
    # the pull works, and the own CA is skipped (debug line), never an error.
    ca_dir = os.path.join(h.tmpdir(), "ca")
    h.run([h.regproxy_bin(), "ca", "init", "--ca-dir", ca_dir, "--mitm", "%s:%d" % (NAME, PORT)])
    d = certs_d("%s:%d" % (NAME, PORT), {"ca.crt": CA.ca_crt,
                                         "regproxy.crt": os.path.join(ca_dir, "ca.crt")})
    rp = start_proxy(NAME, REG.port, d, "--ca-dir", ca_dir)
    pull(rp, NAME)
    assert "is regproxy's own CA" in rp.stderr()


def test_mtls_registry_needs_the_pair():
    d = certs_d("%s:%d" % (MTLS_NAME, PORT), {"ca.crt": CA.ca_crt})
    rp = start_proxy(MTLS_NAME, MREG.port, d)
    p, _ = pull(rp, MTLS_NAME, check=False)
    assert p.returncode != 0, "pulled from an mTLS registry without a client certificate"
    assert "%s:%d requires a client certificate and none is configured" % (
        MTLS_NAME, PORT) in rp.stderr(), rp.stderr()[-3000:]
    assert "client.cert and client.key in <certs.d>/%s:%d/" % (MTLS_NAME, PORT) in rp.stderr()


def test_mtls_registry_with_the_pair_pulls_and_caches():
    d = certs_d("%s:%d" % (MTLS_NAME, PORT), {"ca.crt": CA.ca_crt, "client.cert": CCA["crt"],
                                              "client.key": CCA["key"]})
    rp = start_proxy(MTLS_NAME, MREG.port, d)
    assert_pulled_twice_second_from_cache(rp, MTLS_NAME)


def test_sighup_rereads_certs_d():
    # Started without the pair: refused; the pair added and SIGHUP: pulls. A bad file
    # then is refused on reload, and the running material is kept.
    d = certs_d("%s:%d" % (MTLS_NAME, PORT), {"ca.crt": CA.ca_crt})
    rp = start_proxy(MTLS_NAME, MREG.port, d)
    assert pull(rp, MTLS_NAME, check=False)[0].returncode != 0
    host = os.path.join(d, "%s:%d" % (MTLS_NAME, PORT))
    shutil.copy(CCA["crt"], os.path.join(host, "client.cert"))
    shutil.copy(CCA["key"], os.path.join(host, "client.key"))
    rp.signal(signal.SIGHUP)
    rp.wait_log(msg="configuration reloaded")
    pull(rp, MTLS_NAME)
    shutil.copy(CCA["crt"], os.path.join(host, "other.cert"))
    rp.signal(signal.SIGHUP)
    line = rp.wait_log(level="error")
    assert "other.cert: client certificate without its key" in line["msg"], line
    pull(rp, MTLS_NAME)


def test_cert_without_key_is_exit_2_naming_the_file():
    d = certs_d("%s:%d" % (MTLS_NAME, PORT), {"client.cert": CCA["crt"]})
    rc, err = h.run_regproxy_expect_exit(["--listen", "127.0.0.1:%d" % h.free_port(),
                                          "--upstream-certs-dir", d])
    assert rc == 2, (rc, err)
    assert os.path.join(d, "%s:%d" % (MTLS_NAME, PORT), "client.cert") in err, err
    d = certs_d("%s:%d" % (MTLS_NAME, PORT), {"client.key": CCA["key"]})
    rc, err = h.run_regproxy_expect_exit(["--listen", "127.0.0.1:%d" % h.free_port(),
                                          "--upstream-certs-dir", d])
    assert rc == 2 and "client.key: key without its client certificate" in err, (rc, err)


def test_setup_docker_beside_the_registrys_own_ca():
    root = h.tmpdir()
    reg_dir = os.path.join(root, "etc/docker/certs.d", "%s:%d" % (NAME, PORT))
    os.makedirs(reg_dir)
    shutil.copy(CA.ca_crt, os.path.join(reg_dir, "ca.crt"))
    before = open(os.path.join(reg_dir, "ca.crt"), "rb").read()
    ca_dir = os.path.join(root, "var-lib-regproxy-ca")
    p = h.run([h.regproxy_bin(), "setup", "docker", "--root", root, "--ca-dir", ca_dir,
               "--mitm", "%s:%d" % (NAME, PORT)], env=h.clean_env(HOME=h.tmpdir()))
    out = p.stdout.decode()
    assert sorted(os.listdir(reg_dir)) == ["ca.crt", "regproxy.crt"], os.listdir(reg_dir)
    assert open(os.path.join(reg_dir, "ca.crt"), "rb").read() == before
    pem = h.run([h.regproxy_bin(), "ca", "cert", "--ca-dir", ca_dir]).stdout
    assert open(os.path.join(reg_dir, "regproxy.crt"), "rb").read() == pem
    assert "regproxy.crt" in out and "ca.crt" in out, out
    # regproxy reading that tree trusts the registry's CA and skips its own.
    rp = start_proxy(NAME, REG.port, os.path.join(root, "etc/docker/certs.d"),
                     "--ca-dir", ca_dir)
    pull(rp, NAME)


def test_dockerd_pulls_self_signed_registry_through_regproxy():
    if shutil.which("dockerd") is None or h.docker_bin() is None:
        raise h.Skip("dockerd not installed")
    d = certs_d("%s:%d" % (NAME, PORT), {"ca.crt": CA.ca_crt})
    rp = start_proxy(NAME, REG.port, d)
    docker = h.Dockerd(rp)
    ref = "%s:%d/library/alpine:3.18" % (NAME, PORT)
    docker.docker(["pull", ref], timeout=180)
    docker.docker(["rmi", ref])
    docker.docker(["pull", ref], timeout=180)
    for dg in IMG.layers:
        lines = rp.request_logs(route="mitm", path="/v2/library/alpine/blobs/" + dg)
        assert [ln.get("cache") for ln in lines] == ["miss", "hit"], lines


if __name__ == "__main__":
    h.main(globals())
