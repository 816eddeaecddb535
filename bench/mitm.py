#!/usr/bin/env python3
"""MITM benchmark: one large blob fetched from the distribution registry directly and
through regproxy's MITM, side by side: the first fetch through regproxy (relayed while
it fills the cache) and the later ones (cache hits); regproxy's peak RSS; TLS handshake
rates through the MITM with a cached leaf and with a new leaf minted per host.

  python3 bench/mitm.py [--size-mib 1024] [--runs 3] [--handshakes 300]
"""
import argparse
import hashlib
import os
import socket
import ssl
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "integration"))
import harness as h  # noqa: E402

HOST = "registry-1.docker.io"


def status_kib(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


def push_blob(reg, ca, path):
    """Monolithic upload of a raw blob; returns its digest."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    dg = "sha256:" + sha.hexdigest()
    base = "https://127.0.0.1:%d/v2/bench/blob/blobs/uploads/" % reg.port
    out = subprocess.run(["curl", "-sS", "-D", "-", "-o", "/dev/null", "--cacert", ca, "-X",
                          "POST", base], check=True, capture_output=True, text=True).stdout
    loc = [ln.split(":", 1)[1].strip() for ln in out.splitlines()
           if ln.lower().startswith("location:")][0]
    if loc.startswith("/"):
        loc = "https://127.0.0.1:%d%s" % (reg.port, loc)
    sep = "&" if "?" in loc else "?"
    subprocess.run(["curl", "-sS", "-o", "/dev/null", "--fail", "--cacert", ca, "-X", "PUT",
                    "-H", "Content-Type: application/octet-stream", "-T", path,
                    loc + sep + "digest=" + dg], check=True)
    return dg


def fetch(args):
    t0 = time.monotonic()
    out = subprocess.run(["curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{size_download}"] +
                         args, check=True, capture_output=True, text=True).stdout
    return time.monotonic() - t0, int(out)


def handshakes(rp, cafile, n, distinct):
    ctx = ssl.create_default_context(cafile=cafile)
    t0 = time.monotonic()
    for i in range(n):
        host = "h%d.bench.test" % i if distinct else "same.bench.test"
        s = socket.create_connection(("127.0.0.1", rp.port))
        s.sendall(("CONNECT %s:443 HTTP/1.1\r\nHost: %s:443\r\n\r\n" % (host, host)).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(256)
        t = ctx.wrap_socket(s, server_hostname=host)
        t.close()
    return n / (time.monotonic() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--handshakes", type=int, default=300)
    a = ap.parse_args()
    ca = h.shared_ca()
    reg = h.Registry()
    path = os.path.join(h.tmpdir(), "blob.bin")
    h.random_file(path, a.size_mib << 20)
    dg = push_blob(reg, ca.ca_crt, path)
    rp = h.Regproxy(["--log-level", os.environ.get("RP_BENCH_LOG", "warn"), "--mitm", "%s,.bench.test" % HOST,
                     "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, reg.port),
                     "--upstream-ca", ca.ca_crt])
    rpca = os.path.join(rp.dir, "ca", "ca.crt")
    size = a.size_mib << 20
    direct_args = ["--cacert", ca.ca_crt,
                   "https://127.0.0.1:%d/v2/bench/blob/blobs/%s" % (reg.port, dg)]
    rp_args = ["-x", rp.url, "--cacert", rpca, "https://%s/v2/bench/blob/blobs/%s" % (HOST, dg)]

    def best(args, runs):
        b = None
        for _ in range(runs):
            secs, got = fetch(args)
            if got != size:
                raise SystemExit("%d bytes, want %d" % (got, size))
            b = secs if b is None else min(b, secs)
        return size / b / 1e6

    direct = best(direct_args, a.runs)
    cold = best(rp_args, 1)  # first fetch: relayed while it fills the cache
    cold_rss = status_kib(rp.proc.pid, "VmHWM") / 1024.0
    warm = best(rp_args, a.runs)  # served from the cache
    print("one %d MiB blob over TLS from the distribution registry" % a.size_mib)
    print("  direct from the registry      %6.0f MB/s (best of %d)" % (direct, a.runs))
    print("  regproxy MITM, cold (fills)   %6.0f MB/s  %5.2fx direct  peak RSS %.1f MiB" % (
        cold, cold / direct, cold_rss))
    print("  regproxy MITM, warm (hit)     %6.0f MB/s  %5.2fx direct  peak RSS %.1f MiB" % (
        warm, warm / direct, status_kib(rp.proc.pid, "VmHWM") / 1024.0))
    same = handshakes(rp, rpca, a.handshakes, distinct=False)
    fresh = handshakes(rp, rpca, a.handshakes, distinct=True)
    print("TLS handshakes through MITM (sequential Python client, CONNECT + TLS 1.3):")
    print("  cached leaf      %6.0f /s" % same)
    print("  new leaf per host %5.0f /s  (each mints a certificate)" % fresh)


if __name__ == "__main__":
    main()
