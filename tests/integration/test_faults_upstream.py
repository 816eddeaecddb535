"""Fault matrix, upstream side (issue 11): a stand-in registry over TLS misbehaves in
one way per test. Each test asserts what the client sees and what regproxy logs, that
the process stays up without descriptor or memory growth, that nothing partial or
unverified is in the cache, and that the next normal pull works.

Covered elsewhere and not repeated here: a wrong digest and a body cut by a clean close
(test_cache_upstream.py: never cached, never delivered whole, resumed with Range at most
three times), an upstream that refuses connections (test_cache.py registry down),
kill -9 during a fill (test_cache.py)."""

import os
import threading
import time

import faultlib as fl
import harness as h

REPEAT = 4  # each fault more often than the descriptor slack of Baseline.check


def setup():
    global CA
    CA = h.shared_ca()


def warm(rp, st):
    """One normal pull, so that pooled connections and lazily opened files exist
    before the baseline is taken."""
    dg = st.add_blob(os.urandom(4096))
    r = fl.get(rp, fl.blob_url(dg))
    assert r.stdout.strip() == b"200", r
    return fl.Baseline(rp)


def test_wrong_content_length_smaller_than_the_body():
    """The registry announces fewer bytes than it sends (the rest stays on the pooled
    connection as garbage): the fill fails its digest check, the client never gets a
    complete body, and the garbage does not poison the next request."""
    st = fl.Standin(CA)
    rp = fl.proxy(st)
    base = warm(rp, st)
    data = os.urandom(256 * 1024)
    dg = st.add_blob(data)

    def short_cl(st_, req, s):
        if dg not in req.path:
            return fl.serve_good(st_, req, s)
        fl.send_head(s, 200, [("Content-Length", str(len(data) - 1000)),
                              ("Docker-Content-Digest", dg)])
        s.sendall(data)
        return True
    st.handler = short_cl
    for _ in range(REPEAT):
        out = os.path.join(h.tmpdir(), "o")
        r = fl.get(rp, fl.blob_url(dg), out)
        # A 502 when the check failed before the answer began, else a cut body.
        assert r.stdout.strip() == b"502" or r.returncode != 0, \
            "curl completed a blob of the wrong length: %r" % r
        assert not os.path.exists(out) or h.sha256_file(out) != dg[7:]
    rp.wait_log(msg="digest_mismatch", check="digest")
    fl.assert_cache_sound(rp, absent=[dg])
    fl.assert_next_pull(rp, st, dg)
    base.check()


def test_endless_chunked_body():
    """A blob answered with an endless chunked body is not cacheable (no length): it
    is relayed, memory stays bounded, and when the client gives up the upstream
    transfer stops."""
    st = fl.Standin(CA)
    rp = fl.proxy(st)
    base = warm(rp, st)
    dg = st.add_blob(os.urandom(100 * 1024))
    chunk = b"%x\r\n%s\r\n" % (65536, os.urandom(65536))
    stopped = []

    def endless(st_, req, s):
        if dg not in req.path:
            return fl.serve_good(st_, req, s)
        fl.send_head(s, 200, [("Transfer-Encoding", "chunked"), ("Docker-Content-Digest", dg)])
        try:
            while True:
                s.sendall(chunk)
        except OSError:
            stopped.append(1)
            return False
    st.handler = endless
    for _ in range(REPEAT):
        # 24 MiB then the client gives up.
        c = fl.tls_client(rp)
        c.send(h.build_request("GET", "/v2/library/x/blobs/" + dg, host=fl.HOST))
        head = c.read_until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head.lower(), head
        got = len(c.buf)
        while got < 24 << 20:
            got += len(c.sock.recv(1 << 20))
        c.close()
    rp.wait_log(path="/v2/library/x/blobs/" + dg, cache="pass")
    h.wait_until(lambda: len(stopped) == REPEAT, 10, "every upstream transfer stopped")
    fl.assert_cache_sound(rp, absent=[dg])
    fl.assert_next_pull(rp, st, dg)
    base.check()


