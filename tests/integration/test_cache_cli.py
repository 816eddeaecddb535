"""`regproxy cache ls|du|verify|gc|rm` (contract §4, §3 "One owner per cache directory").
Direct mode: a cache filled by pulling through regproxy is listed, totalled, verified (a
corrupted object is named and removed), garbage-collected and pruned by digest from the
command line. Through the admin endpoint (docs/admin.md): while a regproxy runs on the
directory, the same commands ask it, with the same output, and it keeps serving; an
object being read is not removed under its reader; changes need POST/DELETE and the
X-Regproxy-Cli header; a digest in a path is never mapped to a file unchecked; a lock
held by something that does not answer is reported with its PID and URL."""

import fcntl
import glob
import json
import os
import re
import shutil

import harness as h

HOST = "registry-1.docker.io"


def setup():
    global CA, REG, IMG, BIG, MASTER
    CA = h.shared_ca()
    REG = h.Registry()
    IMG = h.OciImage(os.path.join(h.tmpdir(), "src"), layer_sizes=(4096, 300 * 1024))
    h.skopeo(["copy", "--dest-cert-dir", CA.certdir, "oci:%s:%s" % (IMG.path, IMG.tag),
              "docker://127.0.0.1:%d/library/alpine:3.18" % REG.port])
    # A layer larger than every socket buffer on the way: a client that stops reading
    # keeps its reader (and the object's pin) alive.
    BIG = h.OciImage(os.path.join(h.tmpdir(), "big"), tag="1", layer_sizes=(24 << 20,))
    h.skopeo(["copy", "--dest-cert-dir", CA.certdir, "oci:%s:1" % BIG.path,
              "docker://127.0.0.1:%d/library/big:1" % REG.port])
    MASTER = os.path.join(h.tmpdir(), "cache")
    rp = proxy(MASTER)
    pull(rp)
    rp.stop()


def proxy(cache_dir, *extra):
    return h.Regproxy(["--mitm", HOST, "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, REG.port),
                       "--upstream-ca", CA.ca_crt, "--cache-dir", cache_dir] + list(extra))


def pull(rp, repo="library/alpine", tag="3.18"):
    d = h.tmpdir()
    shutil.copy(os.path.join(rp.dir, "ca", "ca.crt"), os.path.join(d, "regproxy.crt"))
    shutil.copy(CA.ca_crt, os.path.join(d, "test-ca.crt"))
    out = os.path.join(h.tmpdir(), "out")
    h.skopeo(["copy", "--src-cert-dir", d, "docker://%s/%s:%s" % (HOST, repo, tag),
              "oci:%s:%s" % (out, tag)], env={"HTTPS_PROXY": rp.url})
    return out


def fresh():
    """A copy of the cache the setup pull filled (tests must not share state)."""
    d = os.path.join(h.tmpdir(), "cache")
    shutil.copytree(MASTER, d)
    return d


def cache(cache_dir, *args):
    env = h.clean_env(HOME=h.tmpdir())
    p = h.run([h.regproxy_bin(), "cache"] + list(args) + ["--cache-dir", cache_dir],
              check=False, env=env)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def blob_size(dg):
    return os.path.getsize(os.path.join(IMG.path, "blobs", "sha256", dg[7:]))


def blob_file(cache_dir, dg):
    return os.path.join(cache_dir, "blobs", "sha256", dg[7:9], dg[7:])


def listing(cache_dir):
    rc, out, err = cache(cache_dir, "ls")
    assert rc == 0, (rc, out, err)
    rows = [ln.split() for ln in out.splitlines() if ln.strip()]
    for r in rows:
        assert len(r) == 4 and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r[3]), r
    return rows


