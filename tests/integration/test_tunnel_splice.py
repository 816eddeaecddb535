"""CONNECT tunnels relayed with splice(2) (issue 14): after 256 KiB a tunnel between two
plain TCP sockets moves its bytes socket -> pipe -> socket in the kernel. Large bodies
keep their sha256 both ways and both at once, half-closes are passed on after the bytes
before them, an abort by either end closes the tunnel without leaking a descriptor, many
tunnels run at once, the idle timeout still fires on a spliced tunnel that stops moving,
and REGPROXY_NO_SPLICE=1 keeps the buffered relay."""

import hashlib
import os
import resource
import socket
import struct
import threading

import harness as h

MIB = 1024 * 1024


class EchoServer:
    """Echoes every byte back; passes the client's EOF on with shutdown(SHUT_WR)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()
        h.defer(self.sock.close)

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(c,), daemon=True).start()

    @staticmethod
    def _handle(c):
        c.settimeout(60)
        try:
            while True:
                b = c.recv(1 << 18)
                if not b:
                    c.shutdown(socket.SHUT_WR)
                    break
                c.sendall(b)
        except OSError:
            pass
        finally:
            c.close()


class SourceServer:
    """Sends `size` bytes of a fixed random stream, then closes (or resets after
    `reset_after` bytes). The first line of the client ("<size> <reset_after>\\n") picks."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.block = os.urandom(MIB)
        threading.Thread(target=self._serve, daemon=True).start()
        h.defer(self.sock.close)

    def digest(self, size):
        d = hashlib.sha256()
        for _ in range(size // MIB):
            d.update(self.block)
        return d.hexdigest()

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(c,), daemon=True).start()

    def _handle(self, c):
        c.settimeout(60)
        try:
            line = b""
            while not line.endswith(b"\n"):
                b = c.recv(1)
                if not b:
                    return
                line += b
            size, reset_after = (int(x) for x in line.split())
            sent = 0
            while sent < size:
                if reset_after and sent >= reset_after:
                    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                c.sendall(self.block)
                sent += len(self.block)
            c.shutdown(socket.SHUT_WR)
            while c.recv(65536):  # until the client closes too
                pass
        except OSError:
            pass
        finally:
            c.close()


def setup():
    global RP, RP_IDLE, RP_COPY, ECHO, SRC, EOFSRV
    ECHO = EchoServer()
    SRC = SourceServer()
    EOFSRV = h.EofServer()
    maps = {"echo.test:7": ECHO.port, "src.test:9": SRC.port, "eof.test:80": EOFSRV.port}
    args = []
    for src, port in maps.items():
        args += ["--connect-to", "%s:127.0.0.1:%d" % (src, port)]
    global RP_ARGS
    RP_ARGS = args
    RP = h.Regproxy(args + ["--max-connections", "500"])
    RP_IDLE = h.Regproxy(args + ["--tunnel-idle-timeout", "1s"])
    RP_COPY = h.Regproxy(args, env={"REGPROXY_NO_SPLICE": "1"})
    for rp in (RP, RP_IDLE, RP_COPY):
        BASE_PIPES[rp] = {f for f in fds(rp) if f.startswith("pipe:")}


def pid(rp):
    return rp.proc.pid


def fds(rp):
    out = []
    for n in os.listdir("/proc/%d/fd" % pid(rp)):
        try:
            out.append(os.readlink("/proc/%d/fd/%s" % (pid(rp), n)))
        except FileNotFoundError:  # closed meanwhile
            pass
    return sorted(out)


def rss_bytes(rp):
    with open("/proc/%d/statm" % pid(rp)) as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


BASE_PIPES = {}


def pipes(rp):
    """regproxy's pipes other than those it had once started (its stdio may be pipes)."""
    now = {f for f in fds(rp) if f.startswith("pipe:")}
    return sorted(now - BASE_PIPES[rp])


def baseline_fds(rp):
    return h.settled(lambda: len(fds(rp)), 5, "regproxy's descriptor count settled")


def wait_fds_back(rp, base, what):
    try:
        h.wait_until(lambda: len(fds(rp)) <= base, 10, what)
    except h.Timeout:
        raise AssertionError("%s: %d descriptors, %d before: %r" % (
            what, len(fds(rp)), base, fds(rp))) from None


def tunnel(rp, target, timeout=60.0):
    c = rp.conn(timeout=timeout)
    r = c.connect_tunnel(target)
    assert r.status == 200, r
    return c


def spliced_lines(rp):
    return [ln for ln in rp.stderr().splitlines() if "relay=splice" in ln]


