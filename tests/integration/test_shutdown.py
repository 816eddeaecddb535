"""Signals (contract §4 --shutdown-grace, brief: SIGTERM/SIGINT/SIGHUP): SIGTERM stops
accepting at once, lets in-flight transfers finish, exits 0; after the grace period it
exits anyway; idle keep-alive clients do not hold the exit up; SIGHUP without a config
file changes nothing."""

import os
import signal
import subprocess
import time

import harness as h

# Bigger than what socket buffers can hold (several MiB here), so a transfer that
# finishes really was relayed to its end, and one that is cut really was cut.
SIZE = 8 * 1024 * 1024
HUGE = 64 * 1024 * 1024


def setup():
    global CA, ORIGIN
    CA = h.shared_ca()
    ORIGIN = h.Nginx(files={"slow.bin": SIZE, "huge.bin": HUGE})


def proxy(*extra):
    return h.Regproxy(["--connect-to", "tls.test:443:127.0.0.1:%d" % ORIGIN.https_port,
                       "--connect-to", "plain.test:80:127.0.0.1:%d" % ORIGIN.http_port] +
                      list(extra))


def slow_curl(rp, url, rate, out):
    p = subprocess.Popen(["curl", "-sS", "-o", out, "--limit-rate", rate, "-x", rp.url,
                          "--cacert", CA.ca_crt, url],
                         env=h.clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True)
    h.defer(lambda: p.poll() is None and p.kill())
    return p


def started(out, n=128 * 1024):
    return os.path.exists(out) and os.path.getsize(out) >= n


def test_sigterm_lets_transfers_finish():
    rp = proxy("--shutdown-grace", "20s")
    d = h.tmpdir()
    out1, out2 = os.path.join(d, "tunnel.bin"), os.path.join(d, "plain.bin")
    c1 = slow_curl(rp, "https://tls.test/slow.bin", "2M", out1)
    c2 = slow_curl(rp, "http://127.0.0.1:%d/slow.bin" % ORIGIN.http_port, "2M", out2)
    h.wait_until(lambda: started(out1) and started(out2), 10, "both downloads running")
    t0 = time.monotonic()
    rp.signal(signal.SIGTERM)
    h.wait_until(lambda: h.connect_refused(rp.host, rp.port), 3,
                 "new connections refused after SIGTERM")
    for name, p, out in (("tunnel", c1, out1), ("plain", c2, out2)):
        _, err = p.communicate(timeout=30)
        assert p.returncode == 0, "%s download cut by SIGTERM: curl %d %r" % (
            name, p.returncode, err)
        assert os.path.getsize(out) == SIZE and \
            h.sha256_file(out) == ORIGIN.files["slow.bin"], "%s download corrupt" % name
    rc = rp.wait_exit(10)
    assert rc == 0, "exit code %s after SIGTERM" % rc
    assert time.monotonic() - t0 < 20, "exit waited for the whole grace period"


def test_idle_keepalive_does_not_delay_exit():
    rp = proxy("--shutdown-grace", "20s")
    idle = rp.conn()
    r = idle.request("GET", "http://127.0.0.1:%d/a.txt" % ORIGIN.http_port)
    assert r.status == 200
    t0 = time.monotonic()
    rp.signal(signal.SIGTERM)
    rc = rp.wait_exit(10)
    assert rc == 0, "exit code %s" % rc
    assert time.monotonic() - t0 < 5, "an idle keep-alive client held up the exit"
    assert idle.at_eof(2), "idle client connection not closed at exit"


def test_grace_period_expires():
    rp = proxy("--shutdown-grace", "1s")
    c = rp.conn(timeout=20)
    assert c.connect_tunnel("plain.test:80").status == 200
    c.send(h.build_request("GET", "/huge.bin", host="plain.test"))
    c.read_until(b"\r\n\r\n")
    c.read_exact(64 * 1024)  # the transfer runs; now stop reading: it stalls
    t0 = time.monotonic()
    rp.signal(signal.SIGTERM)
    rc = rp.wait_exit(10)
    dt = time.monotonic() - t0
    assert 0.8 <= dt <= 4.0, "exited %.2fs after SIGTERM with --shutdown-grace 1s" % dt
    assert rc == 0, "exit code %s after the grace period" % rc
    got = 64 * 1024 + len(c.read_to_eof())  # what the buffers held, then EOF
    assert got < HUGE, "the transfer was not cut at the end of the grace period"


def test_sigterm_after_connect_timeout():
    # A CONNECT whose upstream connect timed out (504) must leave nothing behind that
    # keeps the process alive: SIGTERM with no transfers exits at once.
    rp = proxy("--connect-timeout", "1s", "--shutdown-grace", "2s")
    fb = h.FullBacklog()
    c = rp.conn()
    r = c.connect_tunnel("127.0.0.1:%d" % fb.port)
    assert r.status == 504, r
    c.close()
    t0 = time.monotonic()
    rp.signal(signal.SIGTERM)
    try:
        rc = rp.wait_exit(10)
    except h.Timeout:
        raise AssertionError("regproxy still running 10s after SIGTERM (grace 2s, no "
                             "transfers) once a connect had timed out") from None
    assert rc == 0, "exit code %s" % rc
    assert time.monotonic() - t0 < 3, "exit took %.1fs" % (time.monotonic() - t0)


def test_sigint_exits_0():
    rp = proxy()
    rp.signal(signal.SIGINT)
    rc = rp.wait_exit(10)
    assert rc == 0, "exit code %s after SIGINT" % rc
    assert h.connect_refused(rp.host, rp.port)


def test_sighup_without_config_keeps_serving():
    rp = proxy()
    keep = rp.conn()
    assert keep.connect_tunnel("tls.test:443").status == 200
    keep.start_tls("tls.test", CA.ca_crt)
    assert keep.request("GET", "/a.txt", host="tls.test").status == 200
    rp.signal(signal.SIGHUP)
    time_limit = time.monotonic() + 2
    while time.monotonic() < time_limit:  # keep using it across the reload
        r = rp.get_admin("/healthz")
        assert r.status == 200 and r.body.strip() == b"ok", r
    r = keep.request("GET", "/b.txt", host="tls.test")
    assert r.status == 200 and h.sha256(r.body) == ORIGIN.files["b.txt"], r
    assert rp.alive()


if __name__ == "__main__":
    h.main(globals())
