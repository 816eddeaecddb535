"""Shared pieces of the fault-matrix tests (issue 11): a stand-in registry over TLS whose
answers a test scripts per request, and the checks every fault ends with (the process is
up, no descriptor or memory growth, nothing partial or unverified in the cache, the next
normal pull works)."""

import glob
import hashlib
import os
import re
import socket
import ssl
import struct
import subprocess
import threading

import harness as h

HOST = "registry-1.docker.io"


# ---------------------------------------------------------------------------------------
# A registry stand-in that can misbehave: raw HTTP/1.1 over TLS, one thread per connection.

class Request:
    def __init__(self, method, path, headers, conn):
        self.method = method
        self.path = path
        self.headers = headers  # lower-case name -> value
        self.conn = conn

    def header(self, name, default=None):
        return self.headers.get(name.lower(), default)


class Standin:
    """handler(req, sock) answers one request by writing raw bytes to sock (a TLS
    socket); it returns True to keep the connection for the next request. A request
    for a path no handler takes is answered from blobs (digest -> bytes), with Range."""

    def __init__(self, ca):
        self.ca = ca
        self.blobs = {}
        self.tags = {}    # tag -> manifest digest (its bytes in blobs)
        self.mtypes = {}  # manifest digest -> media type
        self.handler = None
        self.requests = []  # (method, path, headers)
        self.broken = 0     # writes that failed: the peer (regproxy) went away
        self._lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(ca.chain, ca.key)
        self._stop = False
        self._conns = set()
        threading.Thread(target=self._serve, daemon=True).start()
        h.defer(self.close)

    def add_blob(self, data):
        dg = "sha256:" + hashlib.sha256(data).hexdigest()
        self.blobs[dg] = data
        return dg

    def blob_gets(self, dg):
        return len([r for r in self.requests if r[0] == "GET" and r[1].endswith(dg)])

    def close(self):
        self._stop = True
        try:
            self.sock.close()
        except OSError:
            pass
        for c in list(self._conns):
            try:
                c.close()
            except OSError:
                pass

    def _serve(self):
        while not self._stop:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._conn, args=(raw,), daemon=True).start()

    def _conn(self, raw):
        raw.settimeout(60)
        self._conns.add(raw)
        try:
            s = self.ctx.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        self._conns.add(s)
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    b = s.recv(65536)
                    if not b:
                        return
                    buf += b
                head, buf = buf.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                hdrs = {}
                for ln in lines[1:]:
                    k, _, v = ln.partition(":")
                    hdrs[k.strip().lower()] = v.strip()
                n = int(hdrs.get("content-length", "0") or 0)
                while len(buf) < n:
                    b = s.recv(65536)
                    if not b:
                        return
                    buf += b
                buf = buf[n:]
                with self._lock:
                    self.requests.append((method, path, hdrs))
                req = Request(method, path, hdrs, s)
                fn = self.handler or serve_good
                if not fn(self, req, s):
                    return
        except (OSError, ssl.SSLError, ValueError):
            with self._lock:
                self.broken += 1
        finally:
            self._conns.discard(s)
            self._conns.discard(raw)
            try:
                s.close()
            except OSError:
                pass


def send_head(s, status, headers, reason="OK"):
    s.sendall(("HTTP/1.1 %d %s\r\n" % (status, reason) +
               "".join("%s: %s\r\n" % kv for kv in headers) + "\r\n").encode("latin-1"))


def reset(s):
    """Close with an RST, no TLS close_notify."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    s.close()


def serve_good(st, req, s):
    """What a registry answers: /v2/ 200, blobs by digest with Range, 404 else."""
    if req.path == "/v2/":
        send_head(s, 200, [("Content-Length", "2"), ("Content-Type", "application/json")])
        s.sendall(b"{}")
        return True
    dg = req.path.rsplit("/", 1)[-1]
    if "/manifests/" in req.path:
        dg = st.tags.get(dg, dg)
        if dg in st.mtypes:
            data = st.blobs[dg]
            send_head(s, 200, [("Content-Length", str(len(data))), ("Docker-Content-Digest", dg),
                               ("Content-Type", st.mtypes[dg])])
            if req.method != "HEAD":
                s.sendall(data)
            return True
    data = st.blobs.get(dg)
    if data is None:
        send_head(s, 404, [("Content-Length", "0")], "Not Found")
        return True
    rng = req.header("range")
    start = int(rng[6:].split("-")[0]) if rng else 0
    body = data[start:]
    hd = [("Content-Length", str(len(body))), ("Docker-Content-Digest", dg),
          ("Content-Type", "application/octet-stream")]
    if rng:
        hd.append(("Content-Range", "bytes %d-%d/%d" % (start, len(data) - 1, len(data))))
    send_head(s, 206 if rng else 200, hd, "Partial Content" if rng else "OK")
    if req.method != "HEAD":
        s.sendall(body)
    return True


# ---------------------------------------------------------------------------------------
# regproxy in front of it, and the clients

def proxy(st, *extra, real=None):
    """regproxy intercepting HOST, which leads to the stand-in (or to real, a Registry)."""
    port = real.port if real is not None else st.port
    return h.Regproxy(["--mitm", HOST, "--upstream-ca", st.ca.ca_crt if st else real.ca.ca_crt,
                       "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, port),
                       "--connect-to", "other.test:443:127.0.0.1:%d" % port] + list(extra))


def rp_ca(rp):
    return os.path.join(rp.dir, "ca", "ca.crt")


def blob_url(dg, repo="library/x"):
    return "https://%s/v2/%s/blobs/%s" % (HOST, repo, dg)


def curl_args(rp, url, out="/dev/null", extra=()):
    return ["curl", "-sS", "-o", out, "-w", "%{http_code}", "-x", rp.url, "--cacert",
            rp_ca(rp)] + list(extra) + [url]


def tls_client(rp, timeout=20):
    """A raw client inside a CONNECT tunnel to HOST, TLS with regproxy's CA."""
    c = rp.conn(timeout=timeout)
    r = c.connect_tunnel("%s:443" % HOST)
    assert r.status == 200, r
    return c.start_tls(HOST, rp_ca(rp))