def test_ls_lists_every_pulled_blob_with_its_size():
    d = fresh()
    rows = listing(d)
    sizes = {r[0]: int(r[1]) for r in rows}
    for dg in IMG.blobs | {IMG.manifest}:
        assert dg in sizes, "%s missing from ls:\n%s" % (dg, rows)
        assert sizes[dg] == blob_size(dg), (dg, sizes[dg], blob_size(dg))
    types = {r[0]: r[2] for r in rows}
    assert types[IMG.manifest] == h.OciImage.MT_MANIFEST, types
    assert all(t for t in types.values()), types  # a type, or "-" when none was stored
    stamps = [r[3] for r in rows]
    assert stamps == sorted(stamps, reverse=True), "not newest first: %s" % stamps


def test_du_totals_the_objects():
    d = fresh()
    rows = listing(d)
    rc, out, err = cache(d, "du", "--cache-max-size", "5G")
    assert rc == 0, (rc, out, err)
    m = re.search(r"(\d+) bytes in (\d+) objects \(cache_max_size (\d+) bytes\)", out)
    assert m, out
    assert int(m.group(1)) == sum(int(r[1]) for r in rows), (out, rows)
    assert int(m.group(2)) == len(rows) and int(m.group(3)) == 5 << 30, out
    assert int(m.group(1)) >= sum(blob_size(dg) for dg in IMG.blobs)


def test_verify_removes_a_corrupt_object():
    d = fresh()
    rc, out, err = cache(d, "verify")
    assert rc == 0 and "BAD" not in out, (rc, out, err)
    bad = IMG.layers[1]
    path = blob_file(d, bad)
    with open(path, "r+b") as f:
        f.seek(1000)
        b = f.read(1)
        f.seek(1000)
        f.write(bytes([b[0] ^ 0xFF]))
    rc, out, err = cache(d, "verify")
    assert rc == 1, (rc, out, err)
    assert "BAD %s" % bad in out, out
    for dg in IMG.blobs - {bad}:
        assert "ok %s" % dg in out, out
    assert not os.path.exists(path), "corrupt file kept"
    assert bad not in {r[0] for r in listing(d)}, "corrupt object still in the index"
    rc, out, err = cache(d, "verify")
    assert rc == 0 and "BAD" not in out, (rc, out, err)


def test_rm_removes_a_digest():
    d = fresh()
    victim = IMG.layers[0]
    assert os.path.exists(blob_file(d, victim))
    rc, out, err = cache(d, "rm", victim)
    assert rc == 0, (rc, out, err)
    assert not os.path.exists(blob_file(d, victim)), "file kept"
    assert victim not in {r[0] for r in listing(d)}
    assert os.path.exists(blob_file(d, IMG.layers[1])), "rm removed another object"
    rc, out, err = cache(d, "rm", victim)
    assert rc == 1 and "not in the cache" in err, (rc, out, err)
    rc, out, err = cache(d, "rm", "sha256:xyz")
    assert rc == 2, (rc, out, err)
    rc, out, err = cache(d, "rm")
    assert rc == 2, (rc, out, err)


def test_gc_evicts_to_the_bound_and_removes_stray_files():
    d = fresh()
    stray_dg = "ab" * 32
    os.makedirs(os.path.join(d, "blobs", "sha256", "ab"), exist_ok=True)
    stray = os.path.join(d, "blobs", "sha256", "ab", stray_dg)
    h.write_file(stray, b"x" * 777)
    rc, out, err = cache(d, "gc")  # default bound: nothing to evict
    assert rc == 0, (rc, out, err)
    assert "evicted 0 object(s)" in out and "removed 1 file(s) without an index row, 777 bytes" \
        in out, out
    assert not os.path.exists(stray)
    before = listing(d)
    rc, out, err = cache(d, "gc", "--cache-max-size", "100K")
    assert rc == 0, (rc, out, err)
    m = re.search(r"evicted (\d+) object\(s\), (\d+) bytes", out)
    assert m and int(m.group(1)) >= 1, out
    after = listing(d)
    assert sum(int(r[1]) for r in after) <= 100 * 1024, after
    assert int(m.group(2)) == sum(int(r[1]) for r in before) - sum(int(r[1]) for r in after)
    assert IMG.layers[1] not in {r[0] for r in after}  # 300K: cannot stay under 100K
    assert not os.path.exists(blob_file(d, IMG.layers[1]))


