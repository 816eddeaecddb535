"""The upstream engine and the registry auth client, driven through tests/tools/rp_fetch
(one fetch per process) against real servers: nginx over TLS with the test CA, squid as a
parent proxy, the distribution registry with Docker-Hub-style token auth, and small
stdlib servers where exact bytes matter (1xx heads, redirects, request headers)."""

import base64
import hashlib
import http.server
import json
import os
import socket
import ssl
import threading

import harness as h

BIG = "big.bin"
BIG_SIZE = 64 << 20
MT_OCI = "application/vnd.oci.image.manifest.v1+json"


def tool():
    d = os.environ.get("RP_TOOLS_DIR") or os.path.join(
        os.environ.get("RP_BUILD_DIR") or os.path.join(h.HERE, "..", "..", "build"), "tests")
    p = os.path.abspath(os.path.join(d, "rp_fetch"))
    if not os.path.exists(p):
        raise AssertionError("rp_fetch not found at %s (set RP_TOOLS_DIR)" % p)
    return p


class Result:
    def __init__(self, proc):
        self.rc = proc.returncode
        self.out = proc.stdout.decode("utf-8", "replace")
        self.err = proc.stderr.decode("utf-8", "replace")
        self.kv = {}
        self.headers = []
        for line in self.out.splitlines():
            k, _, v = line.partition(" ")
            if k == "header":
                name, _, value = v.partition(": ")
                self.headers.append((name, value))
            else:
                self.kv[k] = v

    def __getitem__(self, k):
        if k not in self.kv:
            raise AssertionError("rp_fetch printed no %r\n%s" % (k, self))
        return self.kv[k]

    def get(self, k, default=None):
        return self.kv.get(k, default)

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def int(self, k):
        return int(self[k])

    def __str__(self):
        return "rp_fetch exit %d\nstdout:\n%s\nstderr:\n%s" % (
            self.rc, h._short(self.out, 4000), h._short(self.err, 4000))


def fetch(*args, env=None, timeout=120, ok=True):
    # A small ASan quarantine keeps peak RSS meaningful in sanitizer builds (it is
    # ignored by normal builds).
    e = h.clean_env(ASAN_OPTIONS="detect_leaks=1:quarantine_size_mb=4:abort_on_error=0")
    if env:
        e.update(env)
    p = h.run([tool()] + [str(a) for a in args], timeout=timeout, check=False, env=e)
    r = Result(p)
    for mark in h._SANITIZER_MARKS:
        if mark in r.err:
            raise AssertionError("sanitizer report from rp_fetch\n%s" % r)
    if ok and (r.rc != 0 or r.get("result") != "0"):
        raise AssertionError("fetch failed\n%s" % r)
    return r


def check(cond, msg, r=None):
    if not cond:
        raise AssertionError(msg + ("\n%s" % r if r is not None else ""))


# ---------------------------------------------------------------------------------------
# A small origin where exact bytes matter: request headers echoed, 1xx heads, redirects.

