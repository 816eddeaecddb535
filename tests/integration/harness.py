"""Integration test harness for regproxy (Python 3 standard library only).

A test file looks like

    import harness as h

    def setup():                 # optional, runs once; fixtures made here live for the file
        global ORIGIN
        ORIGIN = h.Nginx()

    def test_something():
        rp = h.Regproxy()        # stopped automatically when the test ends, pass or fail
        ...

    if __name__ == "__main__":
        h.main(globals())

Every process is started in its own process group and stopped by PID (the group is
killed), at the end of the test that started it, at the end of the file, and at exit.
Nothing waits with a bare sleep: readiness is polled with a deadline.
"""

import atexit
import gzip
import hashlib
import http.server
import io
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")
KEEP_TMP = os.environ.get("RP_IT_KEEP_TMP") == "1"


# ---------------------------------------------------------------------------------------
# Cleanup scopes: a test's fixtures are released when the test ends, the file's when the
# file ends, and any process still alive is killed at exit.

class _Scope:
    def __init__(self, name):
        self.name = name
        self._fns = []

    def add(self, fn):
        self._fns.append(fn)

    def close(self):
        """Run the cleanups newest first; return the exceptions they raised."""
        errors = []
        while self._fns:
            fn = self._fns.pop()
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - reported by the runner
                errors.append(e)
        return errors


_scopes = [_Scope("process")]
_live_procs = {}  # pid -> Proc


def defer(fn):
    """Register fn to run when the current test (or setup) ends."""
    _scopes[-1].add(fn)
    return fn


def _kill_all_live():
    for proc in list(_live_procs.values()):
        proc.kill()


_exiting = False


def _on_exit():
    global _exiting
    _exiting = True  # processes killed here did not "die during the test"
    _kill_all_live()
    while _scopes:  # whatever is still open when the runner is interrupted
        for err in _scopes.pop().close():
            sys.stderr.write("cleanup error at exit: %r\n" % (err,))


atexit.register(_on_exit)


def _raise_exit(signum, frame):
    raise SystemExit(128 + signum)


for _sig in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(_sig, _raise_exit)


# ---------------------------------------------------------------------------------------
# Small utilities

class Timeout(AssertionError):
    pass


def wait_until(pred, timeout=10.0, what="condition", interval=0.02):
    """Poll pred() until it returns a truthy value; return that value or raise Timeout."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - remembered for the message
            last_exc = e
        if time.monotonic() >= deadline:
            msg = "timed out after %.1fs waiting for %s" % (timeout, what)
            if last_exc is not None:
                msg += " (last error: %r)" % (last_exc,)
            raise Timeout(msg)
        time.sleep(interval)
        interval = min(interval * 1.5, 0.2)


def settled(fn, timeout=3.0, what="registry log settled"):
    """fn() once two readings 0.3 s apart agree (a server that logs a request after
    its body: the count is final once it stops moving)."""
    last = [fn()]

    def same():
        now = fn()
        ok = now == last[0]
        last[0] = now
        return ok
    wait_until(same, timeout, what, interval=0.3)
    return last[0]


def _ephemeral_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
            return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


_CLONE_NEWNET = 0x40000000


def in_netns(name, fn):
    """fn() on a thread that entered network namespace name (`ip netns add`): the
    sockets it makes live there. Returns its value or raises its exception."""
    import ctypes
    out = {}

    def body():
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open("/var/run/netns/%s" % name, os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            out["v"] = fn()
        except BaseException as e:  # noqa: BLE001 - raised below
            out["e"] = e
    t = threading.Thread(target=body)
    t.start()
    t.join()
    if "e" in out:
        raise out["e"]
    return out["v"]


def all_at_once(items, fn, during=None, timeout=180):
    """fn(item) for every item, each on its own thread, started together; during() runs
    meanwhile. Returns the wall time; raises with every failure, naming its item."""
    errors = []

    def one(item):
        try:
            fn(item)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append("%s: %s" % (item, e))
    t0 = time.monotonic()
    ts = [threading.Thread(target=one, args=(it,)) for it in items]
    for t in ts:
        t.start()
    try:
        if during:
            during()
    finally:
        for t in ts:
            t.join(timeout)
    if errors:
        raise AssertionError("failed:\n" + "\n".join(errors))
    return time.monotonic() - t0


def free_port(host="127.0.0.1"):
    """A port nobody listens on right now, outside the kernel's ephemeral range.

    Binding port 0 hands out an ephemeral port, the same pool every outgoing connection
    (regproxy to an upstream, curl to regproxy) draws its source port from: between the
    test closing its probe socket and the server binding, a connection made by a parallel
    test can take it ("address already in use", seen in CI). Ports below the ephemeral
    range are never handed out that way; a random pick there collides only with another
    test's listener, which the bind check catches.
    """
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    lo, _ = _ephemeral_range()
    top = min(lo, 65536) - 1
    base = 10000 if top > 12000 else 1024
    rnd = random.SystemRandom()
    for _ in range(200):
        port = rnd.randint(base, top)
        with socket.socket(fam, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def tmpdir(prefix="rpit-"):
    """A fresh temporary directory removed when the current scope ends."""
    d = tempfile.mkdtemp(prefix=prefix)
    os.chmod(d, 0o755)  # squid drops privileges and must traverse it
    if not KEEP_TMP:
        defer(lambda: shutil.rmtree(d, ignore_errors=True))
    return d


def write_file(path, data, mode=None):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(path, "wb") as f:
        f.write(data)
    if mode is not None:
        os.chmod(path, mode)
    return path


def render(template_name, path, **values):
    """Fill a fixtures/ template: every @name@ is replaced by values[name]."""
    with open(os.path.join(FIXTURES, template_name)) as f:
        text = f.read()

    def sub(m):
        if m.group(1) not in values:
            raise KeyError("template %s needs @%s@" % (template_name, m.group(1)))
        return str(values[m.group(1)])
    return write_file(path, re.sub(r"@([a-z_]+)@", sub, text))


def random_file(path, size, chunk=1 << 20):
    """Write size random bytes to path; return the sha256 hex digest."""
    h = hashlib.sha256()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            b = os.urandom(min(chunk, left))
            h.update(b)
            f.write(b)
            left -= len(b)
    return h.hexdigest()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def port_open(host, port, timeout=0.5):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def connect_refused(host, port, timeout=1.0):
    """True when a TCP connect to host:port is actively refused."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
        return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    finally:
        s.close()


def tail(path, n=40):
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return "(no %s)" % path
    return "\n".join(lines[-n:])


def run(argv, timeout=60, check=True, **kw):
    """subprocess.run with a timeout and a readable failure message."""
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    p = subprocess.run(argv, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise AssertionError("%s exited %d\nstdout: %s\nstderr: %s" % (
            " ".join(argv), p.returncode, _short(p.stdout), _short(p.stderr)))
    return p


def _short(b, n=2000):
    if b is None:
        return ""
    if isinstance(b, bytes):
        b = b.decode("utf-8", "replace")
    return b if len(b) <= n else b[:n] + "...(%d more)" % (len(b) - n)


def clean_env(**extra):
    """The environment minus proxy, REGPROXY_* and NOTIFY_SOCKET variables, plus extra.

    NOTIFY_SOCKET goes too: a runner started by systemd must not have every regproxy
    it starts report READY=1/STOPPING=1 to the runner's own service manager."""
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "no_proxy", "all_proxy",
                                "ftp_proxy", "notify_socket")
           and not k.startswith("REGPROXY_")}
    for k, v in extra.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


