"""Fault matrix, client side (issue 11): clients that go away mid-request, mid-push and
mid-fill, a client that reads nothing while a big blob is served, garbage pipelined
after a valid request, and 10,000 header lines. Each test asserts what the client (or
the other clients) see, that the process stays up without descriptor or memory growth,
that nothing partial or unverified is in the cache, and that the next normal pull works.

Covered elsewhere: the one client of a fill going away (test_cache_upstream.py
test_fill_outlives_the_client_that_started_it) and malformed request heads
(test_badinput.py)."""

import hashlib
import os
import socket
import threading
import time

import faultlib as fl
import harness as h

REPEAT = 5


def setup():
    global CA, REG, IMG
    CA = h.shared_ca()
    REG = h.Registry()
    IMG = h.OciImage(os.path.join(h.tmpdir(), "src"), tag="1", layer_sizes=(4096, 300 * 1024))
    h.skopeo(["copy", "--dest-cert-dir", CA.certdir, "oci:%s:1" % IMG.path,
              "docker://127.0.0.1:%d/library/img:1" % REG.port])


def real_proxy(*extra):
    return h.Regproxy(["--mitm", fl.HOST, "--upstream-ca", CA.ca_crt,
                       "--connect-to", "%s:443:127.0.0.1:%d" % (fl.HOST, REG.port)] +
                      list(extra))


def certdir(rp):
    d = h.tmpdir()
    os.symlink(fl.rp_ca(rp), os.path.join(d, "ca.crt"))
    return d


def pull(rp, repo="library/img", tag="1"):
    out = os.path.join(h.tmpdir(), "out")
    h.skopeo(["copy", "--src-cert-dir", certdir(rp), "docker://%s/%s:%s" % (fl.HOST, repo, tag),
              "oci:%s:%s" % (out, tag)], env={"HTTPS_PROXY": rp.url})
    assert h.layout_blobs(out)[1] == IMG.blobs
    return out


def test_disconnect_mid_request():
    """Half a request head, then gone: in plain HTTP, inside a MITM tunnel, and in the
    middle of the TLS handshake."""
    rp = real_proxy()
    pull(rp)
    base = fl.Baseline(rp)
    for _ in range(REPEAT):
        c = rp.conn()
        c.send("GET http://127.0.0.1:1/x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half: ")
        c.close()
        c = fl.tls_client(rp)
        c.send("GET /v2/library/img/blobs/%s HTTP/1.1\r\nHost: %s\r\nAcc" % (
            IMG.layers[1], fl.HOST))
        c.close()
        c = rp.conn()
        assert c.connect_tunnel("%s:443" % fl.HOST).status == 200
        c.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(40))
        c.close()
    pull(rp)
    base.check()
    fl.assert_cache_sound(rp)


def _push_session(rp, repo):
    """Start an upload through regproxy; return (client, upload path)."""
    c = fl.tls_client(rp)
    r = c.request("POST", "/v2/%s/blobs/uploads/" % repo, body=b"", host=fl.HOST)
    assert r.status == 202, r
    loc = r.header("Location")
    if loc.startswith("https://"):
        loc = "/" + loc.split("/", 3)[3]
    return c, loc