class EchoServer:
    """HTTP/1.1 on 127.0.0.1 (and TLS when tls=True). Paths:
    /echo        200, JSON {"method","headers":[[k,v]...],"body_len","body_sha256"}
    /early       100 Continue and 103 Early Hints, then 200 "ok" with X-Final: yes
    /redir       302 Location: /echo (relative)
    /redir-cross 302 Location: http://localhost:PORT/echo (another host name)
    /redir-loop  302 Location: /redir-loop
    /cut         Content-Length: 1000000, 1000 bytes, close
    /bighead     a response head of 80 KB
    .seen lists (path, headers) of every request, .bodies (method, length, sha256)."""

    def __init__(self, tls=False, host="127.0.0.1"):
        self.seen = []
        self.bodies = []
        srv = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _body(self):
                te = (self.headers.get("Transfer-Encoding") or "").lower()
                if "chunked" in te:
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n)

            def _handle(self):
                body = self._body()
                srv.seen.append((self.path, list(self.headers.items())))
                srv.bodies.append((self.command, len(body), hashlib.sha256(body).hexdigest()))
                if self.path == "/early":
                    self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n"
                                     b"HTTP/1.1 103 Early Hints\r\nLink: </x.css>\r\n\r\n"
                                     b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                                     b"X-Final: yes\r\n\r\nok")
                    return
                if self.path == "/cut":
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" +
                                     b"x" * 1000)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if self.path == "/bighead":
                    self.wfile.write(b"HTTP/1.1 200 OK\r\n" +
                                     b"".join(b"X-Filler-%d: %s\r\n" % (i, b"y" * 1000)
                                              for i in range(80)) +
                                     b"Content-Length: 0\r\n\r\n")
                    return
                if self.path.startswith("/redir"):
                    loc = {"/redir": "/echo", "/redir-loop": "/redir-loop",
                           "/redir-cross": "http://localhost:%d/echo" % srv.port}[self.path]
                    self.send_response(302)
                    self.send_header("Location", loc)
                    self.send_header("Content-Length", "9")
                    self.end_headers()
                    self.wfile.write(b"redirect\n")
                    return
                out = json.dumps({"method": self.command, "path": self.path,
                                  "headers": list(self.headers.items()),
                                  "body_len": len(body),
                                  "body_sha256": hashlib.sha256(body).hexdigest()}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(out)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        fam = socket.AF_INET6 if ":" in host else socket.AF_INET

        class Server(http.server.ThreadingHTTPServer):
            address_family = fam
            daemon_threads = True

        self.port = h.free_port(host)
        self.httpd = Server((host, self.port), Handler)
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(h.shared_ca().chain, h.shared_ca().key)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        h.defer(self.close)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def last(self, path):
        for p, hdrs in reversed(self.seen):
            if p == path:
                return hdrs
        raise AssertionError("no request for %s (seen %r)" % (path, [p for p, _ in self.seen]))


def hdr(headers, name):
    vals = [v for k, v in headers if k.lower() == name.lower()]
    return vals[0] if vals else None


# ---------------------------------------------------------------------------------------

def setup():
    global ORIGIN, CA
    CA = h.shared_ca()
    ORIGIN = h.Nginx(files={BIG: BIG_SIZE})
    tool()


def https(path, port=None):
    return "https://127.0.0.1:%d/%s" % (port or ORIGIN.https_port, path)


def test_get_tls_64mib_sha256():
    r = fetch("--cacert", CA.ca_crt, https(BIG))
    check(r.int("status") == 200, "status", r)
    check(r.header("Content-Length") == str(BIG_SIZE), "Content-Length header", r)
    check(r.int("body_len") == BIG_SIZE, "length", r)
    check(r["body_sha256"] == ORIGIN.files[BIG], "sha256 differs", r)
    print("     64 MiB over TLS: %s MB/s (%s ms), peak RSS %s kB" % (
        r["mb_per_s"], r["elapsed_ms"], r["vmhwm_kb"]))


def test_pause_resume_memory_bounded():
    small = fetch("--cacert", CA.ca_crt, https("a.txt"))
    r = fetch("--cacert", CA.ca_crt, "--pause-every", 256 * 1024, https(BIG), timeout=180)
    check(r["body_sha256"] == ORIGIN.files[BIG], "sha256 differs", r)
    check(r.int("pauses") >= 200, "the body was paused every 256 KiB", r)
    check(r.int("violations") == 0, "body bytes were delivered while paused", r)
    grown = r.int("vmhwm_kb") - small.int("vmhwm_kb")
    print("     peak RSS: %s kB for a 60 B body, %s kB for 64 MiB paused (+%d kB)" % (
        small["vmhwm_kb"], r["vmhwm_kb"], grown))
    check(grown < 16 * 1024, "peak RSS grew by %d kB for a paused 64 MiB body" % grown, r)
    if r.get("sanitizer") is None:
        check(r.int("vmhwm_kb") < 32 * 1024, "peak RSS %s kB > 32 MiB" % r["vmhwm_kb"], r)


def xfers(r):
    """The "xfer COPY RUN status S len N sha256 H result R" lines of a result."""
    out = []
    for line in r.out.splitlines():
        f = line.split()
        if f and f[0] == "xfer":
            out.append({"copy": int(f[1]), "run": int(f[2]), "status": int(f[4]),
                        "len": int(f[6]), "sha256": f[8], "result": int(f[10])})
    return out


def test_parallel_paused_transfers():
    small = fetch("--cacert", CA.ca_crt, https("a.txt"))
    r = fetch("--cacert", CA.ca_crt, "--parallel", 4, "--pause-every", 256 * 1024, https(BIG),
              timeout=240)
    xs = xfers(r)
    check(len(xs) == 4 and all(x["status"] == 200 and x["sha256"] == ORIGIN.files[BIG]
                               for x in xs), "4 parallel bodies intact", r)
    check(r.int("violations") == 0, "no bytes while paused", r)
    grown = r.int("vmhwm_kb") - small.int("vmhwm_kb")
    print("     4 x 64 MiB at once, paused: %s MB/s in all, peak RSS +%d kB" % (
        r["mb_per_s"], grown))
    check(grown < 24 * 1024, "peak RSS grew by %d kB for 4 paused transfers" % grown, r)
    conns = {d["conn"] for d in origin_lines("/" + BIG, 4)}
    check(len(conns) >= 4, "parallel transfers use their own connections: %r" % conns)


def test_chunked_response_paused():
    # nginx gzips /gz/ on the fly and sends it chunked: pausing inside chunked decoding
    # must neither lose nor repeat bytes, and the encoded bytes pass through untouched.
    args = ("--cacert", CA.ca_crt, "--header", "Accept-Encoding: gzip", https("gz/text.txt"))
    plain = fetch(*args)
    check(plain.header("Transfer-Encoding") == "chunked" and
          plain.header("Content-Encoding") == "gzip", "a chunked gzip response", plain)
    for every in (1000, 4096, 16384):
        r = fetch("--pause-every", every, *args)
        check(r["body_sha256"] == plain["body_sha256"] and r.int("pauses") >= 1,
              "paused every %d bytes: same bytes" % every, r)
        check(r.int("violations") == 0, "no bytes while paused", r)


def origin_lines(uri, at_least):
    """The origin's access-log lines for uri, once at least that many are written: nginx
    logs a request after its response has left, so the client can be faster than the log."""
    def lines():
        ls = [d for d in ORIGIN.access_log() if d.get("uri") == uri]
        return ls if len(ls) >= at_least else None
    return h.wait_until(lines, 10, "%d access-log lines for %s" % (at_least, uri))


def test_connection_reuse():
    before = len([d for d in ORIGIN.access_log() if d.get("uri") == "/b.txt"])
    r = fetch("--cacert", CA.ca_crt, "--repeat", 3, https("b.txt"))
    xs = xfers(r)
    check(len(xs) == 3 and all(x["sha256"] == ORIGIN.files["b.txt"] for x in xs), "3 runs", r)
    lines = origin_lines("/b.txt", before + 3)[-3:]
    check(len({d["conn"] for d in lines}) == 1 and [d["reqs"] for d in lines] == ["1", "2", "3"],
          "one kept-alive connection for the three requests: %r" % lines)


def test_tls_verification_failure_names_reason():
    other = h.TestCA()
    r = fetch("--cacert", other.ca_crt, https("a.txt"), ok=False)
    check(r.rc != 0 and r.int("result") == -10102, "wrong CA must fail as RP_EUPSTREAM_TLS", r)
    check("SSL certificate problem" in r["error"] and "certificate" in r["error"].split(":", 1)[1],
          "the reason names OpenSSL's verification error", r)
    check(r.get("status") is None, "no response head after a failed handshake", r)
    # No --cacert: the system bundle alone does not trust the test CA either.
    r = fetch(https("a.txt"), ok=False)
    check(r.int("result") == -10102 and "SSL certificate problem" in r["error"], "no CA", r)
    # The right CA, the wrong name: host name verification.
    r = fetch("--cacert", CA.ca_crt, "--connect-to",
              "wrong.example:443:127.0.0.1:%d" % ORIGIN.https_port,
              "https://wrong.example/a.txt", ok=False)
    check(r.int("result") == -10102 and "wrong.example" in r["error"], "name mismatch", r)


def test_chunked_upload_put_and_read_back():
    d = h.tmpdir()
    src = os.path.join(d, "up.bin")
    want = h.random_file(src, 5 * 1024 * 1024 + 12345)
    r = fetch("--method", "PUT", "--upload", src, "--cacert", CA.ca_crt,
              "--pause-every", 1 << 20, https("dav/up.bin"))
    check(r.int("status") in (201, 204), "PUT status", r)
    check(r.int("upload_pauses") >= 4, "the upload was paused and resumed", r)
    check(h.sha256_file(ORIGIN.dav_path("up.bin")) == want, "uploaded file differs", r)
    line = ORIGIN.wait_access(method="PUT", uri="/dav/up.bin")[-1]
    check(line["tenc"] == "chunked" and line["clen"] == "", "sent chunked: %r" % line)
    back = fetch("--cacert", CA.ca_crt, https("dav/up.bin"))
    check(back["body_sha256"] == want, "read back differs", back)


def test_request_headers_as_given():
    srv = EchoServer()
    d = h.tmpdir()
    src = os.path.join(d, "body.bin")
    want = h.random_file(src, 300000)
    url = "http://127.0.0.1:%d/echo" % srv.port
    r = fetch("--method", "POST", "--upload", src, "--header", "X-Foo: bar baz",
              "--header", "X-Empty:", "--header", "Content-Length: 5", url)
    hdrs = srv.last("/echo")
    check(r.int("status") == 200, "status", r)
    check(hdr(hdrs, "X-Foo") == "bar baz", "custom header: %r" % hdrs)
    check(hdr(hdrs, "X-Empty") == "", "empty header sent with an empty value: %r" % hdrs)
    check(hdr(hdrs, "Expect") is None, "no Expect: 100-continue: %r" % hdrs)
    check(hdr(hdrs, "Accept") is None, "no Accept added by libcurl: %r" % hdrs)
    check(hdr(hdrs, "Transfer-Encoding") == "chunked" and hdr(hdrs, "Content-Length") is None,
          "the engine frames the body (chunked, caller's Content-Length dropped): %r" % hdrs)
    check(srv.bodies[-1] == ("POST", 300000, want), "POST body: %r" % (srv.bodies[-1],))
    # An empty POST says so (Content-Length: 0), a GET does not.
    fetch("--method", "POST", url)
    check(hdr(srv.last("/echo"), "Content-Length") == "0" and srv.bodies[-1][:2] == ("POST", 0),
          "empty POST: %r" % srv.last("/echo"))
    fetch("--method", "DELETE", url)
    check(hdr(srv.last("/echo"), "Content-Length") is None and srv.bodies[-1][0] == "DELETE",
          "DELETE without a body: %r" % srv.last("/echo"))
    # HEAD: a head and no body.
    r = fetch("--method", "HEAD", url)
    check(r.int("status") == 200 and r.int("body_len") == 0 and r.header("Content-Length"),
          "HEAD", r)


def heads(r):
    return sum(1 for line in r.out.splitlines() if line.startswith("status "))


def test_1xx_skipped_and_redirects():
    srv = EchoServer()
    base = "http://127.0.0.1:%d" % srv.port
    r = fetch(base + "/early")
    check(r.int("status") == 200 and r.header("X-Final") == "yes" and r.int("body_len") == 2,
          "1xx heads are skipped, the final head is delivered once", r)
    check(heads(r) == 1, "one head", r)
    # Not following: the 302 itself.
    r = fetch(base + "/redir")
    check(r.int("status") == 302 and r.header("Location") == "/echo", "302 relayed", r)
    # Following: only the final head; Authorization kept on the same host...
    r = fetch("--follow", "--header", "Authorization: Bearer secret-token", base + "/redir")
    check(r.int("status") == 200 and r.header("Location") is None, "followed", r)
    check(heads(r) == 1, "the intermediate head is not delivered", r)
    check(hdr(srv.last("/echo"), "Authorization") == "Bearer secret-token", "same host")
    # ...and dropped when the redirect leaves for another host name.
    n = len(srv.seen)
    r = fetch("--follow", "--header", "Authorization: Bearer secret-token", base + "/redir-cross")
    check(r.int("status") == 200, "followed across hosts", r)
    check(len(srv.seen) == n + 2 and srv.seen[-1][0] == "/echo", "went to /echo")
    check(hdr(srv.seen[-1][1], "Authorization") is None,
          "Authorization must not cross hosts: %r" % srv.seen[-1][1])
    check(hdr(srv.seen[-1][1], "Host") == "localhost:%d" % srv.port, "new Host")
    r = fetch("--follow", base + "/redir-loop", ok=False)
    check(r.rc != 0 and r.int("result") == -10101 and "redirect" in r["error"].lower(),
          "redirect loop", r)


def test_upstream_failures_mid_response():
    srv = EchoServer()
    r = fetch("http://127.0.0.1:%d/cut" % srv.port, ok=False)
    check(r.int("status") == 200 and r.int("body_len") == 1000, "head and the bytes sent", r)
    check(r.int("result") == -10101 and "remaining" in r["error"], "cut short", r)
    r = fetch("http://127.0.0.1:%d/bighead" % srv.port, ok=False)
    check(r.int("result") == -10101 and "too large" in r["error"] and r.get("status") is None,
          "an 80 KB head is refused", r)


def test_many_parallel_with_reuse():
    r = fetch("--cacert", CA.ca_crt, "--parallel", 32, "--repeat", 10, https("a.txt"))
    xs = xfers(r)
    check(len(xs) == 320 and all(x["sha256"] == ORIGIN.files["a.txt"] for x in xs),
          "320 fetches", r)


def test_parent_proxy_squid():
    squid = h.Squid(hosts={"origin.test": "127.0.0.1"})
    url = "https://origin.test:%d/b.txt" % ORIGIN.https_port
    # The proxy environment (and NO_PROXY naming the host) must not change anything:
    # libcurl never reads it, the engine decides.
    env = {"NO_PROXY": "*", "no_proxy": "origin.test", "HTTPS_PROXY": "http://127.0.0.1:1",
           "https_proxy": "http://127.0.0.1:1", "ALL_PROXY": "http://127.0.0.1:1"}
    r = fetch("--proxy", squid.url, "--cacert", CA.ca_crt, url, env=env)
    check(r["body_sha256"] == ORIGIN.files["b.txt"], "body via squid", r)
    squid.wait_entry(method="CONNECT", url_contains="origin.test:%d" % ORIGIN.https_port)
    # Plain HTTP through the parent: absolute-form GET, no tunnel.
    r = fetch("--proxy", squid.url, "http://origin.test:%d/a.txt" % ORIGIN.http_port, env=env)
    check(r["body_sha256"] == ORIGIN.files["a.txt"], "http body via squid", r)
    squid.wait_entry(method="GET", url_contains="http://origin.test:%d/a.txt" % ORIGIN.http_port)


def test_parent_proxy_credentials():
    # The echo server plays the parent proxy: the absolute-form request arrives with
    # Proxy-Authorization built from proxy_userinfo (split at the first colon).
    srv = EchoServer()
    r = fetch("--proxy", "http://127.0.0.1:%d" % srv.port, "--proxy-user", "pu:p:w",
              "http://origin.test:8080/echo")
    check(r.int("status") == 200, "through the echo proxy", r)
    path, hdrs = srv.seen[-1]
    check(path == "http://origin.test:8080/echo", "absolute-form target: %r" % path)
    check(hdr(hdrs, "Proxy-Authorization") == "Basic " + base64.b64encode(b"pu:p:w").decode(),
          "Proxy-Authorization: %r" % hdrs)
    check(hdr(hdrs, "Host") == "origin.test:8080", "Host: %r" % hdrs)


def test_proxy_environment_ignored_when_direct():
    env = {"HTTPS_PROXY": "http://127.0.0.1:1", "https_proxy": "http://127.0.0.1:1",
           "HTTP_PROXY": "http://127.0.0.1:1", "http_proxy": "http://127.0.0.1:1",
           "ALL_PROXY": "http://127.0.0.1:1"}
    r = fetch("--cacert", CA.ca_crt, https("a.txt"), env=env)
    check(r["body_sha256"] == ORIGIN.files["a.txt"], "direct despite the environment", r)
    r = fetch("http://127.0.0.1:%d/a.txt" % ORIGIN.http_port, env=env)
    check(r["body_sha256"] == ORIGIN.files["a.txt"], "plain http direct", r)


def test_parent_proxy_down():
    r = fetch("--proxy", "http://127.0.0.1:%d" % h.free_port(), "--cacert", CA.ca_crt,
              "https://origin.test/a.txt", ok=False)
    check(r.int("result") == -111, "refused parent proxy", r)


def test_connect_to_maps_name_to_port():
    r = fetch("--cacert", CA.ca_crt, "--connect-to",
              "origin.test:443:127.0.0.1:%d" % ORIGIN.https_port, "https://origin.test/a.txt")
    check(r["body_sha256"] == ORIGIN.files["a.txt"], "body", r)
    ORIGIN.wait_access(uri="/a.txt", host="origin.test")
    # A rule for another host does not apply.
    r = fetch("--cacert", CA.ca_crt, "--connect-to",
              "other.test:443:127.0.0.1:%d" % ORIGIN.https_port,
              "https://127.0.0.1:%d/a.txt" % h.free_port(), ok=False)
    check(r.int("result") == -111, "unmapped host connects directly (refused)", r)


def test_connect_to_ipv6_address():
    try:
        s = socket.socket(socket.AF_INET6)
        s.bind(("::1", 0))
        s.close()
    except OSError:
        print("     (no IPv6 loopback, skipped)")
        return
    srv = EchoServer(tls=True, host="::1")
    r = fetch("--cacert", CA.ca_crt, "--connect-to", "origin.test:443:[::1]:%d" % srv.port,
              "https://origin.test/echo")
    check(r.int("status") == 200, "over [::1]", r)
    check(hdr(srv.last("/echo"), "Host") == "origin.test", "Host kept")


def test_connection_refused():
    port = h.free_port()
    r = fetch("--cacert", CA.ca_crt, https("a.txt", port), ok=False)
    check(r.rc == 1 and r.int("result") == -111, "ECONNREFUSED", r)
    check(r["error_text"] == "connection refused" and str(port) in r["error"], "reason", r)


def test_cancel_from_inside_callbacks():
    r = fetch("--cacert", CA.ca_crt, "--cancel-after", 0, https(BIG))
    check(r.get("cancelled") == "1" and r.int("body_len") == 0, "cancel in on_head", r)
    r = fetch("--cacert", CA.ca_crt, "--cancel-after", 1 << 20, https(BIG))
    check(r.get("cancelled") == "1" and r.int("body_len") < 4 << 20, "cancel in on_body", r)


def test_destroy_engine_with_transfers_running():
    r = fetch("--cacert", CA.ca_crt, "--parallel", 3, "--stop-after", 1 << 20, https(BIG),
              ok=False)
    check(r.rc == 0 and r.get("stopped") == "1" and len(xfers(r)) == 0,
          "no callback after destroy", r)
    check("uv_loop_close" not in r.err, "every handle closed", r)


def test_forbid_internal_refuses_before_connecting():
    # The address policy of token requests (contract §3): the socket to a refused address is
    # never opened, so the echo server sees nothing; the unroutable ones below are only
    # strings, refused before any packet.
    srv = EchoServer()
    url = "http://127.0.0.1:%d/echo" % srv.port
    r = fetch("--forbid-internal", url, ok=False)
    check(r.int("result") == -10006 and "127.0.0.1 (loopback address)" in r["error"],
          "loopback refused", r)
    # A name mapped to loopback: what counts is the address the socket would go to.
    r = fetch("--forbid-internal", "--connect-to", "origin.test:80:127.0.0.1:%d" % srv.port,
              "http://origin.test/echo", ok=False)
    check(r.int("result") == -10006, "mapped name refused", r)
    check(srv.seen == [], "nothing reached the server: %r" % srv.seen)
    # The class the caller allows goes through, and the peer address is reported.
    r = fetch("--forbid-internal", "--allow-class", "loopback", url)
    check(r.int("status") == 200 and r["peer_ip"] == "127.0.0.1", "loopback allowed", r)
    # A reused connection is checked before the request is sent.
    n = len(srv.seen)
    r = fetch("--forbid-internal", "--policy-from-run", 1, "--repeat", 2, url, ok=False)
    xs = xfers(r)
    check(len(xs) == 2 and xs[0]["result"] == 0 and xs[1]["result"] == -10006,
          "second run on the reused connection refused", r)
    check(len(srv.seen) == n + 1, "one request sent: %r" % srv.seen[n:])
    for target, cls in (("https://10.1.2.3/token", "private"),
                        ("http://169.254.169.254/latest/meta-data/", "link-local"),
                        ("https://[fd00::1]/token", "private"),
                        ("https://[::ffff:169.254.169.254]/token", "link-local"),
                        ("http://0.0.0.0:%d/echo" % srv.port, "unspecified")):
        r = fetch("--forbid-internal", "--allow-class", "loopback", target, ok=False)
        check(r.int("result") == -10006 and "(%s address)" % cls in r["error"],
              "%s refused" % target, r)
        check(float(r["elapsed_ms"]) < 1000, "refused at once", r)


def test_forbid_internal_through_a_parent():
    # Through a parent only the URL shows where it will connect: an internal literal is
    # refused before the parent is even contacted; names are the parent's business.
    parent = EchoServer()
    proxy = "http://127.0.0.1:%d" % parent.port
    r = fetch("--forbid-internal", "--proxy", proxy, "http://10.1.2.3/token", ok=False)
    check(r.int("result") == -10006 and "10.1.2.3 (private address)" in r["error"], "refused", r)
    check(parent.seen == [], "the parent was not asked: %r" % parent.seen)
    r = fetch("--forbid-internal", "--proxy", proxy, "http://origin.test:8080/echo")
    check(r.int("status") == 200 and r.get("peer_ip") is None, "a name goes to the parent", r)
    check([p for p, _ in parent.seen] == ["http://origin.test:8080/echo"], "%r" % parent.seen)


def test_connect_timeout():
    fb = h.FullBacklog()
    r = fetch("--connect-timeout", 500, "https://127.0.0.1:%d/" % fb.port, ok=False, timeout=30)
    check(r.int("result") == -10008, "RP_ETIMEDOUT", r)
    check(float(r["elapsed_ms"]) < 5000, "within the connect timeout", r)


def test_so_mark():
    r = fetch("--mark", "0x2a", "--cacert", CA.ca_crt, https("a.txt"))
    check(r["body_sha256"] == ORIGIN.files["a.txt"], "marked socket works", r)


def _push(registry, repo_tag, image, creds):
    h.skopeo(["copy", "--dest-cert-dir", CA.certdir, "--dest-creds", creds,
              "oci:%s:%s" % (image.path, image.tag),
              "docker://127.0.0.1:%d/%s" % (registry.port, repo_tag)])


def test_token_auth_registry():
    ts = h.TokenServer(users={"alice": "secret"}, public={"library/alpine"})
    reg = h.TokenRegistry(ts)
    d = h.tmpdir()
    img = h.OciImage(os.path.join(d, "img"), tag="3.18", layer_sizes=(2048,))
    _push(reg, "library/alpine:3.18", img, "alice:secret")
    _push(reg, "private/app:1.0", img, "alice:secret")
    registry = "127.0.0.1:%d" % reg.port
    url = "https://%s/v2/library/alpine/manifests/3.18" % registry
    accept = "Accept: " + MT_OCI
    n0 = len(ts.token_requests())

    # Without a token: 401 with a Bearer challenge naming the token server.
    r = fetch("--cacert", CA.ca_crt, "--header", accept, url)
    check(r.int("status") == 401, "no token, 401", r)
    wa = r.header("Www-Authenticate") or ""
    check(wa.startswith("Bearer ") and ts.realm in wa, "challenge: %r" % wa, r)

    # Anonymous pull token: three askers at once share one token request, a fourth
    # is answered from the cache, and the manifest then comes back.
    r = fetch("--cacert", CA.ca_crt, "--header", accept, "--token-parallel", 3,
              "--token-for", "%s,repository:library/alpine:pull" % registry, url)
    check(r.int("probe_status") == 401 and r["auth_scheme"] == "Bearer", "token used", r)
    check(r.int("status") == 200, "manifest with the token", r)
    check(r.header("Docker-Content-Digest") == img.manifest, "digest", r)
    check("sha256:" + r["body_sha256"] == img.manifest, "manifest bytes", r)
    check(r.int("token_fetches") == 1 and r.int("token_coalesced") == 2 and
          r.int("token_cache_hits") == 1 and r["token_cached"] == "yes", "single flight", r)
    reqs = ts.token_requests()[n0:]
    check(len(reqs) == 1 and reqs[0][1] is None, "one anonymous token request: %r" % reqs)
    check("scope=repository%3Alibrary%2Falpine%3Apull" in reqs[0][0] and
          "service=regproxy-test-registry" in reqs[0][0], "token URL: %r" % reqs)

    # A private repository: the anonymous token carries no access.
    purl = "https://%s/v2/private/app/manifests/1.0" % registry
    r = fetch("--cacert", CA.ca_crt, "--header", accept,
              "--token-for", "%s,repository:private/app:pull" % registry, purl)
    check(r.int("status") == 401, "anonymous token on a private repository", r)

    # Credentials from a docker config.json: Basic to the token server, then 200.
    cfg = h.write_file(os.path.join(d, "config.json"), json.dumps({"auths": {
        registry: {"auth": base64.b64encode(b"alice:secret").decode()}}}))
    r = fetch("--cacert", CA.ca_crt, "--header", accept, "--registry-auth", cfg,
              "--token-for", "%s,repository:private/app:pull" % registry, purl)
    check(r.int("status") == 200 and r.header("Docker-Content-Digest") == img.manifest,
          "private manifest with alice's token", r)
    check(ts.token_requests()[-1][1] == "alice" and "account=alice" in ts.token_requests()[-1][0],
          "token request as alice: %r" % ts.token_requests()[-1:])
    # ...unless anonymous is asked for (the "is it public?" probe).
    r = fetch("--cacert", CA.ca_crt, "--header", accept, "--registry-auth", cfg, "--anonymous",
              "--token-for", "%s,repository:private/app:pull" % registry, purl)
    check(r.int("status") == 401 and ts.token_requests()[-1][1] is None, "anonymous probe", r)

    # Wrong password: the token server's 401 is an auth error, not a token.
    bad = h.write_file(os.path.join(d, "bad.json"), json.dumps({"auths": {
        registry: {"auth": base64.b64encode(b"alice:wrong").decode()}}}))
    r = fetch("--cacert", CA.ca_crt, "--registry-auth", bad,
              "--token-for", "%s,repository:private/app:pull" % registry, purl, ok=False)
    check(r.rc == 1 and r.get("token_error", "").startswith("-10104") and "401" in r.out,
          "refused credentials", r)


if __name__ == "__main__":
    h.main(globals())
