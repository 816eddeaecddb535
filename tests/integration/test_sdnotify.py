"""sd_notify (issue 12, "Install and run as a service"): with NOTIFY_SOCKET set, as
systemd does for a Type=notify unit, regproxy sends READY=1 once its listeners accept
and the cache lock names its admin URL, RELOADING=1 then READY=1 around every SIGHUP
(also one whose configuration is refused), and STOPPING=1 at SIGTERM. The socket is a
plain AF_UNIX datagram socket here, no systemd needed. Skipped when the binary was
built with -DRP_SYSTEMD=OFF (then the generated unit is Type=simple)."""

import os
import signal
import socket
import time

import harness as h


def setup():
    if not h.has_sd_notify():
        raise h.Skip("regproxy built with RP_SYSTEMD=OFF (no sd_notify)")


class NotifySocket:
    """The service manager's end: an AF_UNIX datagram socket collecting messages."""

    def __init__(self):
        self.path = os.path.join(h.tmpdir("rpit-notify-"), "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        h.defer(self.sock.close)

    def recv(self, timeout=10.0):
        """The next message as a dict of its KEY=VALUE lines."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except socket.timeout:
            raise AssertionError("no sd_notify message within %.0fs" % timeout) from None
        msg = {}
        for line in data.decode().split("\n"):
            if line:
                k, _, v = line.partition("=")
                msg[k] = v
        return msg

    def nothing(self, wait=0.5):
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(4096)
        except socket.timeout:
            return
        raise AssertionError("unexpected sd_notify message %r" % data)


def notified_proxy(ns, args=()):
    return h.Regproxy(list(args), env={"NOTIFY_SOCKET": ns.path}, ready=None)


def test_ready_after_listeners_bound():
    ns = NotifySocket()
    rp = notified_proxy(ns)
    msg = ns.recv()
    assert msg.get("READY") == "1", msg
    # Nothing left to wait for once READY=1 is in: the listener answers and the
    # lock file already names the admin URL (what `regproxy cache` reads).
    assert rp.get_admin("/healthz", timeout=2).status == 200
    with open(os.path.join(rp.dir, "cache", "lock")) as f:
        lock = f.read()
    assert "admin=%s" % rp.url in lock, lock
    assert rp.url in msg.get("STATUS", ""), msg
    ns.nothing()


def test_reload_is_reloading_then_ready():
    ns = NotifySocket()
    conf = os.path.join(h.tmpdir(), "regproxy.yml")
    h.write_file(conf, "log_level: debug\n")
    rp = notified_proxy(ns, ["--config", conf])
    assert ns.recv().get("READY") == "1"
    rp.signal(signal.SIGHUP)
    msg = ns.recv()
    assert msg.get("RELOADING") == "1", msg
    # MONOTONIC_USEC: what systemd's Type=notify-reload asks to come with RELOADING=1.
    mono = int(msg["MONOTONIC_USEC"])
    assert abs(mono - time.monotonic() * 1e6) < 60e6, (mono, time.monotonic())
    assert ns.recv().get("READY") == "1"
    rp.wait_log(msg="configuration reloaded")
    # A configuration the reload refuses: the old one keeps serving, so READY=1 again.
    h.write_file(conf, "log_level: [not, a, level\n")
    rp.signal(signal.SIGHUP)
    assert ns.recv().get("RELOADING") == "1"
    assert ns.recv().get("READY") == "1"
    h.wait_until(lambda: "reload failed" in rp.stderr(), what="reload failed logged")
    assert rp.get_admin("/healthz").status == 200


def test_stopping_at_sigterm():
    ns = NotifySocket()
    rp = notified_proxy(ns)
    assert ns.recv().get("READY") == "1"
    rp.signal(signal.SIGTERM)
    assert ns.recv().get("STOPPING") == "1"
    assert rp.wait_exit() == 0
    ns.nothing()


def test_no_ready_when_start_fails():
    # A start-up that fails (configuration error, exit 2) never claims readiness.
    ns = NotifySocket()
    rc, _ = h.run_regproxy_expect_exit(["--max-connections", "nope"],
                                       env={"NOTIFY_SOCKET": ns.path})
    assert rc == 2, rc
    ns.nothing()


if __name__ == "__main__":
    h.main(globals())
