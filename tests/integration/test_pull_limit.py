"""Docker Hub's pull limit in view (contract §5, issue 12): a registry stand-in answers manifest
HEADs and GETs with `ratelimit-limit: 100;w=21600` and a `ratelimit-remaining` that drops by
one per manifest GET (HEADs are free, as on Docker Hub). Pulled through MITM with curl, the
last values per registry and credential kind show in /status.json and /metrics, and every
manifest GET the cache answered without an upstream GET counts as a pull saved; a
client with a credential (Basic, or a Bearer token naming a subject) is kept apart from
anonymous ones, and a Bearer token with an empty subject (Docker Hub's anonymous token)
counts as anonymous. Header values that are not numbers are ignored."""

import base64
import hashlib
import http.server
import json
import os
import shutil
import threading

import harness as h

HOST = "registry-1.docker.io"
OCI = "application/vnd.oci.image.manifest.v1+json"
MANIFEST = json.dumps({
    "schemaVersion": 2, "mediaType": OCI,
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 2,
               "digest": "sha256:" + hashlib.sha256(b"{}").hexdigest()},
    "layers": []}, indent=3).encode()
DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()


def jwt(sub):
    def b64(o):
        return base64.urlsafe_b64encode(json.dumps(o).encode()).rstrip(b"=").decode()
    return "%s.%s.c2ln" % (b64({"alg": "none"}), b64({"sub": sub, "access": []}))


class Standin:
    """Counts manifest GETs per credential kind: anonymous 100 a window, authenticated 200."""

    def __init__(self, ca):
        self.lock = threading.Lock()
        self.gets = {"anonymous": 0, "authenticated": 0}
        self.requests = []
        self.garbage = False  # answer with ratelimit headers that are not numbers
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _answer(self, head_only):
                authz = self.headers.get("Authorization", "")
                kind = "anonymous" if authz in ("", "Bearer " + jwt("")) else "authenticated"
                with outer.lock:
                    outer.requests.append((self.command, self.path, kind))
                    if not head_only and "/manifests/" in self.path:
                        outer.gets[kind] += 1
                    limit = 100 if kind == "anonymous" else 200
                    left = limit - outer.gets[kind]
                if self.path == "/v2/":
                    return self._send(200, b"{}", "application/json", head_only, None)
                if self.path not in ("/v2/library/x/manifests/1",
                                     "/v2/library/x/manifests/" + DIGEST):
                    return self._send(404, b"{}", "application/json", head_only, None)
                if outer.garbage:
                    hdrs = {"ratelimit-limit": "many", "ratelimit-remaining": ";w=1"}
                else:
                    hdrs = {"ratelimit-limit": "%d;w=21600" % limit,
                            "ratelimit-remaining": "%d;w=21600" % left,
                            "docker-ratelimit-source": "127.0.0.1"}
                self._send(200, MANIFEST, OCI, head_only, hdrs)

            def _send(self, code, data, ctype, head_only, extra):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                if extra is not None:
                    self.send_header("Docker-Content-Digest", DIGEST)
                    for k, v in extra.items():
                        self.send_header(k, v)
                self.end_headers()
                if not head_only:
                    self.wfile.write(data)

            def do_GET(self):
                self._answer(False)

            def do_HEAD(self):
                self._answer(True)

        self.port = h.serve_http(H, ca).server_address[1]


def setup():
    global CA, ST, RP
    CA = h.shared_ca()
    ST = Standin(CA)
    RP = h.Regproxy(["--mitm", HOST, "--upstream-ca", CA.ca_crt,
                     "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, ST.port)])


def get(ref, authz=None):
    out = os.path.join(h.tmpdir(), "m")
    args = ["-o", out, "-w", "%{http_code}", "-x", RP.url, "--cacert",
            os.path.join(RP.dir, "ca", "ca.crt"), "-H", "Accept: " + OCI]
    if authz is not None:
        args += ["-H", "Authorization: " + authz]
    path = "/v2/library/x/manifests/" + ref
    before = len(RP.find_logs(method="GET", path=path))
    r = h.curl(args + ["https://%s%s" % (HOST, path)])
    assert r.stdout == b"200" and open(out, "rb").read() == MANIFEST, r
    h.wait_until(lambda: len(RP.find_logs(method="GET", path=path)) > before, 5,
                 "the request's log line")


def limits():
    r = RP.get_admin("/status.json")
    assert r.status == 200, r
    s = json.loads(r.body)
    return s, {(x["registry"], x["auth"]): x for x in s["ratelimits"]}


def test_anonymous_limit_and_pulls_saved():
    get("1")  # HEAD (100 left), not cached: one GET by digest (99 left)
    h.wait_until(lambda: RP.find_logs(path="/v2/library/x/manifests/1", cache="miss"), 5,
                 "cache=miss")
    get("1")  # HEAD, revalidated: saved
    get(DIGEST)  # hit: saved
    get("1", authz="Bearer " + jwt(""))  # Docker Hub's anonymous token: still anonymous
    assert ST.gets == {"anonymous": 1, "authenticated": 0}, ST.requests
    s, by = limits()
    a = by[("docker.io", "anonymous")]
    assert (a["limit"], a["remaining"], a["window_seconds"]) == (100, 99, 21600), a
    assert a["pulls_saved"] == 3 and s["pulls_saved"] == 3, s["ratelimits"]
    assert ("docker.io", "authenticated") not in by, by
    m = RP.metrics()
    assert m.sum("regproxy_registry_ratelimit_remaining", registry="docker.io",
                 auth="anonymous") == 99, m
    assert m.sum("regproxy_registry_ratelimit_limit", registry="docker.io",
                 auth="anonymous") == 100, m
    assert m.sum("regproxy_pulls_saved_total", registry="docker.io", auth="anonymous") == 3, m


def test_authenticated_kept_apart():
    get("1", authz="Basic " + base64.b64encode(b"u:p").decode())  # revalidated: saved
    get("1", authz="Bearer " + jwt("someone"))
    assert ST.gets["authenticated"] == 0, ST.requests
    _, by = limits()
    a = by[("docker.io", "authenticated")]
    assert (a["limit"], a["remaining"], a["pulls_saved"]) == (200, 200, 2), a
    assert by[("docker.io", "anonymous")]["remaining"] == 99, by
    m = RP.metrics()
    assert m.sum("regproxy_registry_ratelimit_remaining", registry="docker.io",
                 auth="authenticated") == 200, m


def test_page_shows_the_lowest_limit():
    chromium = shutil.which("chromium")
    if chromium is None:
        return
    d = h.tmpdir()
    p = h.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--user-data-dir=" + d,
               "--virtual-time-budget=5000", "--dump-dom", RP.url + "/"], timeout=60,
              check=False, env=h.clean_env(HOME=d))
    dom = p.stdout.decode(errors="replace")
    assert '<b id="lleft" class="">99 of 100</b>' in dom, dom[:3000]
    assert "docker.io, anonymous, per 6 h" in dom, dom[:3000]
    assert "<td>authenticated</td><td class=\"n\">200</td>" in dom, dom


def test_values_that_are_not_numbers_are_ignored():
    ST.garbage = True
    try:
        get("1")
    finally:
        ST.garbage = False
    _, by = limits()
    a = by[("docker.io", "anonymous")]
    assert (a["limit"], a["remaining"], a["pulls_saved"]) == (100, 99, 4), a


if __name__ == "__main__":
    h.main(globals())