# ---- through the running instance's admin endpoint ----------------------------------

def lock_lines(cache_dir):
    with open(os.path.join(cache_dir, "lock")) as f:
        return f.read().splitlines()


def serving(rp, out_of=None):
    """The instance still answers and still serves a whole pull."""
    assert rp.get_admin("/healthz").status == 200
    out = pull(rp)
    assert h.layout_blobs(out)[1] == IMG.blobs
    return out


def admin(rp, method, path, headers=()):
    c = rp.conn()
    try:
        return c.request(method, path, [("Host", "127.0.0.1:%d" % rp.port),
                                        ("Connection", "close")] + list(headers))
    finally:
        c.close()


CLI = [("X-Regproxy-Cli", "1")]


def test_lock_file_names_pid_then_admin_url():
    d = fresh()
    rp = proxy(d)
    lines = h.wait_until(lambda: (lambda ls: ls if len(ls) >= 2 else None)(lock_lines(d)), 5,
                         "the admin line in the lock file")
    assert lines == [str(rp.proc.pid), "admin=http://127.0.0.1:%d" % rp.port], lines
    rp.stop()
    # A wildcard listener is reached on the loopback address of its family.
    port = h.free_port()
    d2 = fresh()
    rp = proxy(d2, "--listen", "0.0.0.0:%d" % port, "--allow", "127.0.0.0/8")
    assert lock_lines(d2) == [str(rp.proc.pid), "admin=http://127.0.0.1:%d" % port]
    rp.stop()
    port = h.free_port("::1")
    rp = proxy(d2, "--listen", "[::1]:%d" % port)
    assert lock_lines(d2) == [str(rp.proc.pid), "admin=http://[::1]:%d" % port]
    rc, out, err = cache(d2, "du")
    assert rc == 0 and " objects (cache_max_size " in out, (rc, out, err)


def test_ls_and_du_through_the_instance():
    d = fresh()
    direct = listing(d)
    rc, out, err = cache(d, "du")
    assert rc == 0, (rc, out, err)
    direct_du = out
    rp = proxy(d, "--cache-max-size", "7G")
    rows = listing(d)  # the same parser: same format
    assert {r[0]: r[1:3] for r in rows} == {r[0]: r[1:3] for r in direct}, (rows, direct)
    stamps = [r[3] for r in rows]
    assert stamps == sorted(stamps, reverse=True), stamps
    rc, out, err = cache(d, "du")
    assert rc == 0, (rc, out, err)
    # The running instance's bound, not the command's default.
    assert out == direct_du.replace("(cache_max_size %d " % (20 << 30),
                                    "(cache_max_size %d " % (7 << 30)), (out, direct_du)
    r = admin(rp, "GET", "/cache/objects")
    assert r.status == 200 and r.header("Content-Type") == "application/json", r
    objs = {o["digest"]: o for o in json.loads(r.body)["objects"]}
    assert objs[IMG.manifest]["manifest"] is True and objs[IMG.layers[0]]["manifest"] is False
    r = admin(rp, "GET", "/cache/objects/" + IMG.manifest)
    assert r.status == 200 and json.loads(r.body)["size"] == blob_size(IMG.manifest), r
    r = admin(rp, "GET", "/cache/objects/sha256:" + "0" * 64)
    assert r.status == 404, r
    assert rp.request_logs(route="admin", path="/cache/objects", status="200")
    serving(rp)


def corrupt(path, at=1000):
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0xFF]))


