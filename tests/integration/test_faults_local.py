"""Fault matrix, local side (issue 11): the cache directory made read-only while
regproxy runs, and the index file damaged between runs. The read-only case runs in a
private mount namespace (needs root and unshare), where the cache directory is a bind
mount that can be remounted read-only and back.

Covered elsewhere: a full disk (test_cache_fullfs.py), kill -9 during a fill
(test_cache.py test_kill9_during_fill_leaves_nothing_partial)."""

import glob
import os
import shutil
import subprocess
import sys

INNER = "RP_TEST_FAULTS_LOCAL_INNER"

if os.environ.get(INNER) != "1":
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        print("skipped: needs root and unshare")
        print("0 passed, 0 failed, 1 skipped")
        sys.exit(0)
    os.execvpe("unshare", ["unshare", "--mount", "--propagation", "private", "--",
                           sys.executable, "-u", os.path.abspath(__file__)],
               dict(os.environ, **{INNER: "1"}))

import faultlib as fl  # noqa: E402
import harness as h  # noqa: E402


def setup():
    global CA, REG, IMGS
    CA = h.shared_ca()
    REG = h.Registry()
    IMGS = {}
    for name in ("a", "b", "c"):
        img = h.OciImage(os.path.join(h.tmpdir(), name), tag="1",
                         layer_sizes=(3000, 200 * 1024))
        h.skopeo(["copy", "--dest-cert-dir", CA.certdir, "oci:%s:1" % img.path,
                  "docker://127.0.0.1:%d/library/%s:1" % (REG.port, name)])
        IMGS[name] = img


def proxy(cache, *extra):
    return h.Regproxy(["--mitm", fl.HOST, "--upstream-ca", CA.ca_crt, "--cache-dir", cache,
                       "--connect-to", "%s:443:127.0.0.1:%d" % (fl.HOST, REG.port)] +
                      list(extra))


def pull(rp, name):
    d = h.tmpdir()
    shutil.copy(fl.rp_ca(rp), os.path.join(d, "ca.crt"))
    out = os.path.join(h.tmpdir(), "out")
    h.skopeo(["copy", "--src-cert-dir", d, "docker://%s/library/%s:1" % (fl.HOST, name),
              "oci:%s:1" % out], env={"HTTPS_PROXY": rp.url})
    assert h.layout_blobs(out)[1] == IMGS[name].blobs
    return out


def stored(cache):
    return {os.path.basename(f) for f in glob.glob(os.path.join(cache, "blobs", "*", "*", "*"))}


def cached(cache, img):
    return {dg[7:] for dg in img.blobs} <= stored(cache)


def test_cache_directory_read_only_while_running():
    cache = os.path.join(h.tmpdir(), "cache")
    rp = proxy(cache)
    pull(rp, "a")
    h.wait_until(lambda: cached(cache, IMGS["a"]), 5, "image a cached")
    base = fl.Baseline(rp)
    warn_before = len(rp.find_logs(level="warn"))
    # A read-only bind mount over the directory: every path regproxy opens from now
    # on is read-only (what it holds open, the index, stays writable).
    subprocess.run(["mount", "--bind", cache, cache], check=True)
    h.defer(lambda: subprocess.run(["umount", "-l", cache], stderr=subprocess.DEVNULL))
    subprocess.run(["mount", "-o", "remount,bind,ro", cache], check=True)
    # Serving goes on: what is cached, and what is not (relayed, nothing kept).
    pull(rp, "a")
    pull(rp, "b")
    pull(rp, "b")
    assert not ({dg[7:] for dg in IMGS["b"].blobs} & stored(cache)), "kept on a read-only disk"
    warns = rp.find_logs(level="warn")[warn_before:]
    assert len(warns) == 1, "expected one warning for the read-only cache, got %d:\n%s" % (
        len(warns), "\n".join(str(w) for w in warns))
    assert warns[0]["msg"] == "cache disk error: serving from memory, not storing" and \
        warns[0]["error"] == "read-only file system", warns[0]
    # Recovery: writable again, the next pull fills the cache.
    subprocess.run(["umount", cache], check=True)
    pull(rp, "b")
    h.wait_until(lambda: cached(cache, IMGS["b"]), 5, "image b cached after recovery")
    rp.wait_log(level="info", msg="cache writable again: fill stored after disk errors")
    fl.assert_cache_sound(rp)
    base.check()


def _damaged_index_recovered(damage):
    """Cache image a, stop, damage the index, start again: regproxy starts, says
    what it did, keeps nothing it cannot vouch for, and pulls work."""
    cache = os.path.join(h.tmpdir(), "cache")
    rp = proxy(cache)
    pull(rp, "a")
    h.wait_until(lambda: cached(cache, IMGS["a"]), 5, "image a cached")
    rp.signal(15)
    assert rp.wait_exit(10) == 0
    index = os.path.join(cache, "index.db")
    damage(index)
    rp = proxy(cache)
    line = rp.wait_log(level="warn", msg=lambda m: m.startswith("cache index ") and
                       "is damaged" in m and "moved to %s.damaged" % index in m)
    assert os.path.exists(index + ".damaged"), "the damaged index was not kept aside"
    assert not stored(cache), "objects kept without an index row: %s" % stored(cache)
    pull(rp, "a")
    h.wait_until(lambda: cached(cache, IMGS["a"]), 5, "image a cached again")
    base = fl.Baseline(rp)
    pull(rp, "a")
    pull(rp, "a")
    fl.assert_cache_sound(rp)
    base.check()
    # The next start is a normal one.
    rp.signal(15)
    assert rp.wait_exit(10) == 0
    rp = proxy(cache)
    assert "is damaged" not in rp.stderr()
    pull(rp, "a")
    assert rp.request_logs(cache="hit"), "the rebuilt index was not used"
    return line


def test_index_overwritten_between_runs():
    def garbage(index):
        with open(index, "r+b") as f:
            f.write(os.urandom(4096))
    line = _damaged_index_recovered(garbage)
    assert "not a database" in line["msg"], line


def test_index_truncated_between_runs():
    def truncate(index):
        with open(index, "r+b") as f:
            f.truncate(os.path.getsize(index) // 2)
    _damaged_index_recovered(truncate)


def test_index_pages_damaged_between_runs():
    def scribble(index):
        size = os.path.getsize(index)
        with open(index, "r+b") as f:
            for off in range(4096, size, 4096):  # every b-tree page header but the first
                f.seek(off)
                f.write(os.urandom(12))
    _damaged_index_recovered(scribble)


if __name__ == "__main__":
    h.main(globals())