# ---------------------------------------------------------------------------------------
# Processes

try:
    import ctypes
    _libc = ctypes.CDLL(None, use_errno=True)
    _PR_SET_PDEATHSIG = 1

    def _child_setup():
        # If this runner is killed outright (ctest timeout), the child goes with it.
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
except (OSError, AttributeError):  # pragma: no cover - not Linux
    _child_setup = None

class Proc:
    """A child process in its own process group, stopped by PID."""

    def __init__(self, argv, name=None, cwd=None, env=None, stdout=None, stderr=None,
                 stdin=subprocess.DEVNULL, scoped=True):
        self.argv = list(argv)
        self.name = name or os.path.basename(argv[0])
        self.stdout_path = stdout
        self.stderr_path = stderr
        out = open(stdout, "ab") if stdout else subprocess.DEVNULL
        err = open(stderr, "ab") if stderr else subprocess.DEVNULL
        try:
            self.popen = subprocess.Popen(self.argv, cwd=cwd, env=env, stdin=stdin,
                                          stdout=out, stderr=err, start_new_session=True,
                                          preexec_fn=_child_setup)
        finally:
            if stdout:
                out.close()
            if stderr:
                err.close()
        self.pid = self.popen.pid
        _live_procs[self.pid] = self
        if scoped:
            defer(self.kill)

    def alive(self):
        return self.popen.poll() is None

    @property
    def returncode(self):
        return self.popen.poll()

    def signal(self, sig):
        if self.alive():
            os.kill(self.pid, sig)

    def wait_exit(self, timeout):
        """Wait for exit; return the exit code (negative = killed by that signal)."""
        try:
            rc = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Timeout("%s (pid %d) still running after %.1fs" % (
                self.name, self.pid, timeout)) from None
        self._reap_group()
        return rc

    def _reap_group(self):
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        _live_procs.pop(self.pid, None)

    def stop(self, sig=None, timeout=5.0):
        """Send sig (default SIGTERM) to the process, wait, then kill the whole group."""
        sig = signal.SIGTERM if sig is None else sig
        if self.alive():
            try:
                os.kill(self.pid, sig)
                self.popen.wait(timeout=timeout)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        self.kill()

    def kill(self):
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        _live_procs.pop(self.pid, None)

    def stderr_text(self):
        if not self.stderr_path:
            return ""
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------
# Raw HTTP/1.1 over a socket: exact bytes on the wire, exact status lines.

class Response:
    def __init__(self, version, status, reason, headers, body, raw_head):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (name, value) in order
        self.body = body
        self.raw_head = raw_head

    @property
    def status_line(self):
        return self.raw_head.split(b"\r\n", 1)[0].decode("latin-1")

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def header_all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def text(self):
        return self.body.decode("utf-8", "replace")

    def __repr__(self):
        return "<Response %d %r, %d body bytes: %r>" % (
            self.status, self.reason, len(self.body), self.body[:120])


class ConnClosed(AssertionError):
    pass


class HttpConn:
    """A client connection speaking raw HTTP/1.1 (optionally TLS after CONNECT)."""

    def __init__(self, host="127.0.0.1", port=None, timeout=10.0, sock=None):
        if sock is None:
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(fam, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect((host, port))
        else:
            sock.settimeout(timeout)
        self.sock = sock
        self.buf = b""
        defer(self.close)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.sock.sendall(data)

    def shutdown_write(self):
        self.sock.shutdown(socket.SHUT_WR)

    def _fill(self):
        try:
            b = self.sock.recv(1 << 16)
        except ConnectionResetError:
            raise ConnClosed("connection reset by peer (received so far: %r)" %
                             (self.buf[:200],)) from None
        except socket.timeout:
            raise Timeout("no data from peer within the socket timeout "
                          "(received so far: %r)" % (self.buf[:200],)) from None
        if not b:
            raise ConnClosed("connection closed by peer (received so far: %r)" %
                             (self.buf[:200],))
        self.buf += b

    def read_until(self, sep):
        while sep not in self.buf:
            self._fill()
        i = self.buf.index(sep) + len(sep)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_to_eof(self):
        while True:
            try:
                self._fill()
            except ConnClosed:
                break
        out, self.buf = self.buf, b""
        return out

    def at_eof(self, timeout=5.0):
        """True when the peer closes (or resets) the connection within timeout."""
        if self.buf:
            return False
        old = self.sock.gettimeout()
        self.sock.settimeout(timeout)
        try:
            b = self.sock.recv(1)
            if b:
                self.buf += b
                return False
            return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False
        finally:
            self.sock.settimeout(old)

    def read_head(self):
        raw = self.read_until(b"\r\n\r\n")
        lines = raw[:-4].split(b"\r\n")
        m = re.match(rb"^(HTTP/\d\.\d) (\d{3})(?: (.*))?$", lines[0])
        if not m:
            raise AssertionError("bad status line %r" % lines[0])
        headers = []
        for ln in lines[1:]:
            k, _, v = ln.partition(b":")
            headers.append((k.decode("latin-1"), v.strip().decode("latin-1")))
        return (m.group(1).decode(), int(m.group(2)),
                (m.group(3) or b"").decode("latin-1"), headers, raw)

    def read_response(self, method="GET", body=True):
        """Read one response (skipping 1xx). For CONNECT 2xx no body is read."""
        while True:
            version, status, reason, headers, raw = self.read_head()
            if 100 <= status < 200 and status != 101:
                continue
            break
        resp = Response(version, status, reason, headers, b"", raw)
        if not body or method == "HEAD" or status in (204, 304) or (
                method == "CONNECT" and 200 <= status < 300):
            return resp
        te = (resp.header("Transfer-Encoding") or "").lower()
        cl = resp.header("Content-Length")
        if "chunked" in te:
            resp.body = self._read_chunked()
        elif cl is not None:
            resp.body = self.read_exact(int(cl))
        else:
            resp.body = self.read_to_eof()
        return resp

    def _read_chunked(self):
        out = []
        while True:
            line = self.read_until(b"\r\n")
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                while self.read_until(b"\r\n") != b"\r\n":
                    pass  # trailers
                return b"".join(out)
            out.append(self.read_exact(size))
            if self.read_exact(2) != b"\r\n":
                raise AssertionError("bad chunk terminator")

    def request(self, method, target, headers=(), body=None, host=None):
        """Send one request and read its response."""
        self.send(build_request(method, target, headers, body, host))
        return self.read_response(method)

    def connect_tunnel(self, target, headers=()):
        """Send CONNECT target; return the response (the tunnel is open on 2xx)."""
        hdrs = [("Host", target)] + list(headers)
        self.send("CONNECT %s HTTP/1.1\r\n%s\r\n" % (
            target, "".join("%s: %s\r\n" % kv for kv in hdrs)))
        return self.read_response("CONNECT")

    def start_tls(self, server_hostname, cafile):
        if self.buf:
            raise AssertionError("unexpected bytes before TLS: %r" % self.buf[:100])
        ctx = ssl.create_default_context(cafile=cafile)
        ctx.set_alpn_protocols(["http/1.1"])
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)
        return self


