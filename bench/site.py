#!/usr/bin/env python3
"""A wave of N nodes pulling one image at once, with and without a site tier (issue 10,
docs/fleet.md), measured side by side in one run on loopback:

- the origin: the distribution registry (TLS, as registry-1.docker.io) behind a relay that
  shapes the site's internet link: one token bucket shared by every connection
  (--origin-mbit), and counts the bytes the origin sent;
- the site tier: --site regproxy instances in mirror mode behind haproxy run from
  deploy/haproxy.cfg (as tests/integration/test_site_tier.py does);
- nodes: regproxy with --upstream-mirror docker.io=<haproxy> (or none: straight to the
  origin), one skopeo each, all at once.

Prints, for each case: wall time, bytes from the origin and that as a multiple of the image
size. Cases: one node alone (no site), one node alone through a cold site, a wave through a
cold site, a wave through the warm site (new nodes), a wave with no site tier.

  python3 bench/site.py [--nodes 6] [--site 3] [--layers-mib 32,16,8,4] [--origin-mbit 400]
"""
import argparse
import os
import shutil
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "integration"))
import harness as h  # noqa: E402
import test_site_tier as st  # noqa: E402  (PacedRelay, HAProxy)

HOST = "registry-1.docker.io"


class SharedLink(st.PacedRelay):
    """PacedRelay with one token bucket for all connections: a site's uplink, not a
    per-connection pace (N nodes straight to the origin share it)."""

    def __init__(self, port, rate):
        self.bucket_t = time.monotonic()
        self.tokens = 0.0
        self.burst = 256 * 1024
        super().__init__(port, rate)

    def _take(self, n):
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.bucket_t) * self.rate)
            self.bucket_t = now
            self.tokens -= n
            self.down += n
            wait = -self.tokens / self.rate if self.tokens < 0 else 0
        if wait:
            time.sleep(wait)  # shaping the link

    def _pipe(self, src, dst, rate):
        try:
            while True:
                b = src.recv(65536)
                if not b:
                    break
                if rate:
                    self._take(len(b))
                dst.sendall(b)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RD)
                except OSError:
                    pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=6)
    ap.add_argument("--site", type=int, default=3)
    ap.add_argument("--layers-mib", default="32,16,8,4")
    ap.add_argument("--origin-mbit", type=float, default=400)
    a = ap.parse_args()
    if not shutil.which("haproxy"):
        sys.exit("haproxy is not installed (apt-get install haproxy)")
    sizes = [int(x) << 20 for x in a.layers_mib.split(",")]
    ca = h.shared_ca()
    reg = h.Registry()
    img = h.OciImage(os.path.join(h.tmpdir(), "img"), tag="1", layer_sizes=sizes)
    h.skopeo(["copy", "--dest-cert-dir", ca.certdir, "oci:%s:1" % img.path,
              "docker://127.0.0.1:%d/team/app:1" % reg.port])
    d = os.path.join(img.path, "blobs", "sha256")
    size = sum(os.path.getsize(os.path.join(d, x[7:])) for x in img.blobs | {img.manifest})
    link = SharedLink(reg.port, a.origin_mbit * 1e6 / 8)
    # The test module's helpers read these globals.
    st.CA, st.REG, st.ORIGIN, st.IMG, st.IMG_SIZE = ca, reg, link, img, size
    quiet = ["--log-level", "warn"]

    def origin():
        return ["--connect-to", "%s:443:127.0.0.1:%d" % (HOST, link.port),
                "--upstream-ca", ca.ca_crt]

    def site():
        insts = [h.Regproxy(["--mitm", ""] + quiet + origin()) for _ in range(a.site)]
        return st.HAProxy([s.port for s in insts])

    def nodes(n, mirror):
        m = ["--upstream-mirror", "docker.io=" + mirror] if mirror else []
        return [h.Regproxy(["--mitm", HOST] + m + quiet + origin()) for _ in range(n)]

    rows = []

    def case(name, ns):
        b0 = link.down
        t = st.wave(ns)
        got = link.down - b0
        rows.append((name, len(ns), t, got, got / size))
        for rp in ns:
            rp.stop()

    case("one node alone, no site tier", nodes(1, None))
    hap = site()
    case("one node alone, cold site tier", nodes(1, hap.url))
    hap = site()
    case("wave, cold site tier", nodes(a.nodes, hap.url))
    case("wave, warm site tier (new nodes)", nodes(a.nodes, hap.url))
    case("wave, no site tier", nodes(a.nodes, None))
    # What fresh writes cost here (TESTING.md: fresh page-cache pages are slow on these
    # VMs): a warm wave writes N x image twice (each node's cache, each skopeo's output).
    floor_dir = h.tmpdir()
    t0 = time.monotonic()
    chunk = os.urandom(1 << 20)
    for i in range(2 * a.nodes):
        with open(os.path.join(floor_dir, str(i)), "wb") as f:
            for _ in range(size >> 20):
                f.write(chunk)
    floor = time.monotonic() - t0
    shutil.rmtree(floor_dir)
    print("image: %d blobs, %.1f MB; origin link %.0f Mbit/s shared; site: %d instances "
          "behind haproxy" % (len(img.blobs) + 1, size / 1e6, a.origin_mbit, a.site))
    print("%-36s %5s %8s %14s %10s" % ("case", "nodes", "wall s", "origin bytes", "x image"))
    for name, n, t, got, x in rows:
        print("%-36s %5d %8.2f %14d %10.2f" % (name, n, t, got, x))
    print("writing 2 x %d x image of fresh data to /tmp here takes %.2fs (the floor of a warm "
          "wave on this machine)" % (a.nodes, floor))


if __name__ == "__main__":
    main()
