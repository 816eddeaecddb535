"""Where regproxy's own token requests may go (contract §3, issue 8 finding 7). A stand-in
registry on 127.0.0.1 (reached as registry-1.docker.io with --connect-to) answers 401
with a Bearer realm of its choosing; regproxy in mirror mode must refuse realms that are
plain http on another host, or an internal address where the registry is not
(169.254.169.254, 10.1.2.3 — only ever strings here, refused before any socket exists),
log why, relay the registry's 401, and stay up. A loopback realm for a loopback registry
(how every test here runs Docker Hub's auth.docker.io) keeps working, also through a
name mapped with --connect-to."""

import hashlib
import http.server
import json
import select
import socket
import ssl
import threading

import harness as h

HOST = "registry-1.docker.io"
OCI = "application/vnd.oci.image.manifest.v1+json"
MANIFEST = json.dumps({
    "schemaVersion": 2, "mediaType": OCI,
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 2,
               "digest": "sha256:" + hashlib.sha256(b"{}").hexdigest()},
    "layers": []}).encode()
TOKEN = "stand-in-token"
DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()


def _tls_server(handler):
    return h.serve_http(handler, CA).server_address[1]


class Standin:
    """A registry that wants a Bearer token from .realm; TOKEN opens the manifest of
    library/x:1 (by tag or digest). .requests: (method, path, Authorization or None)."""

    def __init__(self, realm):
        self.realm = realm
        self.requests = []
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _answer(self, head_only):
                authz = self.headers.get("Authorization")
                outer.requests.append((self.command, self.path, authz))
                if authz == "Bearer " + TOKEN and self.path in (
                        "/v2/library/x/manifests/1", "/v2/library/x/manifests/" + DIGEST):
                    return self._send(200, MANIFEST, OCI, head_only,
                                      [("Docker-Content-Digest", DIGEST)])
                scope = ',scope="repository:library/x:pull"' if "/manifests/" in self.path else ""
                body = json.dumps({"errors": [{"code": "UNAUTHORIZED",
                                               "message": "authentication required"}]}).encode()
                self._send(401, body, "application/json", head_only, [
                    ("WWW-Authenticate",
                     'Bearer realm="%s",service="stand-in"%s' % (outer.realm, scope))])

            def _send(self, code, data, ctype, head_only, extra):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for k, v in extra:
                    self.send_header(k, v)
                self.end_headers()
                if not head_only:
                    self.wfile.write(data)

            def do_GET(self):
                self._answer(False)

            def do_HEAD(self):
                self._answer(True)

        self.port = _tls_server(H)

    def manifest_requests(self):
        return [r for r in self.requests if "/manifests/" in r[1]]