def build_request(method, target, headers=(), body=None, host=None):
    """Bytes of a request; adds Host (from an absolute target) and Content-Length."""
    hdrs = list(headers)
    names = {k.lower() for k, _ in hdrs}
    if "host" not in names:
        if host is None:
            m = re.match(r"^[a-z]+://([^/]+)", target)
            host = m.group(1) if m else "localhost"
        hdrs.insert(0, ("Host", host))
    if body is not None and "content-length" not in names and \
            "transfer-encoding" not in names:
        hdrs.append(("Content-Length", str(len(body))))
    head = "%s %s HTTP/1.1\r\n%s\r\n" % (
        method, target, "".join("%s: %s\r\n" % kv for kv in hdrs))
    data = head.encode("latin-1")
    if body is not None:
        data += body
    return data


def chunked(data, sizes=(1, 7, 4096, 65536, 300000)):
    """Encode data with Transfer-Encoding: chunked using varied chunk sizes."""
    out = []
    i = k = 0
    while i < len(data):
        n = sizes[k % len(sizes)]
        k += 1
        piece = data[i:i + n]
        out.append(b"%x\r\n%s\r\n" % (len(piece), piece))
        i += n
    out.append(b"0\r\n\r\n")
    return b"".join(out)


def simple_status(host, port, data, timeout=10.0):
    """Open a connection, send raw bytes, return the parsed response (or raise)."""
    c = HttpConn(host, port, timeout=timeout)
    try:
        c.send(data)
        return c.read_response()
    finally:
        c.close()


# ---------------------------------------------------------------------------------------
# Log and metrics parsing

_LOGFMT_TOKEN = re.compile(r'\s*([^\s=]+)(?:=("(?:[^"\\]|\\.)*"|\S*))?')


def parse_logfmt(line):
    """Parse one logfmt line into a dict of strings (bare keys map to '')."""
    out = {}
    pos = 0
    line = line.rstrip("\n")
    while pos < len(line):
        m = _LOGFMT_TOKEN.match(line, pos)
        if not m or m.end() == pos:
            break
        key, val = m.group(1), m.group(2)
        if val is None:
            val = ""
        elif val.startswith('"') and len(val) >= 2:
            val = re.sub(r'\\(.)', lambda mm: {"n": "\n", "t": "\t", "r": "\r"}.get(
                mm.group(1), mm.group(1)), val[1:-1])
        out[key] = val
        pos = m.end()
    return out


