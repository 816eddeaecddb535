"""Timeouts and connection limits (contract §4, §7): idle keep-alive clients are closed
after --idle-timeout, quiet tunnels after --tunnel-idle-timeout (busy ones stay), and
beyond --max-connections new clients wait in the backlog until a slot frees."""

import select
import time

import harness as h


def setup():
    global ORIGIN, EOFSRV
    ORIGIN = h.Nginx()
    EOFSRV = h.EofServer()


def test_idle_keepalive_client_closed():
    rp = h.Regproxy(["--idle-timeout", "1s"])
    c = rp.conn()
    r = c.request("GET", "http://127.0.0.1:%d/a.txt" % ORIGIN.http_port)
    assert r.status == 200
    t0 = time.monotonic()
    assert c.at_eof(6), "idle keep-alive connection still open 6s after the response"
    dt = time.monotonic() - t0
    assert dt >= 0.8, "idle connection closed after %.2fs with --idle-timeout 1s" % dt


def test_quiet_tunnel_closed_busy_tunnel_kept():
    rp = h.Regproxy(["--tunnel-idle-timeout", "1s",
                     "--connect-to", "eof.test:80:127.0.0.1:%d" % EOFSRV.port,
                     "--connect-to", "plain.test:80:127.0.0.1:%d" % ORIGIN.http_port])
    quiet = rp.conn()
    assert quiet.connect_tunnel("eof.test:80").status == 200
    busy = rp.conn()
    assert busy.connect_tunnel("plain.test:80").status == 200
    t0 = time.monotonic()
    closed_at = None
    # Keep the busy tunnel talking every 0.3 s for 3 s while the quiet one must close.
    while time.monotonic() - t0 < 3.0:
        r = busy.request("GET", "/a.txt", host="plain.test")
        assert r.status == 200, "busy tunnel broke after %.1fs: %r" % (
            time.monotonic() - t0, r)
        if closed_at is None:
            if quiet.at_eof(0.3):
                closed_at = time.monotonic() - t0
        else:
            time.sleep(0.3)  # pacing the busy tunnel's traffic, not synchronisation
    if closed_at is None:
        closed_at = time.monotonic() - t0 if quiet.at_eof(3) else None
    assert closed_at is not None, "quiet tunnel still open ~6s with --tunnel-idle-timeout 1s"
    assert closed_at >= 0.8, "quiet tunnel closed after %.2fs" % closed_at
    rp.wait_log(route="tunnel", host="eof.test")


def test_max_connections_waits_in_backlog():
    rp = h.Regproxy(["--max-connections", "2",
                     "--connect-to", "eof.test:80:127.0.0.1:%d" % EOFSRV.port])
    first = rp.conn()
    assert first.connect_tunnel("eof.test:80").status == 200
    second = rp.conn()
    assert second.connect_tunnel("eof.test:80").status == 200
    third = rp.conn()  # the TCP handshake completes in the kernel's backlog
    third.send("CONNECT eof.test:80 HTTP/1.1\r\nHost: eof.test:80\r\n\r\n")
    readable, _, _ = select.select([third.sock], [], [], 0.7)
    assert not readable, "a third connection was served with --max-connections 2: %r" % (
        third.sock.recv(200),)
    first.close()
    r = third.read_response("CONNECT")
    assert r.status == 200, "third client after a slot freed: %r" % r
    third.send(b"x")
    third.shutdown_write()
    assert third.read_to_eof().startswith(b"got 1 ")
    second.send(b"yy")
    second.shutdown_write()
    assert second.read_to_eof().startswith(b"got 2 ")


if __name__ == "__main__":
    h.main(globals())
