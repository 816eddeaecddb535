#!/usr/bin/env python3
"""Idle RSS and start-up to ready (issue 14), with N objects in the cache directory.

  python3 bench/startup.py [--objects 10000] [--runs 5] [--object-kib 4]

Prints, for regproxy started with its defaults plus a MITM registry
(`--mitm registry-1.docker.io`, `--connect-to` to a local distribution registry):

- idle RSS: VmRSS (and VmHWM) from /proc/PID/status once `/healthz` answers and the
  process has been left alone for a second, with an empty cache and with N objects;
- start-up to ready: the time from exec (just before `Popen`) until `GET /healthz`
  answers 200, polled in a tight loop (a new connection every ~0.2 ms), with an empty
  cache and with N objects; the median and the best of --runs starts, and the CPU time
  regproxy had used by then (all threads, /proc/PID/task/*/schedstat), which a loaded
  machine blurs much less than the wall time. The CA is created
  by a first start that is not counted (creating a CA key is a one-off).

The N cached objects are written the way the cache writes them (src/cache/store.c,
index.c): each a file `blobs/sha256/<2 hex>/<hex>` whose name is the sha256 of its
bytes, and a row in `index.db` (SQLite, the cache's own schema, created by one start of
regproxy on the empty directory), each object also a member of one repository
(`object_repos`), like a pulled layer. Writing them directly takes a second or two for
10,000; filling them through the proxy would take minutes. The directory is made once
and reused by every start.

Targets (issue 14): idle RSS <= 10 MiB; start-up to ready <= 50 ms with 10,000 objects.
It never fails on a timing: figures are for people (the machine may be loaded).
"""
import argparse
import hashlib
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "integration"))
import harness as h  # noqa: E402

HOST = "registry-1.docker.io"
RSS_TARGET_MIB = 10
READY_TARGET_MS = 50


def fill_cache(cache_dir, n, size):
    """n objects of `size` bytes, written like the cache writes them."""
    db = sqlite3.connect(os.path.join(cache_dir, "index.db"))
    now = int(time.time())
    rows, repos = [], []
    made = set()
    for i in range(n):
        data = i.to_bytes(8, "little") * (size // 8) if size >= 8 else i.to_bytes(8, "little")
        hx = hashlib.sha256(data).hexdigest()
        sub = os.path.join(cache_dir, "blobs", "sha256", hx[:2])
        if sub not in made:
            os.makedirs(sub, mode=0o700, exist_ok=True)
            made.add(sub)
        with open(os.path.join(sub, hx), "wb") as f:
            f.write(data)
        dg = "sha256:" + hx
        rows.append((dg, len(data), "", 0, now - n + i))
        repos.append((dg, HOST, "library/bench%d" % (i % 50)))
    with db:
        db.executemany("INSERT OR REPLACE INTO objects(digest, size, media_type, is_manifest, "
                       "last_access) VALUES (?, ?, ?, ?, ?)", rows)
        db.executemany("INSERT OR IGNORE INTO object_repos(digest, registry, repository) "
                       "VALUES (?, ?, ?)", repos)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def healthz(port):
    s = socket.socket()
    try:
        s.settimeout(1.0)
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n"
                  % port)
        return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False
    finally:
        s.close()


def status(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])  # kB
    return 0


class Instance:
    def __init__(self, argv_base, cache_dir, ca_dir, env):
        self.port = h.free_port()
        self.argv = argv_base + ["--listen", "127.0.0.1:%d" % self.port, "--cache-dir",
                                 cache_dir, "--ca-dir", ca_dir]
        self.env = env

    def start(self, timeout=30.0):
        """Start; return seconds from exec to /healthz 200."""
        err = open(os.path.join(h.tmpdir(), "stderr.log"), "wb")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=err, stderr=err)
        while True:
            if healthz(self.port):
                t = time.monotonic() - t0
                self.cpu = self.cpu_ms()
                break
            if self.proc.poll() is not None:
                raise SystemExit("regproxy exited with %s: %s" % (self.proc.returncode, self.argv))
            if time.monotonic() - t0 > timeout:
                raise SystemExit("regproxy not ready after %.0f s" % timeout)
            time.sleep(0.0002)
        err.close()
        return t

    def cpu_ms(self):
        """CPU time of the process so far (every thread, from schedstat, in ms): what
        the start-up cost, whatever else the machine was doing."""
        total = 0
        for tid in os.listdir("/proc/%d/task" % self.proc.pid):
            try:
                with open("/proc/%d/task/%s/schedstat" % (self.proc.pid, tid)) as f:
                    total += int(f.read().split()[0])
            except OSError:
                pass
        return total / 1e6

    def rss(self):
        return status(self.proc.pid, "VmRSS"), status(self.proc.pid, "VmHWM")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=10000)
    ap.add_argument("--object-kib", type=int, default=4)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--settle", type=float, default=1.0, help="seconds idle before RSS")
    a = ap.parse_args()

    ca = h.shared_ca()
    reg = h.Registry()
    env = h.clean_env(HOME=h.tmpdir())
    base = [h.regproxy_bin(), "--log-level", "warn", "--mitm", HOST, "--upstream-ca", ca.ca_crt,
            "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, reg.port)]
    ca_dir = os.path.join(h.tmpdir(), "ca")
    empty = os.path.join(h.tmpdir(), "cache-empty")
    full = os.path.join(h.tmpdir(), "cache-full")

    # First starts: create the CA and both caches' schema (not counted).
    for d in (empty, full):
        i = Instance(base, d, ca_dir, env)
        i.start()
        i.stop()
    t0 = time.monotonic()
    fill_cache(full, a.objects, a.object_kib << 10)
    print("wrote %d cached objects of %d KiB in %.1f s" % (a.objects, a.object_kib,
                                                          time.monotonic() - t0))

    results = {}
    for name, d in (("empty cache", empty), ("%d objects" % a.objects, full)):
        times, rss, cpu = [], [], []
        for _ in range(a.runs):
            i = Instance(base, d, ca_dir, env)
            times.append(i.start())
            cpu.append(i.cpu)
            time.sleep(a.settle)
            rss.append(i.rss())
            i.stop()
        results[name] = (times, rss, cpu)

    print("regproxy %s, defaults plus --mitm %s (machine load %s)" % (
        h.regproxy_bin(), HOST, " ".join(open("/proc/loadavg").read().split()[:3])))
    print("%-16s %28s %13s %24s" % ("", "start-up to ready (ms)", "CPU (ms)",
                                    "idle RSS (MiB)"))
    print("%-16s %9s %9s %9s %13s %12s %11s" % ("", "median", "best", "worst", "median",
                                                "VmRSS", "VmHWM"))
    for name, (times, rss, cpu) in results.items():
        ms = sorted(t * 1000 for t in times)
        r = statistics.median(x[0] for x in rss) / 1024
        hwm = statistics.median(x[1] for x in rss) / 1024
        print("%-16s %9.1f %9.1f %9.1f %13.1f %12.1f %11.1f" % (
            name, statistics.median(ms), ms[0], ms[-1], statistics.median(cpu), r, hwm))
    print("targets (issue 14): idle RSS <= %d MiB (empty cache); start-up to ready <= %d ms "
          "with 10,000 objects" % (RSS_TARGET_MIB, READY_TARGET_MS))


if __name__ == "__main__":
    main()