def test_verify_through_the_instance_removes_a_corrupt_object_and_a_pull_refills_it():
    d = fresh()
    rp = proxy(d)
    rc, out, err = cache(d, "verify")
    assert rc == 0 and "BAD" not in out, (rc, out, err)
    assert re.search(r"^%d object\(s\) verified, 0 bad$" % len(listing(d)), out, re.M), out
    bad = IMG.layers[1]
    path = blob_file(d, bad)
    corrupt(path)
    rc, out, err = cache(d, "verify")
    assert rc == 1, (rc, out, err)
    assert "BAD %s (content does not match its digest or size)" % bad in out, out
    for dg in IMG.blobs - {bad}:
        assert "ok %s" % dg in out, out
    assert re.search(r"object\(s\) verified, 1 bad \(removed\)$", out, re.M), out
    # The answer comes once the file is gone: no waiting needed.
    assert not os.path.exists(path), "corrupt file kept"
    assert bad not in {r[0] for r in listing(d)}, "corrupt object still in the index"
    assert rp.metrics().sum("regproxy_digest_mismatch_total") >= 1
    # The instance kept serving, and the next pull fills the object again, intact.
    serving(rp)
    h.wait_until(lambda: os.path.exists(path), 5, "the layer back in the cache")
    assert h.sha256_file(path) == bad[7:], "refilled with different bytes"
    assert rp.request_logs(route="mitm", path="/v2/library/alpine/blobs/" + bad, cache="miss")
    rc, out, err = cache(d, "verify")
    assert rc == 0 and "BAD" not in out and "ok %s" % bad in out, (rc, out, err)


def test_gc_through_the_instance_trims_once():
    d = fresh()
    rp = proxy(d, "--cache-max-size", "1G")
    before = listing(d)
    rc, out, err = cache(d, "gc")  # no bound given: the instance's own, nothing to evict
    assert rc == 0, (rc, out, err)
    assert "evicted 0 object(s), 0 bytes" in out and \
        "removed 0 file(s) without an index row, 0 bytes" in out, out
    assert "(cache_max_size %d bytes)" % (1 << 30) in out, out
    rc, out, err = cache(d, "gc", "--cache-max-size", "100K")
    assert rc == 0, (rc, out, err)
    m = re.search(r"evicted (\d+) object\(s\), (\d+) bytes", out)
    assert m and int(m.group(1)) >= 1, out
    assert "(cache_max_size %d bytes)" % (100 << 10) in out, out
    after = listing(d)
    assert sum(int(r[1]) for r in after) <= 100 * 1024, after
    assert int(m.group(2)) == sum(int(r[1]) for r in before) - sum(int(r[1]) for r in after)
    assert not os.path.exists(blob_file(d, IMG.layers[1])), "evicted file still on disk"
    # Once: the instance's own bound (1G) is unchanged, the next pull stays cached.
    serving(rp)
    h.wait_until(lambda: os.path.exists(blob_file(d, IMG.layers[1])), 5, "the layer refilled")
    rc, out, err = cache(d, "du")
    assert rc == 0 and "(cache_max_size %d bytes)" % (1 << 30) in out, (rc, out, err)
    assert sum(int(r[1]) for r in listing(d)) > 100 * 1024


def human(n):
    """The CLI's byte counts: B, then one decimal in KiB, MiB, GiB…"""
    if n < 1024:
        return "%d B" % n
    v, u = float(n), -1
    while v >= 1024 and u < 4:
        v, u = v / 1024, u + 1
    return "%.1f %s" % (v, ("KiB", "MiB", "GiB", "TiB", "PiB")[u])


def test_verify_through_the_instance_reports_progress_in_order():
    d = fresh()
    rp = proxy(d)
    rows = listing(d)
    sizes = {r[0]: int(r[1]) for r in rows}
    bad = IMG.layers[1]
    corrupt(blob_file(d, bad))
    rc, out, err = cache(d, "verify")
    assert rc == 1, (rc, out, err)
    # stdout as without progress: a line per object, then the summary.
    lines = out.splitlines()
    assert len(lines) == len(rows) + 1, out
    assert lines[-1] == "%d object(s) verified, 1 bad (removed)" % len(rows), out
    assert sorted(ln.split()[1] for ln in lines[:-1]) == sorted(sizes), out
    assert "BAD %s (content does not match its digest or size)" % bad in lines, out
    # stderr (not a terminal): a progress line before the first object and after
    # each, counting objects and bytes in the order stdout names them.
    prog = re.findall(r"^verify: (\d+)/(\d+) objects, (.+)/(.+)$", err, re.M)
    total = sum(sizes.values())
    assert len(prog) == len(rows) + 1, err
    done = 0
    for i, (n, of, b, tb) in enumerate(prog):
        assert (int(n), int(of), b, tb) == (i, len(rows), human(done), human(total)), (i, err)
        if i < len(rows):
            done += sizes[lines[i].split()[1]]
    assert done == total


