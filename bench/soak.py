#!/usr/bin/env python3
"""Soak (issue 11, "Load and soak"): --minutes of mixed pulls through regproxy's MITM with
a --cache-max-size far below what the pulls touch, so that eviction runs all the time.

  python3 bench/soak.py [--minutes 10] [--images 8] [--layers-kib 128,512,1024]
                        [--workers 4] [--skopeo 1] [--cache-max-size 6M]

--images images (each its own repository, layers of --layers-kib) are pushed to the
distribution registry. --workers asyncio clients pull a random image again and again
(manifest by tag, then config and layers by digest, every body checked against its
digest), and --skopeo threads run `skopeo copy` of a random image through regproxy.
Every 10 s it prints pulls, errors, regproxy's RSS and fds, the cache's size and the
evictions so far. At the end: `regproxy cache verify` through the running instance, then
again on the stopped directory (both must be clean), every distinct error (there must be
none), and whether RSS stayed flat after the warm-up (the first fifth of the run): its
growth from the end of the warm-up to the end, and the slope of a line fitted through the
samples since. Exit status 1 on an error, an unclean verify or RSS growth above
--rss-slack-mib.
"""
import argparse
import asyncio
import collections
import hashlib
import os
import random
import shutil
import ssl
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
sys.path.insert(0, HERE)
import harness as h  # noqa: E402
import load  # noqa: E402

HOST = load.HOST
MT_MANIFEST = h.OciImage.MT_MANIFEST


class Stats:
    def __init__(self):
        self.pulls = collections.Counter()  # "direct" / "skopeo" -> completed pulls
        self.lat = []
        self.errors = collections.Counter()
        self.lock = threading.Lock()

    def error(self, who, e):
        with self.lock:
            self.errors["%s: %s: %s" % (who, type(e).__name__, (str(e) or "")[:300])] += 1


async def get(r, w, path, accept=None):
    req = "GET %s HTTP/1.1\r\nHost: %s\r\n" % (path, HOST)
    if accept:
        req += "Accept: %s\r\n" % accept
    w.write((req + "\r\n").encode())
    return await asyncio.wait_for(load.read_response(r), load.TIMEOUT)


async def pull(env, img):
    """One pull as an engine does it: manifest by tag, then config and layers by digest."""
    r, w = await asyncio.wait_for(load.connect(env.port, HOST + ":443", env.rp_ctx, HOST),
                                  load.TIMEOUT)
    try:
        status, _, body = await get(r, w, "/v2/%s/manifests/%s" % (img.repo, img.tag),
                                    MT_MANIFEST)
        if status != 200 or "sha256:" + hashlib.sha256(body).hexdigest() != img.manifest:
            raise load.LoadError("manifest %s:%s: %d, %d bytes not hashing to %s" % (
                img.repo, img.tag, status, len(body), img.manifest))
        for dg in [img.config] + img.layers:
            status, hdrs, body = await get(r, w, "/v2/%s/blobs/%s" % (img.repo, dg))
            if status != 200 or "sha256:" + hashlib.sha256(body).hexdigest() != dg:
                raise load.LoadError("blob %s of %s: %d, %d bytes not hashing to it" % (
                    dg, img.repo, status, len(body)))
            if b"close" in hdrs.get(b"connection", b"").lower():
                load.close(w)
                r, w = await asyncio.wait_for(
                    load.connect(env.port, HOST + ":443", env.rp_ctx, HOST), load.TIMEOUT)
    finally:
        load.close(w)


async def worker(env, stats, deadline, rnd):
    while time.monotonic() < deadline:
        img = rnd.choice(env.images)
        t0 = time.monotonic()
        try:
            await pull(env, img)
            stats.pulls["direct"] += 1
            stats.lat.append(time.monotonic() - t0)
        except (OSError, EOFError, load.LoadError, asyncio.TimeoutError,
                asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError) as e:
            stats.error("pull %s" % img.repo, e)
            await asyncio.sleep(0.1)  # not a sync: no tight loop against a failing path