def test_slow_client_not_taken_for_a_stalled_upstream():
    """The stall timeout is for a silent upstream: a client that stops reading a
    relayed body for longer than --idle-timeout (regproxy pauses the upstream
    transfer meanwhile) still gets every byte."""
    st = fl.Standin(CA)
    rp = fl.proxy(st, "--idle-timeout", "1s")
    base = warm(rp, st)
    dg = st.add_blob(os.urandom(1000))
    chunk = b"%x\r\n%s\r\n" % (65536, os.urandom(65536))
    total = 200 * 65536

    def chunked(st_, req, s):
        if dg not in req.path:
            return fl.serve_good(st_, req, s)
        fl.send_head(s, 200, [("Transfer-Encoding", "chunked"), ("Docker-Content-Digest", dg)])
        for _ in range(200):
            s.sendall(chunk)
        s.sendall(b"0\r\n\r\n")
        return True
    st.handler = chunked
    c = fl.tls_client(rp)
    c.send(h.build_request("GET", "/v2/library/x/blobs/" + dg, host=fl.HOST))
    c.read_until(b"\r\n\r\n")
    # The fault itself, not a synchronisation: the client reads nothing for three
    # times the idle timeout while regproxy holds the upstream transfer paused.
    time.sleep(3)
    body = c._read_chunked()
    assert len(body) == total, "the paused relay was cut: %d of %d bytes" % (len(body), total)
    line = rp.wait_log(path="/v2/library/x/blobs/" + dg, status="200")
    assert line["cache"] == "pass" and not line.get("reason"), line
    base.check()


def test_reset_during_headers():
    st = fl.Standin(CA)
    rp = fl.proxy(st)
    base = warm(rp, st)
    dg = st.add_blob(os.urandom(64 * 1024))

    def rst(st_, req, s):
        if dg not in req.path:
            return fl.serve_good(st_, req, s)
        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Len")
        fl.reset(s)
        return False
    st.handler = rst
    for _ in range(REPEAT):
        r = fl.get(rp, fl.blob_url(dg))
        assert r.stdout.strip() == b"502", r
    line = rp.wait_log(path="/v2/library/x/blobs/" + dg, status="502")
    assert line.get("reason"), line
    fl.assert_cache_sound(rp, absent=[dg])
    fl.assert_next_pull(rp, st, dg)
    base.check()