def test_gc_through_the_instance_reports_progress_in_order():
    d = fresh()
    rp = proxy(d, "--cache-max-size", "1G")
    before = sum(int(r[1]) for r in listing(d))
    rc, out, err = cache(d, "gc", "--cache-max-size", "100K")
    assert rc == 0, (rc, out, err)
    m = re.search(r"^evicted (\d+) object\(s\), (\d+) bytes$", out, re.M)
    assert m and int(m.group(1)) >= 1, out
    prog = re.findall(r"^gc: evicted (\d+) object\(s\), (.+)/(.+)$", err, re.M)
    # The first line before anything is evicted, then one per object, in order.
    assert [int(p[0]) for p in prog] == list(range(int(m.group(1)) + 1)), err
    assert all(p[2] == human(before - 100 * 1024) for p in prog), (before, err)
    assert prog[-1][1] == human(int(m.group(2))), (out, err)
    assert len(out.splitlines()) == 3, out  # the summary as without progress


def test_progress_is_an_ndjson_stream_only_when_asked_for():
    d = fresh()
    rp = proxy(d)
    rows = listing(d)
    nd = [("Accept", "application/x-ndjson")]
    r = admin(rp, "POST", "/cache/verify", CLI + nd)
    assert r.status == 200 and r.header("Content-Type") == "application/x-ndjson", r
    assert (r.header("Transfer-Encoding") or "").lower() == "chunked", r
    objs = [json.loads(ln) for ln in r.body.decode().splitlines()]
    assert objs[0] == {"objects": len(rows), "bytes": sum(int(x[1]) for x in rows)}, objs[0]
    assert objs[-1] == {"verified": len(rows), "bad": 0}, objs[-1]
    assert sorted(o["digest"] for o in objs[1:-1]) == sorted(x[0] for x in rows), objs
    assert all(o["ok"] is True and o["size"] > 0 for o in objs[1:-1]), objs
    # Other clients keep the single JSON answer.
    r = admin(rp, "POST", "/cache/verify", CLI)
    assert r.status == 200 and r.header("Content-Type") == "application/json", r
    j = json.loads(r.body)
    assert j["verified"] == len(rows) and len(j["results"]) == len(rows), j
    r = admin(rp, "POST", "/cache/gc?max_size=1", CLI + nd)
    assert r.status == 200 and r.header("Content-Type") == "application/x-ndjson", r
    objs = [json.loads(ln) for ln in r.body.decode().splitlines()]
    assert objs[0]["objects"] == len(rows) and objs[0]["max_size"] == 1, objs[0]
    ev = [o for o in objs[1:-1]]
    assert ev and all(set(o) == {"evicted", "size"} for o in ev), objs
    assert objs[-1]["evicted"] == len(ev), objs[-1]
    assert objs[-1]["evicted_bytes"] == sum(o["size"] for o in ev), objs[-1]
    # The connection carries the next request after a streamed answer.
    c = rp.conn()
    try:
        for _ in range(2):
            r = c.request("POST", "/cache/gc", [("Host", "127.0.0.1:%d" % rp.port)] + CLI + nd)
            assert r.status == 200 and json.loads(r.body.decode().splitlines()[-1])["evicted"] == 0
    finally:
        c.close()


def test_rm_through_the_instance():
    d = fresh()
    rp = proxy(d)
    victim = IMG.layers[0]
    rc, out, err = cache(d, "rm", victim)
    assert rc == 0 and out == "removed %s\n" % victim, (rc, out, err)
    assert not os.path.exists(blob_file(d, victim)), "file kept"
    assert victim not in {r[0] for r in listing(d)}
    assert os.path.exists(blob_file(d, IMG.layers[1])), "rm removed another object"
    rc, out, err = cache(d, "rm", victim)
    assert rc == 1 and "%s is not in the cache" % victim in err, (rc, out, err)
    rc, out, err = cache(d, "rm", "sha256:xyz")
    assert rc == 2, (rc, out, err)
    serving(rp)
    h.wait_until(lambda: os.path.exists(blob_file(d, victim)), 5, "the layer refilled")


