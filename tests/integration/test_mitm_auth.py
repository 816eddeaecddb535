"""Registry auth through the MITM (issue 3): the distribution registry with Docker-Hub-
style token auth (token server reached as auth.docker.io through a plain tunnel, as
Docker Hub's is) and with htpasswd Basic auth. skopeo pulls public images anonymously,
private ones with credentials, and is refused without them; regproxy relays the
challenges and the Authorization headers untouched."""

import os
import shutil

import harness as h

HOST = "registry-1.docker.io"


class HtpasswdRegistry(h.Registry):
    def __init__(self, user, password, ca=None):
        self.htpasswd = os.path.join(h.tmpdir(), "htpasswd")
        p = h.run(["htpasswd", "-Bbn", user, password])
        h.write_file(self.htpasswd, p.stdout, mode=0o644)
        super().__init__(ca=ca)

    def _render_conf(self):
        conf = super()._render_conf()
        with open(conf, "a") as f:
            f.write("auth:\n  htpasswd:\n    realm: Registry Realm\n    path: %s\n" %
                    self.htpasswd)
        return conf

    def _ready_status(self):
        return 401


def setup():
    global CA, TS, REG, HREG
    CA = h.shared_ca()
    TS = h.HubTokenServer(users={"alice": "s3cret"}, public=("library/alpine",))
    REG = h.TokenRegistry(TS)
    HREG = HtpasswdRegistry("bob", "hunter2")
    # Push the fixtures through a plain tunnel: the token realm is auth.docker.io,
    # which only regproxy's --connect-to can reach here.
    for reg, creds in ((REG, "alice:s3cret"), (HREG, "bob:hunter2")):
        tunnel = h.Regproxy(["--mitm", "",
                             "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, reg.port),
                             "--connect-to", "auth.docker.io:443:127.0.0.1:%d" % TS.port])
        for repo in ("library/alpine", "private/app"):
            img = h.OciImage(os.path.join(h.tmpdir(), "src"), tag="1",
                             layer_sizes=(4096, 64 * 1024))
            h.skopeo(["copy", "--dest-cert-dir", CA.certdir, "--dest-creds", creds,
                      "oci:%s:1" % img.path, "docker://%s/%s:1" % (HOST, repo)],
                     env={"HTTPS_PROXY": tunnel.url})
        tunnel.stop()


def proxy(reg):
    return h.Regproxy(["--mitm", HOST,
                       "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, reg.port),
                       "--connect-to", "auth.docker.io:443:127.0.0.1:%d" % TS.port,
                       "--upstream-ca", CA.ca_crt])


def certdir(rp):
    """regproxy's CA for the registry, the test CA for the tunnelled token server."""
    d = h.tmpdir()
    shutil.copy(os.path.join(rp.dir, "ca", "ca.crt"), os.path.join(d, "regproxy.crt"))
    shutil.copy(CA.ca_crt, os.path.join(d, "test-ca.crt"))
    return d


def pull(rp, repo, creds=None, check=True):
    args = ["copy", "--src-cert-dir", certdir(rp)]
    if creds:
        args += ["--src-creds", creds]
    args += ["docker://%s/%s:1" % (HOST, repo), "oci:%s:1" % os.path.join(h.tmpdir(), "o")]
    return h.skopeo(args, env={"HTTPS_PROXY": rp.url}, check=check)


def test_token_auth_public_anonymous():
    rp = proxy(REG)
    before = len(TS.token_requests())
    pull(rp, "library/alpine")
    assert len(TS.token_requests()) > before, "the token server saw no request"
    assert rp.request_logs(route="tunnel", host="auth.docker.io"), \
        "token requests did not go through a plain tunnel"
    ok = rp.request_logs(route="mitm", status="200", method="GET")
    assert any("/blobs/" in ln.get("path", "") for ln in ok), "no blob relayed with 200"


def test_token_auth_private_needs_credentials():
    rp = proxy(REG)
    p = pull(rp, "private/app", check=False)
    assert p.returncode != 0, "anonymous pull of a private repository succeeded"
    pull(rp, "private/app", creds="alice:s3cret")
    assert any(u == "alice" for _, u in TS.token_requests()), "no authenticated token request"


def test_htpasswd_basic_auth():
    rp = proxy(HREG)
    p = pull(rp, "private/app", check=False)
    assert p.returncode != 0, "pull without credentials succeeded against htpasswd auth"
    assert rp.request_logs(route="mitm", status="401"), "the 401 was not relayed"
    pull(rp, "private/app", creds="bob:hunter2")
    pull(rp, "library/alpine", creds="bob:hunter2")


if __name__ == "__main__":
    h.main(globals())
