"""--proxy-auth-file (contract §4): an htpasswd file; CONNECT and absolute-form requests must
carry Proxy-Authorization: Basic with a user it accepts, else 407 with a Basic challenge.
Every hash htpasswd writes works (bcrypt, apr1-MD5, SHA1); origin-form admin requests need
none; SIGHUP re-reads the file; a bad file refuses to start (exit 2, file:line); skopeo
with HTTPS_PROXY=http://user:pass@… pulls through it."""

import base64
import os
import signal
import subprocess

import harness as h

USERS = {"alice": ("-B", "s3cret"), "bob": ("-m", "pw-two"), "carol": ("-s", "pw:three")}


def htpasswd_line(user, flag, password):
    p = subprocess.run(["htpasswd", "-n", "-b", flag, user, password], check=True,
                       capture_output=True)
    return p.stdout.decode().strip() + "\n"


def setup():
    global ORIGIN, FILE
    ORIGIN = h.Nginx()
    FILE = h.write_file(os.path.join(h.tmpdir(), "htpasswd"),
                        "# proxy users\n" + "".join(htpasswd_line(u, f, p)
                                                    for u, (f, p) in USERS.items()))


def basic(user, password):
    return "Basic " + base64.b64encode(("%s:%s" % (user, password)).encode()).decode()


def connect(rp, authz=None):
    c = rp.conn()
    try:
        hdrs = [("Proxy-Authorization", authz)] if authz else []
        return c.request("CONNECT", "127.0.0.1:%d" % ORIGIN.http_port,
                         [("Host", "127.0.0.1:%d" % ORIGIN.http_port)] + hdrs)
    finally:
        c.close()


def test_no_credentials_407_with_a_basic_challenge():
    rp = h.Regproxy(["--proxy-auth-file", FILE])
    r = connect(rp)
    assert r.status == 407, r
    assert r.header("proxy-authenticate") == 'Basic realm="regproxy"', r.headers
    r = h.curl(["-o", "/dev/null", "-w", "%{http_code}", "-x", rp.url,
                "http://127.0.0.1:%d/ready.txt" % ORIGIN.http_port])
    assert r.stdout.strip() == b"407", r
    assert rp.wait_log(status="407", method="CONNECT")["reason"]


def test_every_htpasswd_hash_accepted_wrong_password_refused():
    rp = h.Regproxy(["--proxy-auth-file", FILE])
    for user, (_, password) in USERS.items():
        r = h.curl(["-o", "/dev/null", "-w", "%{http_code}", "-x", rp.url, "-U",
                    "%s:%s" % (user, password), "http://127.0.0.1:%d/ready.txt" % ORIGIN.http_port])
        assert r.stdout.strip() == b"200", (user, r)
        r = h.curl(["-o", "/dev/null", "-w", "%{http_code}", "-x", rp.url, "-U",
                    "%s:%s" % (user, password), "-p",
                    "http://127.0.0.1:%d/ready.txt" % ORIGIN.http_port])
        assert r.stdout.strip() == b"200", ("CONNECT", user, r)
        assert connect(rp, basic(user, password + "x")).status == 407, user
    assert connect(rp, basic("mallory", "s3cret")).status == 407
    assert connect(rp, "Basic !!!not-base64").status == 407
    assert connect(rp, "Bearer abc").status == 407
    # The header never reaches the origin.
    assert not [d for d in ORIGIN.access_log() if "proxy" in str(d.get("authorization", ""))]


def test_connect_retried_on_the_same_connection_after_407():
    """Challenge-response on one connection: the 407 keeps it open, and the CONNECT sent
    again with credentials is answered (the parser had stayed in CONNECT's upgrade state
    and read nothing more)."""
    rp = h.Regproxy(["--proxy-auth-file", FILE])
    target = "127.0.0.1:%d" % ORIGIN.http_port
    c = rp.conn(timeout=5.0)
    try:
        r = c.request("CONNECT", target, [("Host", target)])
        assert r.status == 407 and r.header("connection") != "close", r
        r = c.request("CONNECT", target, [("Host", target),
                                          ("Proxy-Authorization", basic("bob", "pw-two"))])
        assert r.status == 200, r
    finally:
        c.close()