def test_reset_mid_body_of_a_fill_with_several_readers():
    """Every answer is reset half-way: the fill resumes three times, then gives up;
    none of the five readers gets the whole blob, nothing is kept."""
    st = fl.Standin(CA)
    rp = fl.proxy(st)
    base = warm(rp, st)
    data = os.urandom(4 << 20)
    dg = st.add_blob(data)
    gate = threading.Event()

    def cut(st_, req, s):
        if dg not in req.path:
            return fl.serve_good(st_, req, s)
        rng = req.header("range")
        start = int(rng[6:].split("-")[0]) if rng else 0
        body = data[start:]
        fl.send_head(s, 206 if rng else 200,
                     [("Content-Length", str(len(body))), ("Docker-Content-Digest", dg)] +
                     ([("Content-Range", "bytes %d-%d/%d" % (start, len(data) - 1, len(data)))]
                      if rng else []))
        s.sendall(body[:len(body) // 4])
        if not rng:
            gate.wait(10)  # the readers join the fill meanwhile
        s.sendall(body[len(body) // 4:len(body) // 2])
        fl.reset(s)
        return False
    st.handler = cut
    procs = [fl.spawn(rp, fl.blob_url(dg), os.path.join(h.tmpdir(), "r%d" % i))
             for i in range(5)]
    h.wait_until(lambda: fl.fill_readers(rp, dg) == 5, 10, "five readers on the fill")
    gate.set()
    for p in procs:
        p.wait(30)
        assert p.returncode != 0, "a reader completed a blob that was never whole"
    assert st.blob_gets(dg) == 4, "expected one GET and three resumptions: %d" % (
        st.blob_gets(dg))
    rp.wait_log(msg="cache fill failed")
    fl.assert_cache_sound(rp, absent=[dg])
    fl.assert_next_pull(rp, st, dg)
    base.check()


def test_stall_mid_body_resumed():
    """The registry sends its head and part of the body, then nothing. After
    --idle-timeout of silence the transfer is given up and resumed with Range; the
    client gets the whole blob and it is published."""
    st = fl.Standin(CA)
    rp = fl.proxy(st, "--idle-timeout", "1s")
    base = warm(rp, st)
    data = os.urandom(1 << 20)
    dg = st.add_blob(data)
    release = threading.Event()
    h.defer(release.set)

    def stall_once(st_, req, s):
        if dg not in req.path or req.header("range"):
            return fl.serve_good(st_, req, s)
        fl.send_head(s, 200, [("Content-Length", str(len(data))), ("Docker-Content-Digest", dg)])
        s.sendall(data[:100000])
        release.wait(60)
        return False
    st.handler = stall_once
    t0 = time.monotonic()
    out = os.path.join(h.tmpdir(), "o")
    r = fl.get(rp, fl.blob_url(dg), out, extra=["--max-time", "30"])
    dt = time.monotonic() - t0
    assert r.returncode == 0 and h.sha256_file(out) == dg[7:], "client: %r after %.1fs" % (
        r, dt)
    # 1 s of silence, seen through libcurl's five-second speed window.
    assert dt < 10, "the stalled transfer was given up only after %.1fs" % dt
    assert st.blob_gets(dg) == 2, st.requests
    rp.wait_log(msg=lambda m: "resuming at byte" in m)
    h.wait_until(lambda: any(os.path.basename(f) == dg[7:] for f in fl.cache_files(rp)), 8,
                 "the resumed blob published")
    fl.assert_cache_sound(rp)
    base.check()


def test_stall_mid_body_forever():
    """Every answer stalls right after its head: the fill is given up after three
    resumptions, the client is cut (never a hang), nothing is kept, and the next pull
    starts a new fill instead of joining a dead one. (Without body bytes libcurl's
    five-second speed window does not delay the verdict; test_stall_mid_body_resumed
    has the mid-body case.)"""
    st = fl.Standin(CA)
    rp = fl.proxy(st, "--idle-timeout", "1s")
    base = warm(rp, st)
    data = os.urandom(1 << 20)
    dg = st.add_blob(data)
    release = threading.Event()
    h.defer(release.set)

    def stall(st_, req, s):
        if dg not in req.path:
            return fl.serve_good(st_, req, s)
        rng = req.header("range")
        start = int(rng[6:].split("-")[0]) if rng else 0
        fl.send_head(s, 206 if rng else 200,
                     [("Content-Length", str(len(data) - start)), ("Docker-Content-Digest", dg)] +
                     ([("Content-Range", "bytes %d-%d/%d" % (start, len(data) - 1, len(data)))]
                      if rng else []))
        release.wait(60)
        return False
    st.handler = stall
    t0 = time.monotonic()
    r = fl.get(rp, fl.blob_url(dg), extra=["--max-time", "40"])
    dt = time.monotonic() - t0
    assert r.returncode not in (0, 28), "client: %r after %.1fs" % (r, dt)
    assert dt < 12, "given up only after %.1fs" % dt
    assert st.blob_gets(dg) == 4, st.requests
    rp.wait_log(msg="cache fill failed")
    release.set()
    fl.assert_cache_sound(rp, absent=[dg])
    fl.assert_next_pull(rp, st, dg)
    base.check()


def test_stall_before_the_head():
    """No answer at all: the client, and two more waiting on the same fetch, get a
    502 naming the stall after --idle-timeout (not an empty reply), with one upstream
    request; the next request does not wait on the dead fetch."""
    st = fl.Standin(CA)
    rp = fl.proxy(st, "--idle-timeout", "2s")
    base = warm(rp, st)
    dg = st.add_blob(os.urandom(1000))
    release = threading.Event()
    h.defer(release.set)

    def stall(st_, req, s):
        if dg not in req.path:
            return fl.serve_good(st_, req, s)
        release.wait(60)
        return False
    st.handler = stall
    for n in range(2):
        t0 = time.monotonic()
        procs = [fl.spawn(rp, fl.blob_url(dg), extra=["--max-time", "30"]) for _ in range(3)]
        for p in procs:
            p.wait(30)
            dt = time.monotonic() - t0
            assert p.stdout.read().strip() == b"502", (p.returncode, p.stderr.read(), dt)
            assert dt < 8, dt
        assert st.blob_gets(dg) == n + 1, "one upstream GET per round: %d" % st.blob_gets(dg)
    line = rp.wait_log(path="/v2/library/x/blobs/" + dg, status="502")
    assert "slow" in line.get("reason", "").lower(), line
    release.set()
    fl.assert_cache_sound(rp, absent=[dg])
    fl.assert_next_pull(rp, st, dg)
    base.check()


def test_redirect_loop():
    st = fl.Standin(CA)
    rp = fl.proxy(st)
    base = warm(rp, st)
    dg = st.add_blob(os.urandom(1000))

    def loop(st_, req, s):
        if dg not in req.path:
            return fl.serve_good(st_, req, s)
        fl.send_head(s, 307, [("Location", "https://other.test/loop/%d/%s" % (
            len(st_.requests), dg)), ("Content-Length", "0")], "Temporary Redirect")
        return True
    st.handler = loop
    for _ in range(REPEAT):
        n0 = len(st.requests)
        r = fl.get(rp, fl.blob_url(dg))
        assert r.stdout.strip() == b"502", r
        assert len(st.requests) - n0 <= 11, "followed %d redirects" % (len(st.requests) - n0)
    line = rp.wait_log(path="/v2/library/x/blobs/" + dg, status="502")
    assert "redirect" in line.get("reason", "").lower(), line
    fl.assert_cache_sound(rp, absent=[dg])
    fl.assert_next_pull(rp, st, dg)
    base.check()


def test_redirect_to_plain_http():
    """A redirect from the HTTPS registry to http:// (same host name, port 80) is
    followed like Go clients do: the bytes are verified by digest before anything is
    kept, and the client's Authorization never goes to the plain-HTTP URL."""
    st = fl.Standin(CA)
    data = os.urandom(5000)
    dg = st.add_blob(data)
    plain = h.serve_http(_plain_handler(data))
    seen = plain.RequestHandlerClass.seen
    rp = fl.proxy(st, "--connect-to", "%s:80:127.0.0.1:%d" % (fl.HOST, plain.server_address[1]))
    base = warm(rp, st)

    def to_http(st_, req, s):
        if dg not in req.path:
            return fl.serve_good(st_, req, s)
        fl.send_head(s, 307, [("Location", "http://%s/cdn/%s" % (fl.HOST, dg)),
                              ("Content-Length", "0")], "Temporary Redirect")
        return True
    st.handler = to_http
    out = os.path.join(h.tmpdir(), "o")
    r = fl.get(rp, fl.blob_url(dg), out, extra=["-H", "Authorization: Bearer s3cret-token"])
    assert r.stdout.strip() == b"200" and h.sha256_file(out) == dg[7:], r
    assert seen and seen[0][0] == "/cdn/" + dg, seen
    assert all(a is None for _, a in seen), "Authorization sent to http://: %r" % seen
    assert [q for q in st.requests if q[1].endswith(dg)][0][2].get("authorization") == \
        "Bearer s3cret-token"
    fl.assert_cache_sound(rp)
    base.check()


def _plain_handler(data):
    import http.server

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_GET(self):
            H.seen.append((self.path, self.headers.get("Authorization")))
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
    H.seen = []
    return H


def test_429_with_retry_after():
    """An uncached blob answered 429: the client gets the 429 with its Retry-After
    (nothing cached to serve stale), and regproxy keeps the hint: until then it answers
    429 itself, with the time left, and does not ask the registry again."""
    st = fl.Standin(CA)
    rp = fl.proxy(st)
    base = warm(rp, st)
    dg = st.add_blob(os.urandom(1000))

    def busy(st_, req, s):
        if dg not in req.path:
            return fl.serve_good(st_, req, s)
        fl.send_head(s, 429, [("Retry-After", "3"), ("Content-Length", "2"),
                              ("Content-Type", "application/json")], "Too Many Requests")
        s.sendall(b"{}")
        return True
    st.handler = busy

    def get_blob():
        c = fl.tls_client(rp)
        try:
            return c.request("GET", "/v2/library/x/blobs/" + dg, host=fl.HOST)
        finally:
            c.close()
    for _ in range(REPEAT):
        r = get_blob()
        assert r.status == 429 and r.reason == "Too Many Requests", r
        assert r.header("Retry-After") in ("1", "2", "3"), r.headers
    assert st.blob_gets(dg) == 1, "asked the registry again before its Retry-After"
    fl.assert_cache_sound(rp, absent=[dg])
    # Once the time is over, the registry is asked again.
    st.handler = None
    h.wait_until(lambda: get_blob().status == 200, 10, "the registry asked after Retry-After")
    assert st.blob_gets(dg) == 2
    fl.assert_next_pull(rp, st, dg)
    base.check()


def test_429_for_one_credential_does_not_stop_the_others():
    """A registry limits per account: one client's credential answered 429 with a
    Retry-After of an hour. That client is answered 429 by regproxy until then; a client
    with another credential (or none) is still served, from the registry."""
    st = fl.Standin(CA)
    rp = fl.proxy(st)
    dg = st.add_blob(os.urandom(1000))

    def per_account(st_, req, s):
        if req.headers.get("authorization") == "Bearer spent":
            fl.send_head(s, 429, [("Retry-After", "3600"), ("Content-Length", "2"),
                                  ("Content-Type", "application/json")], "Too Many Requests")
            s.sendall(b"{}")
            return True
        return fl.serve_good(st_, req, s)
    st.handler = per_account

    def get_blob(auth):
        c = fl.tls_client(rp)
        try:
            return c.request("GET", "/v2/library/x/blobs/" + dg,
                             [("Authorization", auth)] if auth else [], host=fl.HOST)
        finally:
            c.close()
    for _ in range(2):
        r = get_blob("Bearer spent")
        assert r.status == 429, r
    asked = st.blob_gets(dg)
    assert asked == 1, "the spent credential asked the registry again: %d" % asked
    for auth in ("Bearer fine", None):
        r = get_blob(auth)
        assert r.status == 200 and h.sha256(r.body) == dg[7:], (auth, r)


def test_429_on_a_tag_served_stale():
    """A registry answering 429 to everything after one pull: the tag comes from
    memory (cache=stale) and the blob from the cache, the same bytes as before."""
    import json
    st = fl.Standin(CA)
    rp = fl.proxy(st)
    layer = st.add_blob(os.urandom(3000))
    config = st.add_blob(b'{"architecture":"amd64","os":"linux"}')
    mt = "application/vnd.oci.image.manifest.v1+json"
    man = json.dumps({"schemaVersion": 2, "mediaType": mt,
                      "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                 "digest": config, "size": 37},
                      "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                  "digest": layer, "size": 3000}]}).encode()
    mdg = st.add_blob(man)
    st.mtypes[mdg] = mt
    st.tags["1"] = mdg

    def pull_once():
        c = fl.tls_client(rp)
        r = c.request("GET", "/v2/library/x/manifests/1", [("Accept", mt)], host=fl.HOST)
        assert r.status == 200 and r.body == man, r
        assert r.header("Docker-Content-Digest") == mdg, r.headers
        r = c.request("GET", "/v2/library/x/blobs/" + layer, host=fl.HOST)
        assert r.status == 200 and h.sha256(r.body) == layer[7:], r
        c.close()
    pull_once()
    h.wait_until(lambda: {mdg[7:], layer[7:]} <= {os.path.basename(f)
                                                 for f in fl.cache_files(rp)}, 5, "cached")
    base = fl.Baseline(rp)

    def busy(st_, req, s):
        fl.send_head(s, 429, [("Retry-After", "2"), ("Content-Length", "0")],
                     "Too Many Requests")
        return True
    st.handler = busy
    asked = len(st.requests)
    for _ in range(REPEAT):
        pull_once()
    # The first tag check met the 429 and its Retry-After; the other pulls within it
    # were answered without asking (a slow machine may let it run out once).
    assert len(st.requests) - asked < REPEAT, st.requests[asked:]
    for path in ("/v2/library/x/manifests/1", "/v2/library/x/blobs/" + layer):
        h.wait_until(lambda: len(rp.request_logs(path=path)) >= REPEAT + 1, 5,
                     "every request of %s logged" % path)
    tags = rp.request_logs(path="/v2/library/x/manifests/1")
    assert [ln["cache"] for ln in tags[-REPEAT:]] == ["stale"] * REPEAT, tags
    blobs = rp.request_logs(path="/v2/library/x/blobs/" + layer)[-REPEAT:]
    assert all(ln["cache"] == "hit" for ln in blobs), blobs
    fl.assert_cache_sound(rp)
    base.check()
    st.handler = None

    def fresh():
        pull_once()
        return rp.request_logs(path="/v2/library/x/manifests/1")[-1]["cache"] != "stale"
    h.wait_until(fresh, 10, "a tag checked with the registry once its Retry-After is over")


def test_one_mib_response_header():
    st = fl.Standin(CA)
    rp = fl.proxy(st)
    base = warm(rp, st)
    dg = st.add_blob(os.urandom(1000))

    def huge(st_, req, s):
        if dg not in req.path:
            return fl.serve_good(st_, req, s)
        fl.send_head(s, 200, [("Content-Length", "1000"), ("Docker-Content-Digest", dg),
                              ("X-Huge", "h" * (1 << 20))])
        s.sendall(st_.blobs[dg])
        return True
    st.handler = huge
    for _ in range(REPEAT):
        r = fl.get(rp, fl.blob_url(dg))
        assert r.stdout.strip() == b"502", r
    line = rp.wait_log(path="/v2/library/x/blobs/" + dg, status="502")
    assert line.get("reason") == "upstream response head too large", line
    fl.assert_cache_sound(rp, absent=[dg])
    fl.assert_next_pull(rp, st, dg)
    base.check()


if __name__ == "__main__":
    h.main(globals())