def fill_readers(rp, dg):
    """Readers of the running fill of dg (status.json), or 0."""
    import json
    for f in json.loads(rp.get_admin("/status.json").body)["fills"]:
        if f["digest"] == dg:
            return f["readers"]
    return 0


def get(rp, url, out="/dev/null", extra=(), timeout=60):
    return h.run(curl_args(rp, url, out, extra), timeout=timeout, check=False,
                 env=h.clean_env())


def spawn(rp, url, out="/dev/null", extra=()):
    p = subprocess.Popen(curl_args(rp, url, out, extra), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=h.clean_env())
    h.defer(lambda: p.poll() is None and p.kill())
    return p


# ---------------------------------------------------------------------------------------
# The checks every fault ends with

def fd_count(rp):
    return len(os.listdir("/proc/%d/fd" % rp.proc.pid))


def rss_kib(rp):
    with open("/proc/%d/status" % rp.proc.pid) as f:
        m = re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.M)
    return int(m.group(1))


def sanitized(rp):
    """An ASan build keeps freed memory in its quarantine (256 MiB): RSS says nothing
    about regproxy's own use there, so memory bounds are checked in normal builds."""
    with open("/proc/%d/maps" % rp.proc.pid) as f:
        return "libasan" in f.read()


def assert_rss_bounded(rp, base_kib, slack_kib, what="RSS"):
    if sanitized(rp):
        return
    grew = rss_kib(rp) - base_kib
    assert grew <= slack_kib, "%s grew by %d KiB (from %d KiB)" % (what, grew, base_kib)


class Baseline:
    """Descriptors and RSS of a warmed-up instance; check() after the fault."""

    def __init__(self, rp):
        self.rp = rp
        self.fds = h.settled(lambda: fd_count(rp), 5, "descriptor count settled")
        self.rss = rss_kib(rp)

    def check(self, fd_slack=2, rss_slack_kib=24 * 1024):
        rp = self.rp
        assert rp.alive(), "regproxy died:\n%s" % h.tail(rp.stderr_path)
        # Pooled upstream connections may stay open: a little slack, never a leak per
        # fault (each test repeats its fault more often than the slack).
        try:
            h.wait_until(lambda: fd_count(rp) <= self.fds + fd_slack, 8,
                         "descriptors back near %d" % self.fds)
        except h.Timeout:
            raise AssertionError("descriptors grew from %d to %d: %s" % (
                self.fds, fd_count(rp), sorted(
                    os.readlink("/proc/%d/fd/%s" % (rp.proc.pid, n))
                    for n in os.listdir("/proc/%d/fd" % rp.proc.pid)))) from None
        assert_rss_bounded(rp, self.rss, rss_slack_kib)


def cache_files(rp):
    return glob.glob(os.path.join(rp.dir, "cache", "blobs", "*", "*", "*"))


def tmp_files(rp):
    return glob.glob(os.path.join(rp.dir, "cache", "tmp", "*"))


def assert_cache_sound(rp, absent=()):
    """Nothing partial (no temp file once fills settled) and every published object
    hashes to its name; the objects in absent are not cached."""
    h.wait_until(lambda: not tmp_files(rp), 8, "no temp files left in the cache")
    for f in cache_files(rp):
        assert h.sha256_file(f) == os.path.basename(f), "unverified object " + f
    names = {os.path.basename(f) for f in cache_files(rp)}
    for dg in absent:
        assert dg[7:] not in names, "%s is in the cache" % dg
    rc = subprocess.run([rp.bin, "cache", "verify", "--cache-dir",
                         os.path.join(rp.dir, "cache")], stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, timeout=60, env=h.clean_env())
    out = rc.stdout.decode(errors="replace")
    assert rc.returncode == 0 and "BAD" not in out, "cache verify: %d %s %s" % (
        rc.returncode, out, rc.stderr.decode(errors="replace"))


def assert_next_pull(rp, st, dg, repo="library/x"):
    """A normal GET of dg now gets the whole, right blob and it is published."""
    st.handler = None
    out = os.path.join(h.tmpdir(), "next")
    r = get(rp, blob_url(dg, repo), out)
    assert r.stdout.strip() == b"200", "next pull: %r\n%s" % (r, h.tail(rp.stderr_path, 10))
    assert h.sha256_file(out) == dg[7:], "next pull got other bytes"
    h.wait_until(lambda: any(os.path.basename(f) == dg[7:] for f in cache_files(rp)), 8,
                 "the blob published after the next pull")