def send_all_then_eof(c, total, seed):
    """Send `total` bytes (a stream derived from seed) then half-close; return sha256."""
    d = hashlib.sha256()
    block = hashlib.sha256(seed).digest() * (MIB // 32)
    for _ in range(total // MIB):
        c.send(block)
        d.update(block)
    c.shutdown_write()
    return d.hexdigest()


def read_to_eof_hash(c):
    d = hashlib.sha256()
    n = 0
    while True:
        b = c.sock.recv(1 << 20)
        if not b:
            return n, d.hexdigest()
        d.update(b)
        n += len(b)


def drain_buffered(c):
    # HttpConn may hold bytes read along with the CONNECT answer.
    buf = bytes(getattr(c, "buf", b"") or b"")
    if hasattr(c, "buf"):
        c.buf = type(c.buf)()
    return buf


def download(rp, size, target="src.test:9"):
    c = tunnel(rp, target)
    c.send(b"%d 0\n" % size)
    d = hashlib.sha256()
    first = drain_buffered(c)
    d.update(first)
    n, _ = len(first), None
    while True:
        b = c.sock.recv(1 << 20)
        if not b:
            break
        d.update(b)
        n += len(b)
    c.close()
    return n, d.hexdigest()


def test_download_integrity_spliced():
    before = len(spliced_lines(RP))
    size = 128 * MIB
    n, digest = download(RP, size)
    assert n == size, "got %d of %d bytes" % (n, size)
    assert digest == SRC.digest(size), "sha256 differs"
    line = RP.wait_log(route="tunnel", host="src.test", method="CONNECT")
    assert int(line["bytes_out"]) >= size, line
    assert len(spliced_lines(RP)) > before, "no relay=splice line: the tunnel was not spliced"


def test_upload_integrity_and_client_half_close():
    # 128 MiB up, then the client's EOF; the server answers only after it saw the EOF.
    size = 128 * MIB
    c = tunnel(RP, "eof.test:80")
    digest = send_all_then_eof(c, size, b"up")
    got = c.read_to_eof()
    assert got == b"got %d sha256=%s\n" % (size, digest.encode()), got
    line = RP.wait_log(route="tunnel", host="eof.test", bytes_in=lambda v: int(v) >= size)
    assert line["status"] == "200", line


def test_both_ways_at_once_through_echo():
    size = 64 * MIB
    c = tunnel(RP, "echo.test:7")
    result = {}

    def reader():
        result["n"], result["digest"] = read_to_eof_hash(c)

    t = threading.Thread(target=reader)
    t.start()
    sent = send_all_then_eof(c, size, b"echo")
    t.join(120)
    assert not t.is_alive(), "echo reader stuck"
    assert result["n"] == size and result["digest"] == sent, result
    RP.wait_log(route="tunnel", host="echo.test", bytes_in=lambda v: int(v) >= size,
                bytes_out=lambda v: int(v) >= size)


def test_server_half_close_then_client_keeps_sending():
    # The source sends 16 MiB and shuts its side; the client reads all of it, then still
    # sends (its direction stays open) and closes; the tunnel closes once both ended.
    size = 16 * MIB
    c = tunnel(RP, "src.test:9")
    c.send(b"%d 0\n" % size)
    first = drain_buffered(c)
    n, digest = read_to_eof_hash(c)
    assert n + len(first) == size
    c.send(b"x" * 100000)
    c.shutdown_write()
    assert c.at_eof(10)
    RP.wait_log(route="tunnel", host="src.test", bytes_in=lambda v: int(v) >= 100000)


def test_client_half_closes_first_then_downloads_spliced():
    # The client's EOF comes before the bulk; once its shutdown of the upstream completed
    # the tunnel may still switch to splice for the download.
    before = len(spliced_lines(RP))
    size = 32 * MIB
    c = tunnel(RP, "src.test:9")
    c.send(b"%d 0\n" % size)
    c.shutdown_write()
    first = drain_buffered(c)
    n, _ = read_to_eof_hash(c)
    assert n + len(first) == size
    RP.wait_log(route="tunnel", host="src.test", bytes_out=lambda v: int(v) >= size)
    assert len(spliced_lines(RP)) > before, "a half-closed tunnel was not spliced"


def test_client_abort_mid_transfer_no_fd_leak():
    base = baseline_fds(RP)
    c = tunnel(RP, "src.test:9")
    c.send(b"%d 0\n" % (512 * MIB))
    got = 0
    while got < 8 * MIB:
        got += len(c.sock.recv(1 << 20))
    h.wait_until(lambda: pipes(RP), 10, "a pipe in regproxy while the client stalls")
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    line = RP.wait_log(route="tunnel", host="src.test", reason=lambda v: "client" in v)
    print("    client abort logged: reason=%r" % line["reason"])
    wait_fds_back(RP, base, "descriptors back after the client reset a spliced tunnel")
    assert not pipes(RP)
    assert RP.alive()


def test_server_abort_mid_transfer_no_fd_leak():
    base = baseline_fds(RP)
    c = tunnel(RP, "src.test:9")
    c.send(b"%d %d\n" % (256 * MIB, 32 * MIB))
    try:
        n, _ = read_to_eof_hash(c)
    except ConnectionResetError:
        n = -1
    assert n < 256 * MIB, "the whole body came through a reset"
    c.close()
    line = RP.wait_log(route="tunnel", host="src.test", reason=lambda v: "upstream" in v)
    print("    server abort logged: reason=%r" % line["reason"])
    wait_fds_back(RP, base, "descriptors back after the server reset a spliced tunnel")
    assert RP.alive()


def test_stalled_client_holds_pipe_not_memory():
    # Backpressure: the client reads nothing for a while; regproxy stops reading the
    # source (its RSS does not grow by the body) and the tunnel resumes intact.
    size = 64 * MIB
    rss0 = rss_bytes(RP)
    c = tunnel(RP, "src.test:9")
    c.send(b"%d 0\n" % size)
    first = drain_buffered(c)
    d = hashlib.sha256(first)
    n = len(first)
    while n < MIB:
        b = c.sock.recv(65536)
        d.update(b)
        n += len(b)
    h.wait_until(lambda: pipes(RP), 10, "a pipe in regproxy")
    rss = h.settled(lambda: rss_bytes(RP), 3, "regproxy's RSS settled while the client stalls")
    assert rss - rss0 < 16 * MIB, "RSS grew by %d bytes while the client stalled" % (rss - rss0)
    while True:
        b = c.sock.recv(1 << 20)
        if not b:
            break
        d.update(b)
        n += len(b)
    assert n == size and d.hexdigest() == SRC.digest(size)


def test_many_concurrent_spliced_tunnels():
    base = baseline_fds(RP)
    size = 8 * MIB

    def one(i):
        c = tunnel(RP, "echo.test:7")
        res = {}

        def reader():
            res["r"] = read_to_eof_hash(c)

        t = threading.Thread(target=reader)
        t.start()
        sent = send_all_then_eof(c, size, b"c%d" % i)
        t.join(120)
        assert res.get("r") == (size, sent), "tunnel %d: %r" % (i, res)

    h.all_at_once(range(40), one, timeout=240)
    wait_fds_back(RP, base, "descriptors back after 40 spliced tunnels")


def test_idle_timeout_fires_on_spliced_tunnel():
    c = tunnel(RP_IDLE, "src.test:9")
    c.send(b"%d 0\n" % (512 * MIB))
    got = 0
    while got < 4 * MIB:
        got += len(c.sock.recv(1 << 20))
    assert spliced_lines(RP_IDLE), "tunnel not spliced"
    # The client stops reading: nothing moves, and the tunnel must time out.
    line = RP_IDLE.wait_log(timeout=10, route="tunnel", host="src.test",
                            reason="tunnel idle timeout")
    assert line["status"] == "200", line
    h.wait_until(lambda: not pipes(RP_IDLE), 5, "pipes closed after the idle timeout")


def _limit_leaving(rp, free):
    """An RLIMIT_NOFILE for rp that leaves exactly `free` descriptor numbers to take."""
    used = {int(n) for n in os.listdir("/proc/%d/fd" % pid(rp))}
    n = 0
    while free > 0 or n in used:
        if n not in used:
            free -= 1
        n += 1
    return n


def test_falls_back_to_buffered_when_no_descriptor_is_left():
    # Two descriptors left: the client and the upstream take them, the dups cannot be made
    # (no splice relay). Four left: the dups are made, the pipe is not (the relay gives the
    # tunnel back). Both tunnels must carry their body intact on the buffered relay.
    rp = h.Regproxy(RP_ARGS)
    h.settled(lambda: len(fds(rp)), 3, "regproxy's descriptor count settled")
    old = resource.prlimit(pid(rp), resource.RLIMIT_NOFILE)
    size = 16 * MIB
    for free, why in ((2, "no splice"), (4, "splice refused")):
        resource.prlimit(pid(rp), resource.RLIMIT_NOFILE, (_limit_leaving(rp, free), old[1]))
        n, digest = download(rp, size)
        assert n == size and digest == SRC.digest(size), "%s: %d bytes" % (why, n)
        resource.prlimit(pid(rp), resource.RLIMIT_NOFILE, old)
        h.wait_until(lambda: why in rp.stderr(), 5, "debug line %r" % why)
        rp.wait_log(route="tunnel", host="src.test", bytes_out=lambda v: int(v) >= size)
        h.settled(lambda: len(fds(rp)), 3, "descriptors settled after the tunnel")
    assert rp.stderr().count("relay=copy") == 2, rp.stderr()[-2000:]


def test_no_splice_switch_keeps_buffered_relay():
    size = 32 * MIB
    n, digest = download(RP_COPY, size)
    assert n == size and digest == SRC.digest(size)
    RP_COPY.wait_log(route="tunnel", host="src.test")
    assert not spliced_lines(RP_COPY), "spliced although REGPROXY_NO_SPLICE=1"


def test_small_tunnel_stays_buffered():
    # Below 256 KiB a tunnel never makes pipes (idle tunnels stay cheap).
    before = len(spliced_lines(RP))
    c = tunnel(RP, "eof.test:80")
    c.send(b"y" * 100000)
    c.shutdown_write()
    assert c.read_to_eof().startswith(b"got 100000 ")
    RP.wait_log(route="tunnel", host="eof.test", bytes_in=lambda v: 100000 <= int(v) < 100200)
    assert len(spliced_lines(RP)) == before


if __name__ == "__main__":
    h.main(globals())
