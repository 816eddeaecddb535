#!/usr/bin/env python3
"""Transparent (gateway) mode next to proxy mode, same run, same namespaces (root only).

  python3 bench/transparent.py [--size-mib 512] [--runs 3]

The namespaces of tests/integration/test_transparent.py (client / gateway / server);
curl in the client namespace fetches one large body:
1. tunnel: https://origin.test/big from nginx in the server namespace - directly (no
   rule), through regproxy's transparent listener (REDIRECT, SNI not intercepted), and
   through a CONNECT tunnel to regproxy's --listen port;
2. cache hit: a registry blob of the same size through MITM (transparent and CONNECT),
   after one fill.
Best of --runs, MB/s and regproxy's CPU seconds (utime+stime) per fetch.
"""
import argparse
import hashlib
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
import harness as h  # noqa: E402
import test_transparent as t  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def curl(args):
    argv = ["ip", "netns", "exec", t.NS["c"], "curl", "-sS", "--http1.1", "-o", "/dev/null",
            "-w", "%{size_download}"] + args
    t0 = time.monotonic()
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return time.monotonic() - t0, int(out)


def measure(name, args, size, runs, pid):
    best = None
    for _ in range(runs):
        c0 = cpu_seconds(pid)
        secs, got = curl(args)
        c1 = cpu_seconds(pid)
        if got != size:
            raise SystemExit("%s: got %d bytes, want %d" % (name, got, size))
        if best is None or secs < best[0]:
            best = (secs, c1 - c0)
    print("%-34s %8.0f MB/s   regproxy CPU %.2f s" % (name, size / best[0] / 1e6, best[1]),
          flush=True)


def nginx_in_server(path_big):
    d = h.tmpdir("rpbench-nginx-")
    os.makedirs(os.path.join(d, "tmp"))
    os.makedirs(os.path.join(d, "html"))
    os.link(path_big, os.path.join(d, "html", "big"))
    conf = os.path.join(d, "nginx.conf")
    h.write_file(conf, """daemon off; master_process off; worker_processes 1;
error_log %(d)s/error.log; pid %(d)s/nginx.pid;
events { worker_connections 64; }
http { access_log off; sendfile on; client_body_temp_path %(d)s/tmp;
  server { listen %(ip)s:443 ssl; ssl_certificate %(crt)s; ssl_certificate_key %(key)s;
           root %(d)s/html; } }
""" % {"d": d, "ip": t.ORIGIN_IP, "crt": t.CA.chain, "key": t.CA.key})
    p = h.Proc(["ip", "netns", "exec", t.NS["s"], "nginx", "-p", d, "-c", conf],
               name="nginx", stderr=os.path.join(d, "stderr.log"))
    h.defer(p.kill)

    def up():
        try:
            t.ns_connect("s", t.ORIGIN_IP, 443, 1).close()
            return True
        except OSError:
            return False
    h.wait_until(up, 10, "nginx in the server namespace")


def push_blob(path):
    """A monolithic upload of the file as one blob of library/alpine; its digest."""
    dg = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            dg.update(chunk)
    digest = "sha256:" + dg.hexdigest()
    url = "https://registry.test/v2/library/alpine/blobs/uploads/"
    out = subprocess.run(["ip", "netns", "exec", t.NS["s"], "curl", "-sS", "-D", "-", "-o",
                          "/dev/null", "-X", "POST", "--cacert", t.CA.ca_crt, url],
                         check=True, capture_output=True, text=True).stdout
    loc = [ln.split(":", 1)[1].strip() for ln in out.splitlines()
           if ln.lower().startswith("location:")][0]
    if loc.startswith("/"):
        loc = "https://registry.test" + loc
    sep = "&" if "?" in loc else "?"
    subprocess.run(["ip", "netns", "exec", t.NS["s"], "curl", "-sSf", "-X", "PUT",
                    "--cacert", t.CA.ca_crt, "-H", "Content-Type: application/octet-stream",
                    "--data-binary", "@" + path, loc + sep + "digest=" + digest],
                   check=True, capture_output=True)
    return digest


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root")
    scope = h._Scope("bench")
    h._scopes.append(scope)
    try:
        t.REAL_BIN = h.regproxy_bin()
        t.CA = h.TestCA(names=["registry.test", "origin.test"],
                        ips=(t.REG_IP, t.ORIGIN_IP, t.REG6_IP, t.ORIGIN6_IP))
        t.make_namespaces()
        t.REG = t.NsRegistry(t.CA)
        size = a.size_mib << 20
        big = os.path.join(h.tmpdir("rpbench-"), "big")
        h.random_file(big, size)
        nginx_in_server(big)
        digest = push_blob(big)
        rp = t.start_regproxy(extra=["--access-check", "off", "--connect-to",
                                     "origin.test:443:%s:443" % t.ORIGIN_IP, "--connect-to",
                                     "registry.test:443:%s:443" % t.REG_IP])
        pid = rp.proc.pid
        lan_ca = os.path.join(t.regproxy_ca(rp), "ca.crt")
        proxy = "http://%s:%d" % (t.GW_IP, rp.port)
        origin = ["--cacert", t.CA.ca_crt, "--resolve", "origin.test:443:" + t.ORIGIN_IP,
                  "https://origin.test/big"]
        blob = ["--cacert", lan_ca, "--resolve", "registry.test:443:" + t.REG_IP,
                "https://registry.test/v2/library/alpine/blobs/" + digest]
        print("body %d MiB, best of %d, regproxy %s" % (a.size_mib, a.runs, t.REAL_BIN))
        measure("tunnel, direct (no rule)", origin, size, a.runs, pid)
        measure("tunnel, CONNECT (proxy)", ["-p", "-x", proxy] + origin, size, a.runs, pid)
        t.generated_rules(rp)
        measure("tunnel, transparent (REDIRECT)", origin, size, a.runs, pid)
        curl(blob)  # the fill
        measure("cache hit, transparent MITM", blob, size, a.runs, pid)
        measure("cache hit, CONNECT MITM", ["-p", "-x", proxy] + blob, size, a.runs, pid)
        hits = [ln for ln in rp.request_logs(route="mitm") if ln.get("cache") == "hit"]
        print("cache hits logged: %d (transparent %d)" % (
            len(hits), sum(1 for ln in hits if ln.get("via") == "transparent")))
    finally:
        h._scopes.pop()
        scope.close()
        h._kill_all_live()


if __name__ == "__main__":
    main()