def skopeo_worker(env, stats, deadline, rnd):
    while time.monotonic() < deadline:
        img = rnd.choice(env.images)
        out = os.path.join(env.tmp, "skopeo-%d" % threading.get_ident())
        try:
            h.skopeo(["copy", "--src-cert-dir", env.cdir, "docker://%s/%s:%s" % (
                HOST, img.repo, img.tag), "oci:%s:x" % out], env={"HTTPS_PROXY": env.url})
            _, blobs = h.layout_blobs(out)  # re-hashes every blob skopeo wrote
            if blobs != img.blobs:
                raise load.LoadError("skopeo copied %s" % sorted(blobs))
            with stats.lock:
                stats.pulls["skopeo"] += 1
        except (AssertionError, OSError, subprocess.SubprocessError, load.LoadError) as e:
            stats.error("skopeo %s" % img.repo, e)
        finally:
            shutil.rmtree(out, ignore_errors=True)


def cache_figures(rp):
    m = rp.metrics()
    return m.sum("regproxy_cache_size_bytes"), m.sum("regproxy_evictions_total")


async def soak(env, a, stats, rp, samples):
    t0 = time.monotonic()
    deadline = t0 + a.minutes * 60
    rnd = random.Random(a.seed)
    tasks = [asyncio.ensure_future(worker(env, stats, deadline, random.Random(rnd.random())))
             for _ in range(a.workers)]
    threads = [threading.Thread(target=skopeo_worker, daemon=True,
                                args=(env, stats, deadline, random.Random(rnd.random())))
               for _ in range(a.skopeo)]
    for t in threads:
        t.start()
    pid = rp.proc.pid
    print("%7s %8s %7s %9s %6s %10s %10s" % ("t", "pulls", "errors", "RSS MiB", "fds",
                                              "cache MiB", "evictions"), flush=True)
    next_print = t0
    while time.monotonic() < deadline:
        now = time.monotonic()
        s = load.sample(pid)
        samples.append((now - t0, s["rss"]))
        if now >= next_print:
            size, ev = await asyncio.get_running_loop().run_in_executor(
                None, cache_figures, rp)
            print("%6.0fs %8d %7d %9.1f %6d %10.1f %10d" % (
                now - t0, sum(stats.pulls.values()), sum(stats.errors.values()), s["rss"],
                s["fds"], size / 1048576.0, ev), flush=True)
            next_print += 10
        await asyncio.sleep(1.0)  # sampling period, not a sync
    await asyncio.gather(*tasks)
    for t in threads:
        t.join(180)
    return time.monotonic() - t0


def verify(rp, cache_dir, how):
    p = h.run([rp.bin, "cache", "verify", "--cache-dir", cache_dir], check=False,
              timeout=300, env=h.clean_env(HOME=os.path.join(rp.dir, "home")))
    lines = (p.stdout + p.stderr).decode("utf-8", "replace").splitlines()
    # Every object's "ok <digest>" and the progress lines would drown the verdict.
    keep = [ln for ln in lines if ln.strip() and not ln.startswith("ok ")
            and not ln.lstrip().startswith("verify: ")]
    print("regproxy cache verify (%s): exit %d, %d objects ok\n  %s" % (
        how, p.returncode, sum(ln.startswith("ok ") for ln in lines), "\n  ".join(keep)))
    return p.returncode == 0


def slope_per_min(points):
    if len(points) < 2:
        return float("nan")
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    den = sum((t - mx) ** 2 for t, _ in points)
    return 60 * sum((t - mx) * (v - my) for t, v in points) / den if den else float("nan")