def test_an_object_being_read_is_not_removed_under_its_reader():
    d = fresh()
    rp = proxy(d)
    pull(rp, "library/big", "1")
    layer = BIG.layers[0]
    c = rp.conn(timeout=30)
    assert c.connect_tunnel("%s:443" % HOST).status == 200
    c.start_tls(HOST, os.path.join(rp.dir, "ca", "ca.crt"))
    r = c.request("GET", "/v2/library/big/manifests/1", host=HOST,
                  headers=[("Accept", h.OciImage.MT_MANIFEST)])
    assert r.status == 200, r
    c.send(h.build_request("GET", "/v2/library/big/blobs/" + layer, host=HOST))
    _, status, _, headers, _ = c.read_head()  # and no further: the reader waits for us
    assert status == 200, headers
    rc, out, err = cache(d, "rm", layer)
    assert rc == 1 and "%s: in use" % layer in err, (rc, out, err)
    assert os.path.exists(blob_file(d, layer))
    length = int([v for k, v in headers if k.lower() == "content-length"][0])
    body = c.read_exact(length)
    assert h.sha256(body) == layer[7:]
    c.close()
    rp.wait_log(route="mitm", path="/v2/library/big/blobs/" + layer, status="200")

    def removed():
        rc, out, err = cache(d, "rm", layer)
        return rc == 0
    h.wait_until(removed, 5, "rm once the reader finished")
    assert not os.path.exists(blob_file(d, layer))


def test_changes_need_post_or_delete_and_the_cli_header():
    d = fresh()
    rp = proxy(d)
    before = sorted(listing(d))
    victim = IMG.layers[0]
    for method, path in (("POST", "/cache/gc"), ("POST", "/cache/verify"),
                         ("DELETE", "/cache/objects/" + victim)):
        r = admin(rp, method, path)
        assert r.status == 403 and b"X-Regproxy-Cli" in r.body, (method, path, r)
        # What a form on a web page can send: still no header, still refused.
        r = admin(rp, method, path, [("Content-Type", "application/x-www-form-urlencoded"),
                                     ("Origin", "http://evil.example")])
        assert r.status == 403, (method, path, r)
        r = admin(rp, method, path, [("X-Regproxy-Cli", "0")])
        assert r.status == 403, (method, path, r)
    for method, path in (("GET", "/cache/gc"), ("GET", "/cache/verify"),
                         ("POST", "/cache/objects"), ("PUT", "/cache/objects/" + victim),
                         ("DELETE", "/cache/du")):
        r = admin(rp, method, path, CLI)
        assert r.status == 405 and r.header("Allow"), (method, path, r)
    r = admin(rp, "POST", "/cache/gc?max_size=bogus", CLI)
    assert r.status == 400, r
    r = admin(rp, "POST", "/cache/gc?max_size=0", CLI)
    assert r.status == 400, r
    assert sorted(listing(d)) == before
    assert os.path.exists(blob_file(d, victim))


def test_hostile_digests_are_refused_and_touch_nothing():
    d = fresh()
    rp = proxy(d)
    before = sorted(listing(d))
    files = sorted(glob.glob(os.path.join(d, "blobs", "*", "*", "*")))
    # Files a path traversal from the objects' directory would reach.
    bait = h.write_file(os.path.join(d, "blobs", "sha256", "passwd"), b"bait\n")
    outside = h.write_file(os.path.join(os.path.dirname(d), "etc", "passwd"), b"bait\n")
    upper = IMG.layers[0].upper().replace("SHA256", "sha256")
    for dg in ("../../etc/passwd", "sha256:XYZ", "sha256:../../../etc/passwd",
               "..%2F..%2Fetc%2Fpasswd", "sha256%3A" + IMG.layers[0][7:], upper,
               IMG.layers[0] + "/../../passwd", "sha256:" + "a" * 63, "md5:" + "a" * 32,
               IMG.layers[0][:-1] + "\\", "sha256:%s%%00" % ("a" * 64)):
        r = admin(rp, "DELETE", "/cache/objects/" + dg, CLI)
        assert r.status == 400, (dg, r)
    assert os.path.exists(bait) and os.path.exists(outside)
    assert sorted(listing(d)) == before
    assert sorted(glob.glob(os.path.join(d, "blobs", "*", "*", "*"))) == files, "files changed"
    assert rp.get_admin("/healthz").status == 200


