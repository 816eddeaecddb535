#!/usr/bin/env python3
"""Cold vs warm pull through regproxy (issue 4), measured side by side in one run:
skopeo copies a multi-layer image from the distribution registry through regproxy's
MITM — first with an empty cache, then again (warm) — and directly from the registry.
Also: aggregate throughput of N concurrent warm clients fetching one large blob.

  python3 bench/pull.py [--layers-mib 64,32,16,8] [--runs 3] [--clients 20] [--blob-mib 256]
"""
import argparse
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "integration"))
import harness as h  # noqa: E402

HOST = "registry-1.docker.io"


def timed(fn):
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers-mib", default="64,32,16,8")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--blob-mib", type=int, default=256)
    a = ap.parse_args()
    sizes = [int(x) << 20 for x in a.layers_mib.split(",")]
    ca = h.shared_ca()
    reg = h.Registry()
    img = h.OciImage(os.path.join(h.tmpdir(), "img"), tag="b", layer_sizes=sizes)
    h.skopeo(["copy", "--dest-cert-dir", ca.certdir, "oci:%s:b" % img.path,
              "docker://127.0.0.1:%d/library/bench:b" % reg.port])
    rp = h.Regproxy(["--log-level", "warn", "--mitm", HOST, "--upstream-ca", ca.ca_crt,
                     "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, reg.port)])
    cdir = h.tmpdir()
    shutil.copy(os.path.join(rp.dir, "ca", "ca.crt"), os.path.join(cdir, "ca.crt"))

    def pull_via(proxy):
        out = os.path.join(h.tmpdir(), "o")
        if proxy:
            h.skopeo(["copy", "--src-cert-dir", cdir, "docker://%s/library/bench:b" % HOST,
                      "oci:%s:b" % out], env={"HTTPS_PROXY": rp.url})
        else:
            h.skopeo(["copy", "--src-cert-dir", ca.certdir,
                      "docker://127.0.0.1:%d/library/bench:b" % reg.port, "oci:%s:b" % out])
        shutil.rmtree(out)

    direct = min(timed(lambda: pull_via(False)) for _ in range(a.runs))
    cold = timed(lambda: pull_via(True))
    warm = min(timed(lambda: pull_via(True)) for _ in range(a.runs))
    total = sum(sizes) / 1e6
    print("skopeo pull of a %d-layer image (%.0f MB) from the distribution registry" % (
        len(sizes), total))
    print("  direct               %6.2f s" % direct)
    print("  regproxy, cold cache %6.2f s  (%.2fx direct)" % (cold, cold / direct))
    print("  regproxy, warm cache %6.2f s  (%.2fx direct, %.2fx cold)" % (
        warm, warm / direct, warm / cold))

    # N concurrent warm clients on one big blob.
    blob = os.path.join(h.tmpdir(), "blob.bin")
    h.random_file(blob, a.blob_mib << 20)
    # Push the raw blob with curl (monolithic upload), as bench/mitm.py does.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import mitm
    dg = mitm.push_blob(reg, ca.ca_crt, blob)
    url = "https://%s/v2/bench/blob/blobs/%s" % (HOST, dg)
    args = ["curl", "-sS", "--fail", "-o", "/dev/null", "-x", rp.url, "--cacert",
            os.path.join(cdir, "ca.crt"), url]
    subprocess.run(args, check=True)  # warm it
    t0 = time.monotonic()
    procs = [subprocess.Popen(args) for _ in range(a.clients)]
    for p in procs:
        if p.wait() != 0:
            raise SystemExit("a warm client failed")
    secs = time.monotonic() - t0
    print("%d concurrent warm clients, one %d MiB blob each: %.0f MB/s aggregate (%.2f s)" % (
        a.clients, a.blob_mib, a.clients * (a.blob_mib << 20) / secs / 1e6, secs))


if __name__ == "__main__":
    main()
