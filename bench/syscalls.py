#!/usr/bin/env python3
"""The system calls regproxy makes for one cold and one warm GET of a blob through MITM
(strace -c on the running instance), a measure that load on the machine does not blur.

  python3 bench/syscalls.py [--blob-mib 256]      (REGPROXY_BIN picks another binary)
"""
import argparse
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "integration"))
import harness as h  # noqa: E402

HOST = "registry-1.docker.io"


def strace_counts(path):
    rows = {}
    for line in open(path):
        f = line.split()
        # "% time  seconds  usecs/call  calls  [errors]  syscall"
        if len(f) >= 5 and f[-1].isidentifier() and f[3].isdigit():
            rows[f[-1]] = int(f[3])
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--blob-mib", type=int, default=256)
    a = ap.parse_args()
    ca = h.shared_ca()
    reg = h.Registry()
    img = h.OciImage(os.path.join(h.tmpdir(), "img"), tag="b", layer_sizes=[a.blob_mib << 20])
    h.skopeo(["copy", "--dest-cert-dir", ca.certdir, "oci:%s:b" % img.path,
              "docker://127.0.0.1:%d/big/one:b" % reg.port])
    rp = h.Regproxy(["--mitm", HOST, "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, reg.port),
                     "--upstream-ca", ca.ca_crt, "--log-level", "warn"])
    rpca = os.path.join(rp.dir, "ca", "ca.crt")
    url = "https://%s/v2/big/one/blobs/%s" % (HOST, img.layers[0])
    for label in ("cold", "warm"):
        out = os.path.join(h.tmpdir(), "strace.txt")
        st = subprocess.Popen(["strace", "-c", "-f", "-o", out, "-p", str(rp.proc.pid)],
                              stderr=subprocess.DEVNULL)
        # strace prints nothing when attached; a GET that answers tells it is (it is
        # attached within milliseconds, the GET below takes a second).
        h.wait_until(lambda: rp.get_admin("/healthz").status == 200, 5, "strace attached")
        t = time.monotonic()
        p = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-x", rp.url, "--cacert", rpca, url],
                           env=h.clean_env())
        dt = time.monotonic() - t
        assert p.returncode == 0, p
        if label == "cold":  # the fill publishes after the last byte went out
            h.wait_until(lambda: rp.metrics().sum("regproxy_fills_in_flight") == 0, 10,
                         "the fill published")
        st.send_signal(signal.SIGINT)
        st.wait()
        rows = strace_counts(out)
        top = sorted(((k, v) for k, v in rows.items() if k != "total"), key=lambda kv: -kv[1])
        print("%s: %d MiB in %.2f s, %d system calls: %s" % (
            label, a.blob_mib, dt, rows.get("total", 0),
            ", ".join("%s %d" % kv for kv in top[:8])))


if __name__ == "__main__":
    main()