def test_a_body_sent_with_the_head_waits_for_the_check():
    """The request is parked after its head while bcrypt runs on the thread pool; the
    body bytes that came with the head are forwarded afterwards, intact."""
    rp = h.Regproxy(["--proxy-auth-file", FILE])
    data = os.urandom(300 * 1024)
    c = rp.conn()
    try:
        r = c.request("PUT", "http://127.0.0.1:%d/dav/up.bin" % ORIGIN.http_port,
                      [("Host", "127.0.0.1:%d" % ORIGIN.http_port),
                       ("Proxy-Authorization", basic("alice", "s3cret"))], body=data)
    finally:
        c.close()
    assert r.status in (201, 204), r
    assert h.sha256_file(ORIGIN.dav_path("up.bin")) == h.sha256(data)


def test_admin_requests_need_no_proxy_credentials():
    rp = h.Regproxy(["--proxy-auth-file", FILE])
    assert rp.get_admin("/healthz").status == 200


def test_sighup_rereads_the_file():
    f = h.write_file(os.path.join(h.tmpdir(), "htpasswd"), htpasswd_line("alice", "-B", "s3cret"))
    rp = h.Regproxy(["--proxy-auth-file", f])
    assert connect(rp, basic("alice", "s3cret")).status == 200
    assert connect(rp, basic("dave", "pw4")).status == 407
    h.write_file(f, htpasswd_line("dave", "-m", "pw4"))
    rp.signal(signal.SIGHUP)
    rp.wait_log(msg="configuration reloaded")
    assert connect(rp, basic("dave", "pw4")).status == 200
    assert connect(rp, basic("alice", "s3cret")).status == 407, "a removed user still passes"


def test_bad_file_refuses_to_start():
    f = h.write_file(os.path.join(h.tmpdir(), "htpasswd"), "alice:$apr1$x$y\nno-colon-here\n")
    rc, err = h.run_regproxy_expect_exit(["--proxy-auth-file", f])
    assert rc == 2 and "%s:2" % f in err, (rc, err)
    rc, err = h.run_regproxy_expect_exit(["--proxy-auth-file", os.path.join(h.tmpdir(), "none")])
    assert rc == 2 and "proxy-auth-file" in err.replace("_", "-"), (rc, err)


def test_skopeo_pulls_through_an_authenticating_proxy():
    ca = h.shared_ca()
    reg = h.Registry()
    img = h.OciImage(os.path.join(h.tmpdir(), "img"), layer_sizes=(3000,))
    h.skopeo(["copy", "--dest-cert-dir", ca.certdir, "oci:%s:3.18" % img.path,
              "docker://127.0.0.1:%d/library/alpine:3.18" % reg.port])
    rp = h.Regproxy(["--proxy-auth-file", FILE, "--mitm", "",
                     "--connect-to", "registry-1.docker.io:443:127.0.0.1:%d" % reg.port])
    out = os.path.join(h.tmpdir(), "out")
    proxy = "http://bob:pw-two@127.0.0.1:%d" % rp.port
    h.skopeo(["copy", "--src-cert-dir", ca.certdir,
              "docker://registry-1.docker.io/library/alpine:3.18", "oci:%s:3.18" % out],
             env={"HTTPS_PROXY": proxy})
    assert h.layout_blobs(out)[1] == img.blobs
    p = h.skopeo(["copy", "--src-cert-dir", ca.certdir,
                  "docker://registry-1.docker.io/library/alpine:3.18",
                  "oci:%s:3.18" % os.path.join(h.tmpdir(), "o2")],
                 env={"HTTPS_PROXY": "http://bob:wrong@127.0.0.1:%d" % rp.port}, check=False)
    assert p.returncode != 0, "pulled with a wrong proxy password"


if __name__ == "__main__":
    h.main(globals())