def parse_metrics(text):
    """Prometheus text format -> {(name, frozenset(labels.items())): float}."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)', line)
        if not m:
            raise AssertionError("unparsable metrics line %r" % line)
        labels = {}
        if m.group(2):
            for lm in re.finditer(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"',
                                  m.group(2)):
                labels[lm.group(1)] = lm.group(2)
        out[(m.group(1), frozenset(labels.items()))] = float(m.group(3))
    return out


class Metrics(dict):
    """Samples of a /metrics answer; .declared holds names from # TYPE / # HELP lines
    (a labelled counter may have no series before its first increment)."""

    def __init__(self, samples=(), declared=()):
        super().__init__(samples)
        self.declared = set(declared)

    @classmethod
    def parse(cls, text):
        declared = {ln.split()[2] for ln in text.splitlines()
                    if ln.startswith(("# TYPE ", "# HELP ")) and len(ln.split()) > 2}
        return cls(parse_metrics(text), declared)

    def names(self):
        return {k[0] for k in self} | self.declared

    def sum(self, name, **labels):
        """Sum of every series of name whose labels include the given ones."""
        want = {(k, str(v)) for k, v in labels.items()}
        return sum(v for (n, ls), v in self.items() if n == name and want <= ls)

    def has(self, name):
        return name in self.names()


# ---------------------------------------------------------------------------------------
# regproxy

def regproxy_bin():
    b = os.environ.get("REGPROXY_BIN")
    if not b:
        bd = os.environ.get("RP_BUILD_DIR") or os.path.join(HERE, "..", "..", "build")
        b = os.path.join(bd, "regproxy")
    return os.path.abspath(b)


def has_sd_notify():
    """Whether the binary sends sd_notify messages (built with RP_SYSTEMD, the default):
    it then reads NOTIFY_SOCKET itself (src/util/notify.c, no libsystemd)."""
    with open(regproxy_bin(), "rb") as f:
        return b"NOTIFY_SOCKET" in f.read()


_SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                    "AddressSanitizer:DEADLYSIGNAL", "ThreadSanitizer")


class Regproxy:
    """regproxy on a free loopback port with its own cache and CA directories.

    args are extra command-line arguments. Unless given in args, the fixture passes
    --listen 127.0.0.1:P, --cache-dir, --ca-dir, --log-level debug, --mitm '' and
    --shutdown-grace 3s. ready: 'healthz' (GET /healthz == ok), 'port' (accepts
    connections), or None (just start; use for exit-code checks). mitm_flag=False leaves
    mitm to the config file (a flag would beat it across SIGHUP reloads).
    """

    def __init__(self, args=(), env=None, ready="healthz", listen=True, subcommand=None,
                 timeout=15.0, mitm_flag=True):
        self.dir = tmpdir("rpit-regproxy-")
        self.bin = regproxy_bin()
        if not os.path.exists(self.bin):
            raise AssertionError("regproxy binary not found at %s (set REGPROXY_BIN)" %
                                 self.bin)
        args = list(args)
        self.port = None
        self.host = "127.0.0.1"
        argv = [self.bin]
        if subcommand:
            argv.append(subcommand)
        given = {a.split("=", 1)[0] for a in args if a.startswith("--")}
        if listen and "--listen" not in given:
            self.port = free_port()
            argv += ["--listen", "127.0.0.1:%d" % self.port]
        elif "--listen" in given:
            first = self._first_listen(args)
            if first:
                self.host, self.port = first
        if "--cache-dir" not in given:
            argv += ["--cache-dir", os.path.join(self.dir, "cache")]
        if "--ca-dir" not in given:
            argv += ["--ca-dir", os.path.join(self.dir, "ca")]
        if "--log-level" not in given:
            argv += ["--log-level", "debug"]
        if "--mitm" not in given and mitm_flag:
            argv += ["--mitm", ""]
        if "--shutdown-grace" not in given:
            argv += ["--shutdown-grace", "3s"]
        argv += args
        self.argv = argv
        self.stderr_path = os.path.join(self.dir, "stderr.log")
        self.stdout_path = os.path.join(self.dir, "stdout.log")
        home = os.path.join(self.dir, "home")
        os.makedirs(home, exist_ok=True)
        base_env = clean_env(HOME=home, XDG_CACHE_HOME=os.path.join(home, ".cache"),
                             XDG_DATA_HOME=os.path.join(home, ".local/share"),
                             XDG_CONFIG_HOME=os.path.join(home, ".config"))
        base_env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        if env:
            for k, v in env.items():
                if v is None:
                    base_env.pop(k, None)
                else:
                    base_env[k] = v
        self._exit_expected = False
        self._reported = False
        _regproxies.append(self)
        defer(self.stop)
        chose_port = listen and "--listen" not in given
        for attempt in range(3):
            self.proc = Proc(argv, name="regproxy", cwd=self.dir, env=base_env,
                             stdout=self.stdout_path, stderr=self.stderr_path, scoped=False)
            try:
                if ready == "healthz":
                    self._wait_ready(timeout, self._healthz_ok, "GET /healthz == ok")
                elif ready == "port":
                    self._wait_ready(timeout, lambda: port_open(self.host, self.port),
                                     "port %s:%s" % (self.host, self.port))
                break
            except AssertionError:
                # Another test's listener took the port between free_port() and our bind:
                # that is the harness's race, not regproxy's failure; take another port.
                if not (chose_port and attempt < 2 and not self.proc.alive()
                        and "address already in use" in self.stderr()):
                    raise
                self.port = free_port()
                argv[argv.index("--listen") + 1] = "127.0.0.1:%d" % self.port
                self.argv = argv

    def __repr__(self):
        ns = getattr(self, "ns", None)
        return "regproxy %s%s" % (self.url if self.port else self.dir, " in " + ns if ns else "")

    @staticmethod
    def _first_listen(args):
        for i, a in enumerate(args):
            v = None
            if a == "--listen" and i + 1 < len(args):
                v = args[i + 1]
            elif a.startswith("--listen="):
                v = a.split("=", 1)[1]
            if v:
                m = re.match(r"^\[(.*)\]:(\d+)$", v) or re.match(r"^(.*):(\d+)$", v)
                if m:
                    host = m.group(1) or "127.0.0.1"
                    if host in ("0.0.0.0", ""):
                        host = "127.0.0.1"
                    if host == "::":
                        host = "::1"
                    return host, int(m.group(2))
        return None

    # -- readiness ---------------------------------------------------------------------

    def _healthz_ok(self):
        r = self.get_admin("/healthz", timeout=2.0)
        return r.status == 200 and r.body.strip() == b"ok"

    def _wait_ready(self, timeout, pred, what):
        def check():
            if not self.proc.alive():
                raise AssertionError("regproxy exited with code %s before it was ready;"
                                     " argv=%r\nstderr:\n%s" % (
                                         self.proc.returncode, self.argv,
                                         tail(self.stderr_path)))
            return pred()
        try:
            wait_until(check, timeout, "regproxy ready (%s)" % what)
        except Timeout as e:
            raise AssertionError("%s\nargv=%r\nstderr:\n%s" % (
                e, self.argv, tail(self.stderr_path))) from None

    # -- client helpers ----------------------------------------------------------------

    @property
    def url(self):
        h = "[%s]" % self.host if ":" in self.host else self.host
        return "http://%s:%d" % (h, self.port)

    def conn(self, timeout=10.0):
        return HttpConn(self.host, self.port, timeout=timeout)

    def get_admin(self, path, host=None, timeout=10.0):
        c = HttpConn(self.host, self.port, timeout=timeout)
        try:
            h = host or ("%s:%d" % (self.host if ":" not in self.host
                                    else "[%s]" % self.host, self.port))
            return c.request("GET", path, [("Host", h), ("Connection", "close")])
        finally:
            c.close()

    def metrics(self):
        r = self.get_admin("/metrics")
        if r.status != 200:
            raise AssertionError("GET /metrics -> %r" % r)
        return Metrics.parse(r.text())

    # -- logs --------------------------------------------------------------------------

    def stderr(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_lines(self):
        """Every stderr line parsed (logfmt, or JSON when the line is a JSON object)."""
        out = []
        for line in self.stderr().splitlines():
            if not line.strip():
                continue
            if line.lstrip().startswith("{"):
                try:
                    d = json.loads(line)
                    out.append({k: ("" if v is None else str(v) if not isinstance(v, str)
                                    else v) for k, v in d.items()})
                    continue
                except ValueError:
                    pass
            out.append(parse_logfmt(line))
        return out

    def request_logs(self, **match):
        """Log lines of finished requests/tunnels (they have route=) matching fields."""
        return [d for d in self.log_lines() if "route" in d and _match(d, match)]

    def find_logs(self, **match):
        return [d for d in self.log_lines() if _match(d, match)]

    def wait_log(self, timeout=5.0, **match):
        """Wait for a log line with all the given fields; return it."""
        try:
            return wait_until(lambda: (self.find_logs(**match) or [None])[-1], timeout,
                              "regproxy log line with %r" % (match,))
        except Timeout as e:
            raise AssertionError("%s\nlast log lines:\n%s" % (
                e, tail(self.stderr_path, 15))) from None

    # -- lifecycle ---------------------------------------------------------------------

    def signal(self, sig):
        self.proc.signal(sig)

    def wait_exit(self, timeout=10.0):
        self._exit_expected = True
        return self.proc.wait_exit(timeout)

    def alive(self):
        return self.proc.alive()

    def problems(self):
        """Why this instance is unhealthy (unexpected exit, sanitizer output), or []."""
        out = []
        if not self.proc.alive() and not self._exit_expected and not _exiting:
            out.append("regproxy died during the test (exit code %s)" % self.proc.returncode)
        text = self.stderr()
        for mark in _SANITIZER_MARKS:
            if mark in text:
                out.append("sanitizer report in regproxy's stderr (%r)" % mark)
                break
        return out

    def check(self):
        """Raise (once) if problems() has something to say."""
        if self._reported:
            return
        p = self.problems()
        if p:
            self._reported = True
            raise AssertionError("; ".join(p) + "\nargv=%r\nstderr tail:\n%s" % (
                self.argv, tail(self.stderr_path, 40)))

    def stop(self):
        """Stop at the end of its scope; raise if it had crashed or a sanitizer spoke."""
        if self.proc.alive():
            self.proc.stop(signal.SIGTERM, timeout=8.0)
            self._exit_expected = True
        if self in _regproxies:
            _regproxies.remove(self)
        self.check()


_regproxies = []


def check_regproxies():
    """Health of every regproxy still running (file-scope ones between tests)."""
    errors = []
    for rp in list(_regproxies):
        try:
            rp.check()
        except AssertionError as e:
            errors.append(e)
    return errors


def host_is(name, got):
    """Log field host= names the destination; the binary may append :port (contract §6's
    example has none). test_*_log_host_* tests check the exact form separately."""
    return got == name or re.fullmatch(re.escape(name) + r":\d+", got or "") is not None


def _match(d, match):
    for k, v in match.items():
        k = k.rstrip("_")  # allow from_=..., etc.
        if k not in d:
            return False
        if callable(v):
            if not v(d[k]):
                return False
        elif k == "host":
            if not host_is(str(v), d[k]):
                return False
        elif d[k] != str(v):
            return False
    return True


def run_regproxy_expect_exit(args, timeout=10.0, env=None):
    """Start regproxy with exactly these args (no defaults added except dirs) and wait
    for it to exit; return (exit code, stderr). Fails if it keeps running."""
    d = tmpdir("rpit-exit-")
    home = os.path.join(d, "home")
    os.makedirs(home, exist_ok=True)
    e = clean_env(HOME=home, XDG_CACHE_HOME=os.path.join(home, ".cache"),
                  XDG_DATA_HOME=os.path.join(home, ".local/share"))
    if env:
        e.update(env)
    argv = [regproxy_bin()] + list(args)
    errp = os.path.join(d, "stderr.log")
    p = Proc(argv, name="regproxy", cwd=d, env=e, stdout=os.path.join(d, "stdout.log"),
             stderr=errp)
    try:
        rc = p.wait_exit(timeout)
    except Timeout:
        p.kill()
        raise AssertionError("regproxy %r did not exit within %.0fs (expected an exit);"
                             " stderr:\n%s" % (args, timeout, tail(errp))) from None
    return rc, p.stderr_text()


# ---------------------------------------------------------------------------------------
# Test CA + leaf (openssl)

TEST_NAMES = ["localhost", "registry-1.docker.io", "index.docker.io", "auth.docker.io",
              "origin.test", "other.test", "bypass.test", "tls.test"]


class TestCA:
    """A CA and one leaf for TEST_NAMES + 127.0.0.1 + ::1 (names, ips). Files: ca.crt,
    ca.key, leaf.crt, leaf.key, chain.crt (leaf+CA), certdir/ca.crt (skopeo
    --*-cert-dir)."""

    def __init__(self, names=TEST_NAMES, scoped_dir=None, ips=("127.0.0.1", "::1")):
        self.dir = scoped_dir or tmpdir("rpit-ca-")
        d = self.dir
        self.ca_crt = os.path.join(d, "ca.crt")
        self.ca_key = os.path.join(d, "ca.key")
        self.crt = os.path.join(d, "leaf.crt")
        self.key = os.path.join(d, "leaf.key")
        self.chain = os.path.join(d, "chain.crt")
        self.certdir = os.path.join(d, "certdir")
        os.makedirs(self.certdir)
        ossl = ["openssl"]
        run(ossl + ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", self.ca_key, "-out", self.ca_crt, "-days", "3",
                    "-subj", "/CN=regproxy integration test CA",
                    "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        csr = os.path.join(d, "leaf.csr")
        run(ossl + ["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", self.key, "-out", csr, "-subj", "/CN=localhost"])
        san = ",".join(["DNS:%s" % n for n in names] + ["IP:%s" % ip for ip in ips])
        ext = write_file(os.path.join(d, "leaf.ext"),
                         "basicConstraints=critical,CA:FALSE\n"
                         "keyUsage=critical,digitalSignature,keyEncipherment\n"
                         "extendedKeyUsage=serverAuth\n"
                         "subjectAltName=%s\n" % san)
        run(ossl + ["x509", "-req", "-in", csr, "-CA", self.ca_crt, "-CAkey", self.ca_key,
                    "-CAcreateserial", "-out", self.crt, "-days", "2", "-extfile", ext])
        with open(self.crt) as a, open(self.ca_crt) as b:
            write_file(self.chain, a.read() + b.read())
        shutil.copy(self.ca_crt, os.path.join(self.certdir, "ca.crt"))


def serve_http(handler, ca=None):
    """A threaded http.server on 127.0.0.1 (TLS with ca's leaf when given) for a
    stand-in that only a handler class can play; stopped with the current scope.
    Returns the server (server_address[1] is its port)."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    if ca is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(ca.chain, ca.key)
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    def stop():
        httpd.shutdown()
        httpd.server_close()
    defer(stop)
    return httpd


_shared_ca = None


def shared_ca():
    """One test CA per test file (lives until the process exits)."""
    global _shared_ca
    if _shared_ca is None:
        saved = _scopes[1:]
        del _scopes[1:]  # create it in the process scope
        try:
            _shared_ca = TestCA()
        finally:
            _scopes.extend(saved)
    return _shared_ca


# ---------------------------------------------------------------------------------------
# nginx origin

class Nginx:
    """nginx with an HTTP and an HTTPS server on free ports, a docroot, /dav/ for PUT
    uploads and /gz/ for chunked (gzip) responses. .files maps name -> sha256."""

    def __init__(self, ca=None, files=None):
        self.ca = ca or shared_ca()
        self.dir = tmpdir("rpit-nginx-")
        self.docroot = os.path.join(self.dir, "html")
        self.davroot = os.path.join(self.dir, "davroot")
        for sub in ("html", "html/gz", "davroot/dav", "tmp"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        self.files = {}
        self.add_file("ready.txt", b"ready\n")
        self.add_file("a.txt", b"alpha\n" * 10)
        self.add_file("b.txt", b"bravo bravo\n" * 20)
        self.add_file("small.bin", os.urandom(64 * 1024))
        self.add_file("gz/text.txt", ("".join("line %d of a compressible text\n" % i
                                              for i in range(20000))).encode())
        for name, size in (files or {}).items():
            self.files[name] = random_file(os.path.join(self.docroot, name), size)
        self.http_port = free_port()
        self.https_port = free_port()
        self.conf = render("nginx.conf.in", os.path.join(self.dir, "nginx.conf"),
                           dir=self.dir, http_port=self.http_port,
                           https_port=self.https_port, cert=self.ca.chain, key=self.ca.key,
                           docroot=self.docroot, davroot=self.davroot)
        self.access_log_path = os.path.join(self.dir, "access.log")
        self.proc = Proc(["nginx", "-p", self.dir, "-e", os.path.join(self.dir, "error.log"),
                          "-c", self.conf], name="nginx", stdout=os.path.join(
                              self.dir, "stdout.log"),
                         stderr=os.path.join(self.dir, "stderr.log"))
        defer(lambda: self.proc.stop(signal.SIGQUIT, timeout=3))

        def ready():
            if not self.proc.alive():
                raise AssertionError("nginx exited: %s\n%s" % (
                    tail(os.path.join(self.dir, "stderr.log")),
                    tail(os.path.join(self.dir, "error.log"))))
            return port_open("127.0.0.1", self.http_port) and \
                port_open("127.0.0.1", self.https_port)
        wait_until(ready, 10, "nginx listening")

    def add_file(self, name, data):
        write_file(os.path.join(self.docroot, name), data)
        self.files[name] = sha256(data)

    def path(self, name):
        return os.path.join(self.docroot, name)

    def dav_path(self, name):
        return os.path.join(self.davroot, "dav", name)

    def access_log(self):
        """Parsed access log lines (dicts)."""
        out = []
        try:
            with open(self.access_log_path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return out
        for line in text.splitlines():
            d = {}
            for m in re.finditer(r'(\w+)="((?:[^"\\]|\\.)*)"', line):
                d[m.group(1)] = json.loads('"%s"' % m.group(2))
            out.append(d)
        return out

    def wait_access(self, timeout=5.0, **match):
        return wait_until(lambda: [d for d in self.access_log() if _match(d, match)],
                          timeout, "nginx access log line with %r" % (match,))


# ---------------------------------------------------------------------------------------
# squid as a parent proxy

class Squid:
    """squid on a free port; hosts maps test names to addresses (its hosts_file)."""

    def __init__(self, hosts=None):
        self.dir = tmpdir("rpit-squid-")
        os.chmod(self.dir, 0o1777)
        self.port = free_port()
        hosts = hosts or {}
        write_file(os.path.join(self.dir, "hosts"),
                   "127.0.0.1 localhost\n" + "".join(
                       "%s %s\n" % (addr, name) for name, addr in hosts.items()), mode=0o644)
        self.conf = render("squid.conf.in", os.path.join(self.dir, "squid.conf"),
                           dir=self.dir, port=self.port)
        self.access_log_path = os.path.join(self.dir, "access.log")
        self.proc = Proc(["squid", "-N", "-f", self.conf], name="squid",
                         stdout=os.path.join(self.dir, "stdout.log"),
                         stderr=os.path.join(self.dir, "stderr.log"))
        defer(lambda: self.proc.stop(signal.SIGTERM, timeout=3))

        def ready():
            if not self.proc.alive():
                raise AssertionError("squid exited: %s\n%s" % (
                    tail(os.path.join(self.dir, "stderr.log")),
                    tail(os.path.join(self.dir, "cache.log"))))
            return port_open("127.0.0.1", self.port)
        wait_until(ready, 20, "squid listening")

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def access_log(self):
        out = []
        try:
            with open(self.access_log_path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return out
        for line in text.splitlines():
            d = parse_logfmt(line.split(" ", 1)[1] if " " in line else "")
            d["raw"] = line
            out.append(d)
        return out

    def entries(self, method=None, url_contains=None):
        return [d for d in self.access_log()
                if (method is None or d.get("method") == method)
                and (url_contains is None or url_contains in d.get("url", ""))]

    def wait_entry(self, timeout=5.0, method=None, url_contains=None):
        return wait_until(lambda: self.entries(method, url_contains), timeout,
                          "squid access log entry %s %s" % (method, url_contains))


# ---------------------------------------------------------------------------------------
# distribution registry over TLS, OCI images, skopeo

class Registry:
    def __init__(self, ca=None):
        self.ca = ca or shared_ca()
        self.dir = tmpdir("rpit-registry-")
        self.port = free_port()
        self.conf = self._render_conf()
        self.log_path = os.path.join(self.dir, "registry.log")
        self.proc = Proc(["docker-registry", "serve", self.conf], name="docker-registry",
                         stdout=self.log_path, stderr=self.log_path)
        defer(lambda: self.proc.stop(signal.SIGTERM, timeout=3))
        ctx = ssl.create_default_context(cafile=self.ca.ca_crt)

        def ready():
            if not self.proc.alive():
                raise AssertionError("registry exited: %s" % tail(self.log_path))
            c = HttpConn("127.0.0.1", self.port, timeout=2)
            try:
                c.sock = ctx.wrap_socket(c.sock, server_hostname="127.0.0.1")
                r = c.request("GET", "/v2/", [("Host", "127.0.0.1:%d" % self.port)])
                return r.status == self._ready_status()
            finally:
                c.close()
        wait_until(ready, 15, "registry GET /v2/")

    def _render_conf(self):
        return render("registry.yml.in", os.path.join(self.dir, "config.yml"),
                      dir=self.dir, port=self.port, cert=self.ca.chain, key=self.ca.key)

    def _ready_status(self):
        return 200  # GET /v2/ without credentials

    def get(self, path, headers=()):
        ctx = ssl.create_default_context(cafile=self.ca.ca_crt)
        c = HttpConn("127.0.0.1", self.port, timeout=10)
        try:
            c.sock = ctx.wrap_socket(c.sock, server_hostname="127.0.0.1")
            return c.request("GET", path, [("Host", "127.0.0.1:%d" % self.port)] +
                             list(headers))
        finally:
            c.close()


class PlainRegistry(Registry):
    """distribution without TLS, as an insecure registry is run."""

    def __init__(self):
        self.dir = tmpdir("rpit-registry-")
        self.port = free_port()
        conf = write_file(os.path.join(self.dir, "config.yml"), "\n".join([
            "version: 0.1",
            "log:", "  level: info", "  accesslog:", "    disabled: false",
            "storage:", "  filesystem:", "    rootdirectory: %s/data" % self.dir,
            "http:", "  addr: 127.0.0.1:%d" % self.port, "  secret: regproxy-plain", ""]))
        self.log_path = os.path.join(self.dir, "registry.log")
        self.proc = Proc(["docker-registry", "serve", conf], name="docker-registry",
                         stdout=self.log_path, stderr=self.log_path)
        defer(lambda: self.proc.stop(signal.SIGTERM, timeout=3))

        def ready():
            if not self.proc.alive():
                raise AssertionError("registry exited: %s" % tail(self.log_path))
            c = HttpConn("127.0.0.1", self.port, timeout=2)
            try:
                return c.request("GET", "/v2/", [("Host", "127.0.0.1")]).status == 200
            finally:
                c.close()
        wait_until(ready, 15, "plain registry GET /v2/")

    def count(self, what):
        return open(self.log_path, errors="replace").read().count(what)


# ---------------------------------------------------------------------------------------
# dockerd (TESTING.md recipe)

SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def docker_bin():
    for p in ("/usr/bin/docker", shutil.which("docker") or ""):
        if p and os.path.exists(p):
            return p
    return None


class Dockerd:
    """dockerd on its own socket, data and exec roots. rp: a Regproxy to use as
    HTTP(S)_PROXY (its CA joins the system bundle in SSL_CERT_FILE), or None for no
    proxy environment (mirror tests). extra: more dockerd arguments. rp_ca_in_bundle=False:
    the system pool as it is, so regproxy's CA must come from /etc/docker/certs.d."""

    def __init__(self, rp, extra=(), rp_ca_in_bundle=True):
        self.dir = tmpdir("rpit-dockerd-")
        self.sock = os.path.join(self.dir, "docker.sock")
        env = clean_env()
        if rp is not None and not rp_ca_in_bundle:
            env = clean_env(HTTPS_PROXY=rp.url, HTTP_PROXY=rp.url, NO_PROXY="localhost",
                            SSL_CERT_FILE=None, SSL_CERT_DIR=None)
        elif rp is not None:
            bundle = os.path.join(self.dir, "bundle.pem")
            with open(bundle, "wb") as out:
                if os.path.exists(SYSTEM_BUNDLE):
                    out.write(open(SYSTEM_BUNDLE, "rb").read())
                out.write(open(os.path.join(rp.dir, "ca", "ca.crt"), "rb").read())
            env = clean_env(HTTPS_PROXY=rp.url, HTTP_PROXY=rp.url, NO_PROXY="localhost",
                            SSL_CERT_FILE=bundle)
        self.log = os.path.join(self.dir, "dockerd.log")
        self.proc = Proc(["dockerd", "--iptables=false", "--ip6tables=false",
                          "--bridge=none", "--storage-driver=vfs",
                          "--data-root", os.path.join(self.dir, "data"),
                          "--exec-root", os.path.join(self.dir, "exec"),
                          "--pidfile", os.path.join(self.dir, "docker.pid"),
                          "-H", "unix://" + self.sock] + list(extra),
                         name="dockerd", env=env, stdout=self.log, stderr=self.log)
        defer(lambda: self.proc.stop(timeout=10))

        def ready():
            if not self.proc.alive():
                raise AssertionError("dockerd exited: %s" % tail(self.log))
            return self.docker(["version"], check=False).returncode == 0
        wait_until(ready, 30, "dockerd answering")

    def docker(self, args, check=True, timeout=120):
        return run([docker_bin(), "-H", "unix://" + self.sock] + args, timeout=timeout,
                   check=check, env=clean_env())


# ---------------------------------------------------------------------------------------
# Docker-Hub-style token auth: a token server and a registry that trusts it

def _b64url(data):
    import base64
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """A Docker-style token server over HTTPS (test CA leaf) on a free port:
    GET /token?service=&scope=[&scope=]... answers {"token","access_token","expires_in"}
    with an RS256 JWT (signed by `openssl dgst`) whose x5c header is its own self-signed
    certificate (.cert, for the registry's auth.token.rootcertbundle).

    users: {name: password} accepted with Basic auth (wrong ones get 401). Anonymous
    callers get "pull" on the repositories in public; users get every action they ask
    for. .requests lists (path_and_query, user or None) of every request."""

    ISSUER = "regproxy-test-token-server"

    def __init__(self, ca=None, users=None, public=(), service="regproxy-test-registry",
                 expires_in=300):
        import base64
        import urllib.parse
        self.ca = ca or shared_ca()
        self.users = dict(users or {})
        self.public = set(public)
        self.service = service
        self.expires_in = expires_in
        self.requests = []
        self.dir = tmpdir("rpit-token-")
        self.key = os.path.join(self.dir, "token.key")
        self.cert = os.path.join(self.dir, "token.crt")
        run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", self.key,
             "-out", self.cert, "-days", "3", "-subj", "/CN=regproxy test token signer"])
        der = run(["openssl", "x509", "-in", self.cert, "-outform", "DER"]).stdout
        self._x5c = base64.b64encode(der).decode()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                u = urllib.parse.urlsplit(self.path)
                q = urllib.parse.parse_qs(u.query)
                user = None
                auth = self.headers.get("Authorization", "")
                if auth.lower().startswith("basic "):
                    try:
                        user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
                    except ValueError:
                        user, pw = "", None
                    if server.users.get(user) != pw:
                        server.requests.append((self.path, user))
                        return self._send(401, {"details": "bad credentials"})
                server.requests.append((self.path, user))
                if u.path != "/token":
                    return self._send(404, {"details": "no such path"})
                token = server.make_token(user, q.get("service", [""])[0], q.get("scope", []))
                self._send(200, {"token": token, "access_token": token,
                                 "expires_in": server.expires_in,
                                 "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                            time.gmtime())})

            def _send(self, code, obj):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.port = free_port()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.ca.chain, self.ca.key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        defer(self.close)

    @property
    def realm(self):
        return "https://127.0.0.1:%d/token" % self.port

    def make_token(self, user, service, scopes):
        access = []
        for sc in " ".join(scopes).split():
            parts = sc.split(":")
            if len(parts) < 3:
                continue
            typ, name, actions = parts[0], ":".join(parts[1:-1]), parts[-1].split(",")
            if user is None:
                actions = ["pull"] if "pull" in actions and name in self.public else []
            access.append({"type": typ, "name": name, "actions": actions})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        claims = {"iss": self.ISSUER, "sub": user or "", "aud": service, "exp": now + 600,
                  "nbf": now - 10, "iat": now, "jti": os.urandom(8).hex(), "access": access}
        signing_input = (_b64url(json.dumps(header).encode()) + "." +
                         _b64url(json.dumps(claims).encode()))
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", self.key],
                             input=signing_input.encode(), stdout=subprocess.PIPE,
                             check=True).stdout
        return signing_input + "." + _b64url(sig)

    def token_requests(self):
        return [r for r in self.requests if r[0].startswith("/token")]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class HubTokenServer(TokenServer):
    """A TokenServer whose realm is Docker Hub's (https://auth.docker.io/token); reach it
    with --connect-to auth.docker.io:443:127.0.0.1:<port>."""

    @property
    def realm(self):
        return "https://auth.docker.io/token"


class TokenRegistry(Registry):
    """The distribution registry of Registry, with Docker-Hub-style token auth against
    a TokenServer (401 Bearer realm=...,service=...,scope=... without a token)."""

    def __init__(self, token_server, ca=None):
        self.token_server = token_server
        super().__init__(ca=ca)

    def _render_conf(self):
        conf = super()._render_conf()
        ts = self.token_server
        with open(conf, "a") as f:
            f.write("auth:\n  token:\n    realm: %s\n    service: %s\n    issuer: %s\n"
                    "    rootcertbundle: %s\n" % (ts.realm, ts.service, ts.ISSUER, ts.cert))
        return conf

    def _ready_status(self):
        return 401


def _gzip_bytes(data):
    bio = io.BytesIO()
    with gzip.GzipFile(fileobj=bio, mode="wb", mtime=0, compresslevel=1) as g:
        g.write(data)
    return bio.getvalue()


def _tar_bytes(files):
    bio = io.BytesIO()
    with tarfile.open(fileobj=bio, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mtime = 0
            ti.mode = 0o644
            t.addfile(ti, io.BytesIO(data))
    return bio.getvalue()


class OciImage:
    """A single-platform OCI image layout built by hand. .layers: list of digests,
    .config: digest, .manifest: digest."""

    MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
    MT_CONFIG = "application/vnd.oci.image.config.v1+json"
    MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

    def __init__(self, path, tag="3.18", layer_sizes=(4096, 200 * 1024)):
        self.path = path
        self.tag = tag
        blobs = os.path.join(path, "blobs", "sha256")
        os.makedirs(blobs, exist_ok=True)

        def put(data):
            dg = sha256(data)
            write_file(os.path.join(blobs, dg), data)
            return "sha256:" + dg, len(data)

        self.layers = []
        diff_ids = []
        layer_descs = []
        for i, size in enumerate(layer_sizes):
            tar = _tar_bytes({"layer%d/data.bin" % i: os.urandom(size),
                              "layer%d/hello.txt" % i: b"hello from layer %d\n" % i})
            diff_ids.append("sha256:" + sha256(tar))
            gz = _gzip_bytes(tar)
            dg, n = put(gz)
            self.layers.append(dg)
            layer_descs.append({"mediaType": self.MT_LAYER, "digest": dg, "size": n})
        config = {"architecture": "amd64", "os": "linux",
                  "config": {"Cmd": ["/bin/sh"]},
                  "rootfs": {"type": "layers", "diff_ids": diff_ids},
                  "history": [{"created_by": "regproxy integration test"}
                              for _ in layer_sizes]}
        cdata = json.dumps(config, separators=(",", ":"), sort_keys=True).encode()
        self.config, csize = put(cdata)
        manifest = {"schemaVersion": 2, "mediaType": self.MT_MANIFEST,
                    "config": {"mediaType": self.MT_CONFIG, "digest": self.config,
                               "size": csize},
                    "layers": layer_descs}
        mdata = json.dumps(manifest, separators=(",", ":")).encode()
        self.manifest, msize = put(mdata)
        write_file(os.path.join(path, "oci-layout"), '{"imageLayoutVersion":"1.0.0"}')
        write_file(os.path.join(path, "index.json"), json.dumps({
            "schemaVersion": 2,
            "manifests": [{"mediaType": self.MT_MANIFEST, "digest": self.manifest,
                           "size": msize,
                           "annotations": {"org.opencontainers.image.ref.name": tag},
                           "platform": {"architecture": "amd64", "os": "linux"}}]}))

    @property
    def blobs(self):
        return set(self.layers) | {self.config}


def multiarch_layout():
    """An OCI layout whose tag is an image index over two platforms."""
    a = OciImage(os.path.join(tmpdir(), "a"), layer_sizes=(2048, 64 * 1024))
    b = OciImage(os.path.join(tmpdir(), "b"), layer_sizes=(3000,))
    path = os.path.join(tmpdir(), "multi")
    shutil.copytree(a.path, path)
    for name in os.listdir(os.path.join(b.path, "blobs", "sha256")):
        shutil.copy(os.path.join(b.path, "blobs", "sha256", name),
                    os.path.join(path, "blobs", "sha256", name))
    mans = []
    for img, arch in ((a, "amd64"), (b, "arm64")):
        size = os.path.getsize(os.path.join(img.path, "blobs", "sha256", img.manifest[7:]))
        mans.append({"mediaType": OciImage.MT_MANIFEST, "digest": img.manifest,
                     "size": size, "platform": {"architecture": arch, "os": "linux"}})
    index = json.dumps({"schemaVersion": 2,
                        "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": mans}).encode()
    dg = sha256(index)
    write_file(os.path.join(path, "blobs", "sha256", dg), index)
    write_file(os.path.join(path, "index.json"), json.dumps({
        "schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": "sha256:" + dg, "size": len(index),
            "annotations": {"org.opencontainers.image.ref.name": "multi"}}]}))
    return {"path": path, "index": "sha256:" + dg,
            "blobs": a.blobs | b.blobs | {a.manifest, b.manifest}}


def layout_blobs(path):
    """Digests of the manifest's config and layers in an OCI layout (single image)."""
    with open(os.path.join(path, "index.json")) as f:
        idx = json.load(f)
    mdg = idx["manifests"][0]["digest"]
    with open(os.path.join(path, "blobs", *mdg.split(":"))) as f:
        man = json.load(f)
    digests = {man["config"]["digest"]} | {l["digest"] for l in man["layers"]}
    for dg in digests:  # each file must really hash to its name
        algo, hexd = dg.split(":")
        got = sha256_file(os.path.join(path, "blobs", algo, hexd))
        if got != hexd:
            raise AssertionError("blob %s in %s hashes to %s" % (dg, path, got))
    return mdg, digests


def skopeo(args, env=None, timeout=120, check=True):
    """Run skopeo hermetically (own HOME, registries.conf, tmpdir, no proxy env unless
    given in env). Returns the CompletedProcess; raises on failure."""
    d = tmpdir("rpit-skopeo-")
    regconf = write_file(os.path.join(d, "registries.conf"), "")
    e = clean_env(HOME=d, CONTAINERS_REGISTRIES_CONF=regconf, TMPDIR=d,
                  XDG_RUNTIME_DIR=d)
    if env:
        e.update(env)
    argv = ["skopeo", "--insecure-policy", "--tmpdir", d, "--override-os", "linux",
            "--override-arch", "amd64"] + list(args)
    return run(argv, timeout=timeout, env=e, check=check)


# ---------------------------------------------------------------------------------------
# Small servers written here (when nginx can't show what a test needs)

class EofServer:
    """TCP server: reads until the client half-closes, then answers
    'got N sha256=HEX\\n' and closes. Shows that a proxy relays a half-close."""

    def __init__(self, host="127.0.0.1"):
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        defer(self.close)

    def _serve(self):
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(c,), daemon=True).start()

    @staticmethod
    def _handle(c):
        h = hashlib.sha256()
        n = 0
        c.settimeout(30)
        try:
            while True:
                b = c.recv(65536)
                if not b:
                    break
                h.update(b)
                n += len(b)
            c.sendall(b"got %d sha256=%s\n" % (n, h.hexdigest().encode()))
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self._stop = True
        try:
            self.sock.close()
        except OSError:
            pass


class FullBacklog:
    """A listener whose accept queue is full: further SYNs are dropped, so connects to
    it hang until the connecting side times out (a deterministic loopback timeout)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.held = []
        defer(self.close)
        for _ in range(16):
            s = socket.socket()
            s.settimeout(0.3)
            try:
                s.connect(("127.0.0.1", self.port))
                self.held.append(s)
            except OSError:
                s.close()
                break
        else:
            raise AssertionError("could not fill the accept backlog")

    def close(self):
        for s in self.held:
            s.close()
        self.sock.close()


# ---------------------------------------------------------------------------------------
# Runner

def curl(args, timeout=60, check=False):
    """Run curl with no proxy environment; returns the CompletedProcess."""
    return run(["curl", "-sS"] + list(args), timeout=timeout, check=check, env=clean_env())


class Skip(Exception):
    """Raised by setup() when a file cannot run here (e.g. a tool is missing)."""


def main(ns):
    """Run setup() then every test_* function of ns in definition order."""
    tests = [(k, v) for k, v in ns.items() if k.startswith("test_") and callable(v)
             and getattr(v, "__module__", None) == ns.get("__name__")]
    only = os.environ.get("RP_IT_ONLY")
    if only:
        tests = [(k, v) for k, v in tests if re.search(only, k)]
    passed = failed = 0
    file_scope = _Scope("file")
    _scopes.append(file_scope)
    setup_error = None
    if "setup" in ns and callable(ns["setup"]):
        t0 = time.monotonic()
        try:
            ns["setup"]()
            print("setup ok (%.1fs)" % (time.monotonic() - t0), flush=True)
        except Skip as e:
            print("skipped: %s" % e, flush=True)
            _scopes.pop()
            file_scope.close()
            _kill_all_live()
            print("0 passed, 0 failed, %d skipped" % len(tests), flush=True)
            sys.exit(0)
        except BaseException as e:  # noqa: BLE001
            setup_error = "".join(traceback.format_exception(type(e), e, e.__traceback__))
            print("setup FAILED (%.1fs)\n%s" % (time.monotonic() - t0,
                                                 _indent(setup_error)), flush=True)
    for name, fn in tests:
        if setup_error:
            print("FAIL %s: setup failed" % name, flush=True)
            failed += 1
            continue
        scope = _Scope(name)
        _scopes.append(scope)
        t0 = time.monotonic()
        err = None
        try:
            fn()
        except BaseException as e:  # noqa: BLE001
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            err = "".join(traceback.format_exception(type(e), e, e.__traceback__))
        _scopes.pop()
        for ce in scope.close() + check_regproxies():
            msg = "".join(traceback.format_exception(type(ce), ce, ce.__traceback__))
            err = (err + "\n" if err else "") + "during cleanup: " + msg
        dt = time.monotonic() - t0
        if err:
            failed += 1
            print("FAIL %s (%.1fs)\n%s" % (name, dt, _indent(err)), flush=True)
        else:
            passed += 1
            print("ok   %s (%.1fs)" % (name, dt), flush=True)
    _scopes.pop()
    teardown = file_scope.close()
    if teardown:
        failed += 1
        print("FAIL teardown\n%s" % _indent("\n".join(str(e) for e in teardown)),
              flush=True)
    _kill_all_live()
    print("%d passed, %d failed" % (passed, failed), flush=True)
    sys.exit(0 if failed == 0 else 1)


def _indent(text):
    return "\n".join("    " + ln for ln in text.rstrip().splitlines())
