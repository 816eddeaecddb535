"""Happy Eyeballs (contract §2, RFC 8305) with the real resolver: inside a private network
and mount namespace, /etc/hosts gives "dual.test" both ::1 and 127.0.0.1. The origin
listens on IPv4 only, so the IPv6 attempt fails and the IPv4 one must win: at once when
IPv6 is refused, after the 250 ms delay when IPv6 SYNs are silently dropped (nft)."""

import os
import shutil
import socket
import subprocess
import sys
import time

INNER = "RP_TEST_HE_INNER"

if os.environ.get(INNER) != "1":
    # Re-run this file inside new network + mount namespaces (root only).
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        print("skipped: needs root and unshare")
        print("0 passed, 0 failed, 1 skipped")
        sys.exit(0)
    env = dict(os.environ, **{INNER: "1"})
    os.execvpe("unshare", ["unshare", "--net", "--mount", "--", sys.executable, "-u",
                           os.path.abspath(__file__)], env)

import harness as h  # noqa: E402


def setup():
    global ORIGIN, RP, PORT
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    hosts = os.path.join(h.tmpdir(), "hosts")
    # ::1 first, so the resolver's first answer is IPv6 (RFC 8305 §4 keeps that order).
    h.write_file(hosts, "::1 dual.test\n127.0.0.1 dual.test\n127.0.0.1 localhost\n",
                 mode=0o644)
    subprocess.run(["mount", "--bind", hosts, "/etc/hosts"], check=True)
    # A plain IPv4-only origin: a listener that answers every connection with one line.
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    PORT = srv.getsockname()[1]
    ORIGIN = srv
    import threading

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            c.sendall(b"hello from v4\n")
            c.close()
    threading.Thread(target=serve, daemon=True).start()
    RP = h.Regproxy([])


def tunnel_ms():
    c = RP.conn()
    t0 = time.monotonic()
    r = c.connect_tunnel("dual.test:%d" % PORT)
    ms = (time.monotonic() - t0) * 1000
    assert r.status == 200, "CONNECT dual.test answered %r" % r
    assert c.read_to_eof() == b"hello from v4\n"
    return ms


def test_ipv6_refused_falls_back_at_once():
    ms = tunnel_ms()
    assert ms < 200, "IPv4 attempt waited %.0f ms after IPv6 was refused" % ms


def test_ipv6_silent_falls_back_after_250ms():
    if shutil.which("nft") is None:
        print("  (nft missing: case skipped)")
        return
    subprocess.run(["nft", "add table ip6 he; add chain ip6 he out { type filter hook output "
                    "priority 0; policy accept; }; add rule ip6 he out tcp dport %d drop" % PORT],
                   check=True)
    try:
        ms = tunnel_ms()
    finally:
        subprocess.run(["nft", "delete table ip6 he"], check=True)
    assert 230 <= ms < 2000, "tunnel via IPv4 took %.0f ms with IPv6 black-holed" % ms


if __name__ == "__main__":
    h.main(globals())