class Env:
    pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--layers-kib", default="128,512,1024")
    ap.add_argument("--workers", type=int, default=4, help="asyncio clients pulling")
    ap.add_argument("--skopeo", type=int, default=1, help="threads running skopeo copy")
    ap.add_argument("--cache-max-size", default="6M")
    ap.add_argument("--rss-slack-mib", type=float, default=8.0,
                    help="RSS growth after the warm-up still counted as flat")
    ap.add_argument("--seed", type=int, default=11)
    a = ap.parse_args()
    sizes = [int(x) << 10 for x in a.layers_kib.split(",")]
    ca = h.shared_ca()
    reg = h.Registry()
    env = Env()
    env.images = []
    for i in range(a.images):
        img = h.OciImage(os.path.join(h.tmpdir(), "img%d" % i), tag="v%d" % i,
                         layer_sizes=sizes)
        img.repo = "soak/img%d" % i
        h.skopeo(["copy", "--dest-cert-dir", ca.certdir, "oci:%s:%s" % (img.path, img.tag),
                  "docker://127.0.0.1:%d/%s:%s" % (reg.port, img.repo, img.tag)])
        env.images.append(img)
    total = sum(sum(os.path.getsize(os.path.join(img.path, "blobs", "sha256", d[7:]))
                    for d in img.blobs | {img.manifest}) for img in env.images)
    rp = h.Regproxy(["--log-level", "warn", "--mitm", HOST, "--upstream-ca", ca.ca_crt,
                     "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, reg.port),
                     "--cache-max-size", a.cache_max_size])
    env.port, env.url = rp.port, rp.url
    env.rp_ctx = ssl.create_default_context(cafile=os.path.join(rp.dir, "ca", "ca.crt"))
    env.tmp = h.tmpdir()
    env.cdir = os.path.join(env.tmp, "certs")
    os.makedirs(env.cdir)
    shutil.copy(os.path.join(rp.dir, "ca", "ca.crt"), os.path.join(env.cdir, "ca.crt"))
    cache_dir = os.path.join(rp.dir, "cache")
    print("soak: %.1f min, %d images of %s KiB layers (%.1f MiB in all), --cache-max-size %s;"
          " %d pulling clients + %d skopeo" % (a.minutes, a.images, a.layers_kib,
                                               total / 1048576.0, a.cache_max_size,
                                               a.workers, a.skopeo), flush=True)
    before = load.request_counts(rp)
    stats = Stats()
    samples = []
    elapsed = asyncio.run(soak(env, a, stats, rp, samples))
    after = load.request_counts(rp)
    size, evictions = cache_figures(rp)
    final = load.sample(rp.proc.pid)

    n = sum(stats.pulls.values())
    print("\n%d pulls in %.0f s (%s); direct pulls p50 %.0f ms, p99 %.0f ms" % (
        n, elapsed, ", ".join("%s %d" % kv for kv in sorted(stats.pulls.items())),
        load.pct(stats.lat, 50) * 1e3, load.pct(stats.lat, 99) * 1e3))
    print("regproxy_requests_total by route/cache during the soak:")
    for k in sorted(after):
        if after[k] - before.get(k, 0):
            print("  %-22s %8d" % (k, after[k] - before.get(k, 0)))
    print("evictions: %d; cache at the end: %.1f MiB (bound %s)" % (
        evictions, size / 1048576.0, a.cache_max_size))
    nerr = sum(stats.errors.values())
    print("errors: %d" % nerr)
    for msg, k in stats.errors.most_common():
        print("  %6d x %s" % (k, msg))

    warm = [(t, v) for t, v in samples if t >= elapsed / 5]
    flat = True
    if warm:
        growth = final["rss"] - warm[0][1]
        flat = growth <= a.rss_slack_mib
        print("RSS MiB: start %.1f, end of warm-up (%.0f s) %.1f, max after %.1f, end %.1f "
              "(VmHWM %.1f); growth after warm-up %+.1f MiB, slope %+.2f MiB/min: %s" % (
                  samples[0][1], warm[0][0], warm[0][1], max(v for _, v in warm),
                  final["rss"], final["hwm"], growth, slope_per_min(warm),
                  "flat" if flat else "GROWING"))
    clean = verify(rp, cache_dir, "through the running instance")
    rp.proc.stop(timeout=10)
    rp._exit_expected = True
    clean = verify(rp, cache_dir, "on the stopped directory") and clean
    rp.check()
    sys.exit(0 if clean and flat and nerr == 0 else 1)


if __name__ == "__main__":
    main()
