"""`cmake --install` (issue 12, "Install and run as a service"): into a temporary
DESTDIR with --prefix /usr, the binary, /etc/regproxy/regproxy.yml, the systemd unit
(Type= matching the build, ExecStart naming the installed binary), the opt-in
transparent-mode drop-in, the docs and, once built, the man page land in their FHS
places; a re-install keeps an edited configuration; the unit's own command line starts
the installed binary; `systemd-analyze verify` finds nothing to say about the unit and
its drop-in, and `systemd-analyze security --offline` rates it (the score is printed).
The systemd-analyze parts are skipped only when systemd-analyze is missing."""

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess

import harness as h

SRC = os.path.abspath(os.path.join(h.HERE, "..", ".."))
UNIT = "usr/lib/systemd/system/regproxy.service"
DROPIN = "usr/share/regproxy/systemd/regproxy.service.d/transparent.conf"


def setup():
    global BUILD, NOTIFY
    BUILD = os.environ.get("RP_BUILD_DIR") or os.path.dirname(h.regproxy_bin())
    if not os.path.exists(os.path.join(BUILD, "cmake_install.cmake")):
        raise AssertionError("no cmake_install.cmake in %s (set RP_BUILD_DIR)" % BUILD)
    NOTIFY = h.has_sd_notify()


def install(prefix="/usr", dest=None):
    dest = dest or h.tmpdir("rpit-destdir-")
    env = h.clean_env(DESTDIR=dest)
    h.run(["cmake", "--install", BUILD, "--prefix", prefix], env=env, timeout=120)
    return dest


def unit_values(path):
    vals = {}
    for line in open(path):
        line = line.strip()
        if line and not line.startswith(("#", "[")):
            k, _, v = line.partition("=")
            vals.setdefault(k, []).append(v)
    return vals


def test_tree():
    d = install()
    exe = os.path.join(d, "usr/bin/regproxy")
    assert os.access(exe, os.X_OK), exe
    out = h.run([exe, "--version"]).stdout.decode()
    assert out.startswith("regproxy "), out
    conf = os.path.join(d, "etc/regproxy/regproxy.yml")
    assert open(conf).read() == open(os.path.join(SRC, "conf/regproxy.yml")).read()
    u = unit_values(os.path.join(d, UNIT))
    assert u["Type"] == ["notify" if NOTIFY else "simple"], u["Type"]
    argv = shlex.split(u["ExecStart"][0])
    assert argv[:2] == ["/usr/bin/regproxy", "run"], argv
    assert "--cache-dir" in argv and argv[argv.index("--cache-dir") + 1] == \
        "/var/cache/regproxy", argv
    assert argv[argv.index("--ca-dir") + 1] == "/var/lib/regproxy/ca", argv
    assert argv[argv.index("--config") + 1] == "/etc/regproxy/regproxy.yml", argv
    assert u["ExecReload"] == ["/bin/kill -HUP $MAINPID"], u["ExecReload"]
    assert u["CacheDirectory"] == ["regproxy"] and u["StateDirectory"] == ["regproxy"]
    for key in ("DynamicUser", "ProtectHome", "PrivateTmp", "NoNewPrivileges"):
        assert u[key] == ["yes"], (key, u.get(key))
    assert u["ProtectSystem"] == ["strict"]
    assert "AmbientCapabilities" not in u and u["CapabilityBoundingSet"] == [""], u
    # The transparent drop-in is shipped, not active: it is no drop-in directory
    # of the unit until the administrator copies it to /etc/systemd/system.
    t = unit_values(os.path.join(d, DROPIN))
    assert t["AmbientCapabilities"] == ["CAP_NET_ADMIN"], t
    assert not os.path.exists(os.path.join(d, UNIT + ".d"))
    docs = sorted(os.listdir(os.path.join(d, "usr/share/doc/regproxy")))
    want = sorted(["README.md"] + [f for f in os.listdir(os.path.join(SRC, "docs"))
                                   if f.endswith(".md")])
    assert [f for f in docs if f.endswith(".md")] == want, (docs, want)
    man = os.path.join(d, "usr/share/man/man1/regproxy.1")
    if os.path.exists(os.path.join(BUILD, "man/regproxy.1")):
        assert os.path.isfile(man), "man page built but not installed"
    # Nothing outside the prefix but /etc/regproxy.
    assert sorted(os.listdir(d)) == ["etc", "usr"], os.listdir(d)
    assert os.listdir(os.path.join(d, "etc")) == ["regproxy"]


def test_prefix_and_reinstall_keep_config():
    d = install(prefix="/opt/rp")
    u = unit_values(os.path.join(d, "opt/rp/lib/systemd/system/regproxy.service"))
    assert u["ExecStart"][0].startswith("/opt/rp/bin/regproxy run "), u["ExecStart"]
    assert os.access(os.path.join(d, "opt/rp/bin/regproxy"), os.X_OK)
    # regproxy looks for /etc/regproxy/regproxy.yml whatever its prefix.
    conf = os.path.join(d, "etc/regproxy/regproxy.yml")
    with open(conf, "a") as f:
        f.write("log_level: debug\n")
    edited = open(conf).read()
    install(prefix="/opt/rp", dest=d)
    assert open(conf).read() == edited, "re-install overwrote the edited configuration"
    assert open(conf + ".dist").read() == open(os.path.join(SRC, "conf/regproxy.yml")).read()