class Tokens:
    """A token server over TLS: GET /token → {"token": TOKEN}. .requests: paths."""

    def __init__(self):
        self.requests = []
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.requests.append(self.path)
                body = json.dumps({"token": TOKEN, "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.port = _tls_server(H)


def _listen(on_conn):
    """A loopback TCP listener whose every connection goes to on_conn in a thread."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)

    def run():
        while True:
            try:
                c, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=on_conn, args=(c,), daemon=True).start()
    threading.Thread(target=run, daemon=True).start()
    h.defer(sock.close)
    return sock.getsockname()[1]


class Trap:
    """A loopback listener that counts the connections it accepts (it must get none)."""

    def __init__(self):
        self.accepted = 0
        self.port = _listen(self._count)

    def _count(self, c):
        self.accepted += 1
        c.close()


class TunnelParent:
    """A parent proxy that answers every CONNECT by tunnelling to 127.0.0.1:port."""

    def __init__(self, port):
        self.to = port
        self.connects = []
        self.port = _listen(self._tunnel)

    def _tunnel(self, c):
        head = b""
        while b"\r\n\r\n" not in head:
            b = c.recv(4096)
            if not b:
                return c.close()
            head += b
        self.connects.append(head.split(b"\r\n", 1)[0].decode())
        up = socket.create_connection(("127.0.0.1", self.to))
        c.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        try:
            while True:
                r, _, _ = select.select([c, up], [], [], 30)
                if not r:
                    break
                for s in r:
                    data = s.recv(65536)
                    if not data:
                        return
                    (up if s is c else c).sendall(data)
        except OSError:
            pass
        finally:
            c.close()
            up.close()


def setup():
    global CA, TOKENS, TRAP
    CA = h.shared_ca()
    TOKENS = Tokens()
    TRAP = Trap()


def mirror(standin, *extra):
    return h.Regproxy(["--mitm", HOST, "--upstream-ca", CA.ca_crt,
                       "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, standin.port),
                       "--connect-to", "auth.docker.io:443:127.0.0.1:%d" % TOKENS.port,
                       "--connect-to", "other-host.example:80:127.0.0.1:%d" % TRAP.port,
                       "--connect-to", "other-host.example:443:127.0.0.1:%d" % TRAP.port]
                      + list(extra))


def get_manifest(rp):
    c = rp.conn()
    try:
        return c.request("GET", "/v2/library/x/manifests/1",
                         [("Host", "127.0.0.1:%d" % rp.port), ("Accept", OCI)])
    finally:
        c.close()


def refused(realm, reason, *extra, standin=None):
    """Pull through a fresh mirror from a stand-in whose realm is realm: no token
    request anywhere, the refusal logged with reason, the registry's 401 relayed."""
    st = standin or Standin(realm)
    rp = mirror(st, *extra)
    tokens0, trap0 = len(TOKENS.requests), TRAP.accepted
    r = get_manifest(rp)
    assert r.status == 401, "expected the registry's 401: %r" % r
    assert b"UNAUTHORIZED" in r.body, r.body
    line = rp.wait_log(msg="token realm refused", realm=realm)
    assert reason in line["reason"], line
    assert line["registry"] == "docker.io", line
    # The request went on without a credential, and nothing else was asked.
    assert all(a is None for _, _, a in st.manifest_requests()), st.requests
    assert len(TOKENS.requests) == tokens0 and TRAP.accepted == trap0, \
        "a token request was sent: %r, trap %d" % (TOKENS.requests, TRAP.accepted)
    assert rp.alive(), "regproxy died"
    # Still serving: the same answer again (the challenge is remembered, the token not).
    assert get_manifest(rp).status == 401
    return rp


def test_plain_http_realm_to_link_local_refused():
    refused("http://169.254.169.254/token", "plain-http realm on 169.254.169.254")


def test_https_realm_on_a_private_address_refused():
    refused("https://10.1.2.3/token",
            "realm host 10.1.2.3 is a private address and the registry docker.io is not "
            "(it answered from 127.0.0.1)")


def test_https_realm_on_link_local_refused():
    refused("https://169.254.169.254/latest/meta-data/", "link-local address")
    refused("https://[::ffff:169.254.169.254]/token", "link-local address")


def test_plain_http_realm_on_another_host_refused():
    # other-host.example leads to the trap on loopback; regproxy never connects to it.
    refused("http://other-host.example/token",
            "plain-http realm on other-host.example, not on the registry's own host")


def test_not_http_realm_refused():
    refused("ftp://auth.docker.io/token", "not an http(s) URL")


def test_loopback_realm_for_a_loopback_registry_works():
    st = Standin("https://auth.docker.io/token")
    rp = mirror(st)
    n = len(TOKENS.requests)
    r = get_manifest(rp)
    assert r.status == 200 and r.body == MANIFEST, r
    # The mirror's token, and the public-repository probe's own anonymous one.
    assert len(TOKENS.requests) >= n + 1, TOKENS.requests
    assert "scope=repository%3Alibrary%2Fx%3Apull" in TOKENS.requests[-1], TOKENS.requests
    assert ("HEAD", "/v2/library/x/manifests/1", "Bearer " + TOKEN) in st.requests, st.requests
    assert not rp.find_logs(msg="token realm refused")
    rp.wait_log(msg="repository docker.io/library/x is public")
    # A loopback literal realm is the same thing.
    st = Standin("https://127.0.0.1:%d/token" % TOKENS.port)
    r = get_manifest(mirror(st))
    assert r.status == 200 and r.body == MANIFEST, r


def test_registry_behind_a_parent_has_no_known_address():
    # Through a parent proxy the registry's address is the parent's business, so a
    # realm that resolves to loopback (auth.docker.io → 127.0.0.1 via --connect-to) is
    # refused at the socket, before connecting: the token server sees nothing.
    st = Standin("https://auth.docker.io/token")
    parent = TunnelParent(st.port)
    rp = refused("https://auth.docker.io/token",
                 "refusing to connect to 127.0.0.1 (loopback address)",
                 "--parent-proxy", "http://127.0.0.1:%d" % parent.port, standin=st)
    assert parent.connects, "the registry was not reached through the parent"
    assert not rp.find_logs(msg="token realm refused", reason=lambda v: "realm host" in v)

if __name__ == "__main__":
    h.main(globals())
