"""`regproxy cache ls|du|verify|gc|rm` in direct mode (SPEC §4, §3 "One owner per cache
directory"): a cache filled by pulling through regproxy is listed, totalled, verified
(a corrupted object is named and removed), garbage-collected and pruned by digest from
the command line; while a regproxy runs on the directory the command refuses, naming
its PID."""

import glob
import os
import re
import shutil

import harness as h

HOST = "registry-1.docker.io"


def setup():
    global CA, REG, IMG, MASTER
    CA = h.shared_ca()
    REG = h.Registry()
    IMG = h.OciImage(os.path.join(h.tmpdir(), "src"), layer_sizes=(4096, 300 * 1024))
    h.skopeo(["copy", "--dest-cert-dir", CA.certdir, "oci:%s:%s" % (IMG.path, IMG.tag),
              "docker://127.0.0.1:%d/library/alpine:3.18" % REG.port])
    MASTER = os.path.join(h.tmpdir(), "cache")
    rp = proxy(MASTER)
    pull(rp)
    rp.stop()


def proxy(cache_dir):
    return h.Regproxy(["--mitm", HOST, "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, REG.port),
                       "--upstream-ca", CA.ca_crt, "--cache-dir", cache_dir])


def pull(rp):
    d = h.tmpdir()
    shutil.copy(os.path.join(rp.dir, "ca", "ca.crt"), os.path.join(d, "regproxy.crt"))
    shutil.copy(CA.ca_crt, os.path.join(d, "test-ca.crt"))
    out = os.path.join(h.tmpdir(), "out")
    h.skopeo(["copy", "--src-cert-dir", d, "docker://%s/library/alpine:3.18" % HOST,
              "oci:%s:3.18" % out], env={"HTTPS_PROXY": rp.url})
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


def test_refuses_while_a_regproxy_runs_on_the_directory():
    d = fresh()
    rp = proxy(d)
    rc, out, err = cache(d, "ls")
    assert rc == 1, (rc, out, err)
    assert "PID %d" % rp.proc.pid in err and "in use by a running regproxy" in err, err
    rp.stop()
    assert len(listing(d)) >= len(IMG.blobs)


def test_usage_errors():
    d = fresh()
    for args in (("frobnicate",), ("ls", "extra")):
        rc, out, err = cache(d, *args)
        assert rc == 2 and "usage" in err, (args, rc, err)
    p = h.run([h.regproxy_bin(), "cache"], check=False, env=h.clean_env(HOME=h.tmpdir()))
    assert p.returncode == 2, p


if __name__ == "__main__":
    h.main(globals())