def test_unit_command_line_starts():
    # ExecStart as systemd would run it, with the state and cache directories (made by
    # StateDirectory=/CacheDirectory=) moved to temp dirs and a free port.
    d = install()
    argv = shlex.split(unit_values(os.path.join(d, UNIT))["ExecStart"][0])
    argv[0] = os.path.join(d, argv[0].lstrip("/"))
    argv[argv.index("--config") + 1] = os.path.join(d, "etc/regproxy/regproxy.yml")
    state = h.tmpdir("rpit-unitstate-")
    argv[argv.index("--cache-dir") + 1] = os.path.join(state, "cache")
    argv[argv.index("--ca-dir") + 1] = os.path.join(state, "lib/ca")
    port = h.free_port()
    argv += ["--listen", "127.0.0.1:%d" % port]
    env = h.clean_env(HOME=state)
    ns = None
    if NOTIFY:
        ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        ns.bind(os.path.join(state, "notify"))
        h.defer(ns.close)
        ns.settimeout(15)
        env["NOTIFY_SOCKET"] = os.path.join(state, "notify")
    p = h.Proc(argv, name="regproxy-installed", env=env,
               stderr=os.path.join(state, "stderr.log"))
    if ns is not None:
        assert b"READY=1" in ns.recv(4096)
    h.wait_until(lambda: h.port_open("127.0.0.1", port), 15, "installed regproxy listening")
    r = h.simple_status("127.0.0.1", port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        b"Connection: close\r\n\r\n")
    assert r.status == 200, r
    p.signal(signal.SIGTERM)
    assert p.wait_exit(15) == 0, h.tail(os.path.join(state, "stderr.log"))
    assert os.path.exists(os.path.join(state, "lib/ca")), "CA not created in --ca-dir"


def analyze_copy(d):
    """A copy of the installed unit whose ExecStart names the DESTDIR binary (verify
    checks it is executable), with the transparent drop-in beside it, as an
    administrator would enable it."""
    if shutil.which("systemd-analyze") is None:
        return None
    v = h.tmpdir("rpit-unitverify-")
    text = open(os.path.join(d, UNIT)).read()
    text = text.replace("ExecStart=/usr/bin/regproxy",
                        "ExecStart=" + os.path.join(d, "usr/bin/regproxy"))
    h.write_file(os.path.join(v, "regproxy.service"), text)
    return v


def analyze(v, args):
    # SYSTEMD_UNIT_PATH makes the drop-in directory beside the copy count; the trailing
    # ':' keeps the built-in search path (sysinit.target and friends).
    env = h.clean_env(SYSTEMD_UNIT_PATH=v + ":", SYSTEMD_LOG_COLOR="0")
    return subprocess.run(["systemd-analyze"] + args + ["--man=no",
                                                        os.path.join(v, "regproxy.service")],
                          env=env, capture_output=True, text=True, timeout=60)


def test_systemd_analyze_verify():
    d = install()
    v = analyze_copy(d)
    if v is None:
        print("    skipped: systemd-analyze not installed (apt-get install systemd)")
        return
    for dropin in (False, True):
        if dropin:
            os.makedirs(os.path.join(v, "regproxy.service.d"))
            shutil.copy(os.path.join(d, DROPIN), os.path.join(v, "regproxy.service.d"))
        r = analyze(v, ["verify"])
        # verify exits 0 on unknown keys and bad values too: any output is a finding.
        assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), \
            "drop-in=%s rc=%d\n%s%s" % (dropin, r.returncode, r.stdout, r.stderr)
    # A unit verify does complain about, to know that the check above can fail.
    with open(os.path.join(v, "regproxy.service"), "a") as f:
        f.write("NoSuchKey=1\n")
    r = analyze(v, ["verify"])
    assert "NoSuchKey" in r.stderr, r.stderr


def test_systemd_analyze_security():
    d = install()
    v = analyze_copy(d)
    if v is None:
        print("    skipped: systemd-analyze not installed (apt-get install systemd)")
        return
    scores = []
    for dropin in (False, True):
        if dropin:
            os.makedirs(os.path.join(v, "regproxy.service.d"))
            shutil.copy(os.path.join(d, DROPIN), os.path.join(v, "regproxy.service.d"))
        # --offline: no running systemd is needed to rate a unit file.
        r = analyze(v, ["security", "--offline=true", "--no-pager"])
        m = re.search(r"Overall exposure level for regproxy.service: ([0-9.]+) (\w+)",
                      r.stdout + r.stderr)
        assert m, "rc=%d\n%s%s" % (r.returncode, r.stdout, r.stderr)
        scores.append(float(m.group(1)))
        print("    systemd-analyze security%s: %s %s" % (
            " (with transparent.conf)" if dropin else "", m.group(1), m.group(2)))
    # 'OK' is below 3.5 (systemd's scale: 0 safest, 10 unprotected).
    assert scores[0] < 3.5 and scores[1] < 3.5, scores


if __name__ == "__main__":
    h.main(globals())