def test_disconnect_mid_body_of_a_push():
    """A PATCH and a monolithic PUT cut half-way: the registry never gets a blob,
    regproxy stops the upstream transfers, and the next push and pull work."""
    rp = real_proxy()
    pull(rp)
    base = fl.Baseline(rp)
    body = os.urandom(4 << 20)
    dg = "sha256:" + hashlib.sha256(body).hexdigest()
    for _ in range(REPEAT):
        c, loc = _push_session(rp, "library/pushed")
        c.send("PATCH %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\n"
               "Content-Length: %d\r\n\r\n" % (loc, fl.HOST, len(body)))
        c.send(body[:len(body) // 2])
        c.close()
        c, loc = _push_session(rp, "library/pushed")
        sep = "&" if "?" in loc else "?"
        c.send("PUT %s%sdigest=%s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n" % (
            loc, sep, dg, fl.HOST, len(body)))
        c.send(body[:len(body) // 3])
        c.close()
    # The registry has no such blob: nothing half-pushed was committed.
    r = REG.get("/v2/library/pushed/blobs/" + dg)
    assert r.status == 404, r
    h.wait_until(lambda: len(rp.request_logs(method="PUT")) >= REPEAT, 10,
                 "every cut PUT logged")
    base.check()
    # A whole push of the same blob through the same instance now works.
    c, loc = _push_session(rp, "library/pushed")
    sep = "&" if "?" in loc else "?"
    r = c.request("PUT", "%s%sdigest=%s" % (loc, sep, dg), body=body, host=fl.HOST)
    assert r.status == 201, r
    assert h.sha256(REG.get("/v2/library/pushed/blobs/" + dg).body) == dg[7:]
    pull(rp)
    fl.assert_cache_sound(rp)


def test_disconnect_mid_fill_others_go_on():
    """Four clients read a fill the registry trickles; two go away half-way. The
    other two get every byte, and the object is published verified."""
    st = fl.Standin(CA)
    rp = fl.proxy(st)
    warm = st.add_blob(os.urandom(1000))
    assert fl.get(rp, fl.blob_url(warm)).stdout.strip() == b"200"
    base = fl.Baseline(rp)
    data = os.urandom(3 << 20)
    dg = st.add_blob(data)
    go = threading.Event()
    h.defer(go.set)

    def trickle(st_, req, s):
        if dg not in req.path:
            return fl.serve_good(st_, req, s)
        fl.send_head(s, 200, [("Content-Length", str(len(data))), ("Docker-Content-Digest", dg)])
        step = len(data) // 30
        for i in range(0, len(data), step):
            if i == step:
                go.wait(10)  # every reader attached
            s.sendall(data[i:i + step])
            time.sleep(0.05)
        return True
    st.handler = trickle
    stay = [fl.spawn(rp, fl.blob_url(dg), os.path.join(h.tmpdir(), "s%d" % i))
            for i in range(2)]
    leave = [fl.tls_client(rp) for _ in range(2)]
    for c in leave:
        c.send(h.build_request("GET", "/v2/library/x/blobs/" + dg, host=fl.HOST))
    h.wait_until(lambda: fl.fill_readers(rp, dg) == 4, 10, "four readers on the fill")
    go.set()
    for c in leave:
        c.read_until(b"\r\n\r\n")
        c.read_exact(100000)
        c.close()
    outs = []
    for p in stay:
        assert p.wait(30) == 0 and p.stdout.read().strip() == b"200", p.stderr.read()
        outs.append(p.args[p.args.index("-o") + 1])
    for o in outs:
        assert h.sha256_file(o) == dg[7:], "a remaining reader got other bytes"
    h.wait_until(lambda: any(os.path.basename(f) == dg[7:] for f in fl.cache_files(rp)), 8,
                 "the fill published")
    assert st.blob_gets(dg) == 1
    fl.assert_cache_sound(rp)
    base.check()


def test_client_reads_nothing_while_a_big_blob_is_served():
    """A client asks for a 96 MiB blob and reads nothing, first while it is filled,
    then from the cache: regproxy's memory stays bounded, the fill completes for the
    cache anyway, and the blob reads back whole."""
    st = fl.Standin(CA)
    rp = fl.proxy(st)
    warm = st.add_blob(os.urandom(1000))
    assert fl.get(rp, fl.blob_url(warm)).stdout.strip() == b"200"
    base = fl.Baseline(rp)
    data = os.urandom(96 << 20)
    dg = st.add_blob(data)
    stuck = []
    for _ in range(2):
        c = fl.tls_client(rp)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        c.send(h.build_request("GET", "/v2/library/x/blobs/" + dg, host=fl.HOST))
        stuck.append(c)
        h.wait_until(lambda: any(os.path.basename(f) == dg[7:] for f in fl.cache_files(rp)),
                     30, "the blob published while its client reads nothing")
    h.settled(lambda: fl.rss_kib(rp) // 1024, 5, "RSS settled")
    fl.assert_rss_bounded(rp, base.rss, 32 * 1024, "RSS serving clients that read nothing")
    for c in stuck:
        c.close()
    out = os.path.join(h.tmpdir(), "o")
    r = fl.get(rp, fl.blob_url(dg), out)
    assert r.stdout.strip() == b"200" and h.sha256_file(out) == dg[7:], r
    fl.assert_cache_sound(rp)
    base.check(rss_slack_kib=32 * 1024)


def test_garbage_pipelined_after_a_valid_request():
    """The valid request is answered, the garbage gets a 400 and the connection
    closes, in plain HTTP and inside a MITM tunnel."""
    rp = real_proxy()
    pull(rp)
    base = fl.Baseline(rp)
    for _ in range(REPEAT):
        c = rp.conn()
        c.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" + os.urandom(3000) +
               b"\r\n\r\n")
        assert c.read_response().status == 200
        assert c.read_response().status == 400
        assert c.at_eof(5)
        c = fl.tls_client(rp)
        c.send(h.build_request("GET", "/v2/library/img/blobs/" + IMG.layers[0], host=fl.HOST) +
               b"\x00\xff garbage \r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and h.sha256(r.body) == IMG.layers[0][7:], r
        assert c.read_response().status == 400
        assert c.at_eof(5)
    pull(rp)
    fl.assert_cache_sound(rp)
    base.check()


def test_ten_thousand_header_lines():
    rp = real_proxy()
    pull(rp)
    base = fl.Baseline(rp)
    lines = "".join("X-H%d: v\r\n" % i for i in range(10000))
    for _ in range(REPEAT):
        t0 = time.monotonic()
        c = rp.conn()
        c.send("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + lines + "\r\n")
        assert c.read_response().status == 431
        c = fl.tls_client(rp)
        try:
            c.send("GET /v2/library/img/blobs/%s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (
                IMG.layers[0], fl.HOST, lines))
        except OSError:
            pass  # regproxy may answer and close before it read everything
        assert c.read_response().status == 431
        assert time.monotonic() - t0 < 3
    rp.wait_log(status="431")
    pull(rp)
    fl.assert_cache_sound(rp)
    base.check()


def test_slow_and_fast_readers_and_a_paused_pass_through():
    """Readers at 3, 30 MB/s and unthrottled share one cold fill from the real registry
    over TLS, and a throttled client reads a big non-registry answer passed through the
    MITM (the upstream transfer paused and resumed all along): each gets every byte, and
    nothing is left behind."""
    data = os.urandom(12 << 20)
    path = os.path.join(h.tmpdir(), "blob")
    with open(path, "wb") as f:
        f.write(data)
    dg = "sha256:" + hashlib.sha256(data).hexdigest()
    base = "https://127.0.0.1:%d/v2/library/img/blobs/uploads/" % REG.port
    loc = h.run(["curl", "-sS", "-D", "-", "-o", "/dev/null", "--cacert", CA.ca_crt, "-X",
                 "POST", base]).stdout.decode()
    loc = [ln.split(":", 1)[1].strip() for ln in loc.splitlines()
           if ln.lower().startswith("location:")][0]
    if loc.startswith("/"):
        loc = "https://127.0.0.1:%d%s" % (REG.port, loc)
    h.run(["curl", "-sS", "--fail", "-o", "/dev/null", "--cacert", CA.ca_crt, "-X", "PUT",
           "-H", "Content-Type: application/octet-stream", "-T", path,
           loc + ("&" if "?" in loc else "?") + "digest=" + dg])
    ng = h.Nginx(files={"big.bin": 24 << 20})
    rp = h.Regproxy(["--mitm", fl.HOST + ",origin.test", "--upstream-ca", CA.ca_crt,
                     "--connect-to", "%s:443:127.0.0.1:%d" % (fl.HOST, REG.port),
                     "--connect-to", "origin.test:443:127.0.0.1:%d" % ng.https_port])

    def curl(url, rate, out):
        argv = ["curl", "-sS", "--fail", "-o", out, "-x", rp.url, "--cacert", fl.rp_ca(rp), url]
        if rate:
            argv[1:1] = ["--limit-rate", rate]
        return h.Proc(argv, name="curl", env=h.clean_env(), stderr=out + ".err")

    # Warm up: a pooled connection to each origin, and one fill done (the last fill's
    # file stays open until the next one replaces it).
    for url in ("https://%s/v2/library/img/blobs/%s" % (fl.HOST, IMG.layers[1]),
                "https://origin.test/a.txt"):
        w = os.path.join(h.tmpdir(), "w")
        assert curl(url, None, w).wait_exit(30) == 0
    base_line = fl.Baseline(rp)

    outs = [os.path.join(h.tmpdir(), "o%d" % i) for i in range(4)]
    blob = "https://%s/v2/library/img/blobs/%s" % (fl.HOST, dg)
    procs = [curl(blob, "3M", outs[0]), curl(blob, "30M", outs[1]), curl(blob, None, outs[2]),
             curl("https://origin.test/big.bin", "8M", outs[3])]
    for p in procs:
        rc = p.wait_exit(60)
        assert rc == 0, "curl exit %d: %s" % (rc, p.stderr_text())
    for o in outs[:3]:
        assert h.sha256_file(o) == dg[7:], "a reader of the fill got other bytes"
    assert h.sha256_file(outs[3]) == ng.files["big.bin"], "the passed-through body differs"
    fl.assert_cache_sound(rp)
    base_line.check()


if __name__ == "__main__":
    h.main(globals())