def test_lock_held_without_an_answering_admin_endpoint():
    d = fresh()
    fake_pid = 4242
    fd = os.open(os.path.join(d, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
    h.defer(lambda: os.close(fd))
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0)
    os.pwrite(fd, b"%d\n" % fake_pid, 0)
    rc, out, err = cache(d, "ls")
    assert rc == 1 and out == "", (rc, out, err)
    assert "PID %d" % fake_pid in err and "no admin endpoint" in err, err
    url = "http://127.0.0.1:%d" % h.free_port()
    os.pwrite(fd, b"%d\nadmin=%s\n" % (fake_pid, url.encode()), 0)
    for verb in (("ls",), ("verify",), ("rm", IMG.layers[0])):
        rc, out, err = cache(d, *verb)
        assert rc == 1 and out == "", (verb, rc, out, err)
        assert "PID %d" % fake_pid in err and url in err and "does not answer" in err, err
    # What the lock file says is not trusted blindly: a URL with a newline or a
    # space in it, or another scheme, is no URL.
    os.ftruncate(fd, 0)
    os.pwrite(fd, b"%d\nadmin=file:///etc/passwd\n" % fake_pid, 0)
    rc, out, err = cache(d, "du")
    assert rc == 1 and "no admin endpoint" in err, (rc, out, err)
    fcntl.flock(fd, fcntl.LOCK_UN)
    assert len(listing(d)) >= len(IMG.blobs)  # direct mode again


def own_non_loopback_ipv4():
    out = h.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], check=False)
    m = re.search(r"\binet (\d+\.\d+\.\d+\.\d+)/", out.stdout.decode())
    return m.group(1) if m else None


def test_asks_a_non_loopback_listener_from_loopback():
    # The admin endpoints answer admin_allow (default loopback); a listener on a LAN
    # address is still asked from 127.0.0.1, not from that address.
    addr = own_non_loopback_ipv4()
    if addr is None:
        print("    (no non-loopback IPv4 address here: not checked)")
        return
    d = fresh()
    listen = ["--listen", "%s:%d" % (addr, h.free_port(addr)), "--allow", "127.0.0.1," + addr]
    rp = proxy(d, *listen)
    assert h.wait_until(lambda: len(lock_lines(d)) >= 2 and lock_lines(d), 5,
                        "the admin line")[1] == "admin=" + rp.url
    rc, out, err = cache(d, "du")
    assert rc == 0 and " objects (cache_max_size " in out, (rc, out, err)
    line = rp.wait_log(route="admin", path="/cache/du")
    assert line["status"] == "200" and line["client"].startswith("127.0.0.1:"), line
    rp.stop()
    # An admin_allow without loopback: the command says which key refused it.
    rp = proxy(d, *listen, "--admin-allow", addr)
    rc, out, err = cache(d, "ls")
    assert rc == 1 and out == "" and "403" in err and "admin_allow" in err, (rc, out, err)


def test_usage_errors():
    d = fresh()
    for args in (("frobnicate",), ("ls", "extra")):
        rc, out, err = cache(d, *args)
        assert rc == 2 and "usage" in err, (args, rc, err)
    p = h.run([h.regproxy_bin(), "cache"], check=False, env=h.clean_env(HOME=h.tmpdir()))
    assert p.returncode == 2, p


if __name__ == "__main__":
    h.main(globals())
