"""Client ACL, CONNECT port policy and start-up refusals (contract §2 steps 1-2, §4):
denied clients get 403 and a log line; a non-loopback listener needs an explicit allow;
an explicit parent that is regproxy itself, bad config values, unknown keys and flags
exit 2 naming the flag/key (and file:line); flag > REGPROXY_* env > config file; SIGHUP
reloads allow. admin_allow (contract §5): the endpoints that reveal repositories and digests
answer only its clients, /healthz and /ca.crt every allowed client."""

import os
import signal
import socket

import harness as h


def setup():
    global ORIGIN
    ORIGIN = h.Nginx()


def connect_status(rp, target):
    c = rp.conn()
    r = c.connect_tunnel(target)
    c.close()
    return r


def test_denied_client_403_and_logged():
    rp = h.Regproxy(["--allow", "10.9.9.9"], ready="port")
    c = rp.conn()
    r = c.connect_tunnel("127.0.0.1:%d" % ORIGIN.http_port)
    local = "127.0.0.1:%d" % c.sock.getsockname()[1]
    assert r.status == 403, "CONNECT from a denied client: %r" % r
    line = rp.wait_log(client=local, status="403")
    assert line.get("method") == "CONNECT", line
    r = rp.conn().request("GET", "http://127.0.0.1:%d/a.txt" % ORIGIN.http_port)
    assert r.status == 403, "GET from a denied client: %r" % r
    r = rp.get_admin("/metrics")
    assert r.status == 403 and b"regproxy_" not in r.body, \
        "admin endpoint answered a denied client: %r" % r
    # Nothing reached the origin.
    assert not [d for d in ORIGIN.access_log() if d.get("uri") == "/a.txt"
                and d.get("via")], ORIGIN.access_log()


def test_allow_cidr_admits_client():
    rp = h.Regproxy(["--allow", "127.0.0.0/8, ::1/128"])  # loopback only: any port
    r = connect_status(rp, "127.0.0.1:%d" % ORIGIN.https_port)
    assert r.status == 200, r


def test_ipv6_loopback_listener_default_allow():
    port = h.free_port("::1")
    rp = h.Regproxy(["--listen", "[::1]:%d" % port])
    c = h.HttpConn("::1", port)
    r = c.connect_tunnel("127.0.0.1:%d" % ORIGIN.http_port)
    assert r.status == 200, r
    r = c.request("GET", "/a.txt", host="127.0.0.1")
    assert r.status == 200 and h.sha256(r.body) == ORIGIN.files["a.txt"]
    c.close()
    rp.wait_log(method="CONNECT", client=lambda v: v.startswith("[::1]:") or
                v.startswith("::1"))


def test_non_loopback_listener_without_allow_exits_2():
    rc, err = h.run_regproxy_expect_exit(["--listen", "0.0.0.0:%d" % h.free_port(),
                                          "--mitm", ""])
    assert rc == 2, "exit code %s, stderr: %s" % (rc, err[-1500:])
    assert "allow" in err.lower() or "listen" in err.lower(), err[-1500:]


def test_non_loopback_transparent_without_allow_exits_2():
    rc, err = h.run_regproxy_expect_exit(["--listen", "127.0.0.1:%d" % h.free_port(),
                                          "--transparent", "0.0.0.0:%d" % h.free_port(),
                                          "--mitm", ""])
    assert rc == 2, "exit code %s, stderr: %s" % (rc, err[-1500:])


def test_transparent_listener_refuses_a_direct_connection():
    # Nothing redirected it, so its destination is regproxy itself: dialing that
    # would loop. The connection is closed and logged, the process lives on.
    tport = h.free_port()
    rp = h.Regproxy(["--transparent", "127.0.0.1:%d" % tport, "--mitm", ""])
    c = h.HttpConn("127.0.0.1", tport)
    c.send(b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n")
    assert c.at_eof(), "a direct connection to the transparent port was not closed"
    c.close()
    ln = rp.wait_log(via="transparent")
    assert ln.get("status") in ("0", "508"), ln
    assert "original destination" in ln.get("reason", ""), ln
    assert rp.get_admin("/healthz").status == 200


def test_non_loopback_listener_with_allow_starts():
    port = h.free_port()
    rp = h.Regproxy(["--listen", "0.0.0.0:%d" % port, "--allow", "127.0.0.1"])
    r = rp.get_admin("/healthz")
    assert r.status == 200 and r.body.strip() == b"ok"


def test_explicit_parent_pointing_at_self_exits_2():
    port = h.free_port()
    rc, err = h.run_regproxy_expect_exit(["--listen", "127.0.0.1:%d" % port, "--mitm", "",
                                          "--parent-proxy", "http://127.0.0.1:%d" % port])
    assert rc == 2, "exit code %s, stderr: %s" % (rc, err[-1500:])
    assert "parent" in err.lower(), "message does not name parent_proxy: %s" % err[-1500:]


def _config_exit(text, line_no, key):
    d = h.tmpdir()
    path = h.write_file(os.path.join(d, "bad.yml"), text)
    rc, err = h.run_regproxy_expect_exit(["--config", path, "--listen",
                                          "127.0.0.1:%d" % h.free_port()])
    assert rc == 2, "exit code %s for config:\n%s\nstderr: %s" % (rc, text, err[-1500:])
    assert "%s:%d" % (path, line_no) in err or "bad.yml:%d" % line_no in err, \
        "stderr does not name bad.yml:%d: %s" % (line_no, err[-1500:])
    if key:
        assert key in err, "stderr does not name %s: %s" % (key, err[-1500:])


def test_bad_config_value_exits_2_with_file_line():
    _config_exit("# regproxy\nmitm: \"\"\nheader_timeout: banana\n", 3, "header_timeout")


def test_bad_config_listen_exits_2_with_file_line():
    _config_exit("mitm: \"\"\n\nlog_level: debug\nmax_connections: -5\n", 4,
                 "max_connections")


def test_unknown_config_key_exits_2():
    _config_exit("mitm: \"\"\nno_such_key: 1\n", 2, "no_such_key")


def test_config_syntax_error_exits_2():
    d = h.tmpdir()
    path = h.write_file(os.path.join(d, "bad.yml"), "mitm: \"\"\nallow: [127.0.0.1\n")
    rc, err = h.run_regproxy_expect_exit(["--config", path])
    assert rc == 2, "exit code %s, stderr: %s" % (rc, err[-1500:])
    assert "bad.yml" in err, err[-1500:]


def test_unknown_flag_exits_2():
    rc, err = h.run_regproxy_expect_exit(["--no-such-flag", "1"])
    assert rc == 2, "exit code %s, stderr: %s" % (rc, err[-1500:])
    assert "--no-such-flag" in err or "no-such-flag" in err, err[-1500:]


def test_bad_flag_values_exit_2():
    bad = [["--header-timeout", "banana"], ["--listen", "127.0.0.1:99999"],
           ["--connect-to", "garbage"], ["--allow", "not-an-ip"],
           ["--log-format", "xml"], ["--max-connections", "many"]]
    problems = []
    for args in bad:
        rc, err = h.run_regproxy_expect_exit(args + ["--mitm", ""])
        if rc != 2:
            problems.append("%r -> exit %s" % (args, rc))
        elif args[0] not in err and args[0].lstrip("-").replace("-", "_") not in err:
            problems.append("%r -> message does not name %s: %s" % (
                args, args[0], err.strip()[-300:]))
    assert not problems, "\n".join(problems)


def test_config_file_env_flag_precedence():
    d = h.tmpdir()
    conf = h.write_file(os.path.join(d, "rp.yml"), "allow: \"10.9.9.9\"\n")
    target = "127.0.0.1:%d" % ORIGIN.https_port
    rp = h.Regproxy(["--config", conf], ready="port")
    assert connect_status(rp, target).status == 403, "config file allow ignored"
    rp = h.Regproxy(["--config", conf], env={"REGPROXY_ALLOW": "127.0.0.1"})
    assert connect_status(rp, target).status == 200, "REGPROXY_ALLOW does not beat the file"
    rp = h.Regproxy(["--config", conf, "--allow", "10.9.9.9"],
                    env={"REGPROXY_ALLOW": "127.0.0.1"}, ready="port")
    assert connect_status(rp, target).status == 403, "--allow does not beat REGPROXY_ALLOW"


def test_sighup_reloads_allow():
    d = h.tmpdir()
    conf = h.write_file(os.path.join(d, "rp.yml"), "allow: \"127.0.0.1\"\n")
    rp = h.Regproxy(["--config", conf])
    target = "127.0.0.1:%d" % ORIGIN.https_port
    keep = rp.conn()
    assert keep.connect_tunnel("127.0.0.1:%d" % ORIGIN.http_port).status == 200
    assert connect_status(rp, target).status == 200
    h.write_file(conf, "allow: \"10.9.9.9\"\n")
    rp.signal(signal.SIGHUP)
    h.wait_until(lambda: connect_status(rp, target).status == 403, 10,
                 "403 after SIGHUP narrowed allow", interval=0.1)
    assert rp.alive()
    # The tunnel accepted before the reload is not dropped.
    r = keep.request("GET", "/a.txt", host="127.0.0.1")
    assert r.status == 200 and h.sha256(r.body) == ORIGIN.files["a.txt"], r


def test_connect_port_policy_with_non_loopback_allow():
    # Once a non-loopback client may connect, CONNECT is limited to 443 + mitm/connect_to
    # ports unless --connect-ports says otherwise.
    rp = h.Regproxy(["--allow", "127.0.0.1,10.9.9.9"])
    r = connect_status(rp, "127.0.0.1:%d" % ORIGIN.http_port)
    assert r.status == 403, "CONNECT to port %d allowed: %r" % (ORIGIN.http_port, r)
    rp.wait_log(status="403", method="CONNECT")
    rp = h.Regproxy(["--allow", "127.0.0.1,10.9.9.9",
                     "--connect-ports", "443,%d" % ORIGIN.http_port])
    r = connect_status(rp, "127.0.0.1:%d" % ORIGIN.http_port)
    assert r.status == 200, "--connect-ports did not open port %d: %r" % (
        ORIGIN.http_port, r)
    rp = h.Regproxy(["--allow", "127.0.0.1,10.9.9.9", "--connect-to",
                     "origin.test:%d:127.0.0.1:%d" % (ORIGIN.https_port, ORIGIN.https_port)])
    r = connect_status(rp, "origin.test:%d" % ORIGIN.https_port)
    assert r.status == 200, "port named in --connect-to refused: %r" % r
    # A port named in a mitm entry ("registry.lan:5000") is open too, and only that one.
    rp = h.Regproxy(["--allow", "127.0.0.1,10.9.9.9", "--mitm",
                     "registry.lan.test:%d" % ORIGIN.http_port])
    r = connect_status(rp, "127.0.0.1:%d" % ORIGIN.http_port)
    assert r.status == 200, "port named in --mitm refused: %r" % r
    r = connect_status(rp, "127.0.0.1:%d" % ORIGIN.https_port)
    assert r.status == 403, "a port no rule names was allowed: %r" % r


# contract §5: these reveal digests, repositories and clients; /healthz and /ca.crt do not.
ADMIN_ONLY = ["/", "/status.json", "/metrics", "/cache/objects", "/cache/du",
              "/cache/objects/sha256:" + "0" * 64]
ANYONE = ["/healthz", "/ca.crt"]


def admin_from(rp, source, path, method="GET", family=socket.AF_INET, connect_host=None):
    """One admin request from a chosen source address (bound before connecting)."""
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(10)
    s.bind((source, 0))
    s.connect((connect_host or rp.host, rp.port))
    c = h.HttpConn(sock=s)
    try:
        r = c.request(method, path, [("Host", "127.0.0.1:%d" % rp.port),
                                     ("Connection", "close")])
        return r, s.getsockname()[1]
    finally:
        c.close()


def expect_admin(rp, source, want_admin, **kw):
    problems = []
    for path in ADMIN_ONLY + ANYONE:
        for method in ("GET", "HEAD"):
            r, _ = admin_from(rp, source, path, method, **kw)
            want = 200 if want_admin or path in ANYONE else 403
            if path.startswith("/cache/objects/") and want == 200:
                want = 404  # an unknown digest: the endpoint answered
            if r.status != want:
                problems.append("%s %s from %s -> %d, want %d" % (method, path, source,
                                                                  r.status, want))
            if want == 403 and (b"sha256:" in r.body or b"regproxy_" in r.body):
                problems.append("%s %s from %s leaked %r" % (method, path, source,
                                                             r.body[:200]))
    assert not problems, "\n".join(problems)


def test_admin_allow_limits_the_revealing_endpoints():
    rp = h.Regproxy(["--allow", "127.0.0.0/8", "--admin-allow", "127.0.0.1/32"])
    expect_admin(rp, "127.0.0.2", False)
    expect_admin(rp, "127.0.0.1", True)
    r, port = admin_from(rp, "127.0.0.2", "/status.json")
    assert r.status == 403 and b"admin_allow" in r.body and r.body.count(b"\n") == 1, r
    line = rp.wait_log(client="127.0.0.2:%d" % port, status="403")
    assert line.get("path") == "/status.json" and line.get("route") == "admin", line
    # Changing the cache is refused before anything else is looked at.
    r, _ = admin_from(rp, "127.0.0.2", "/cache/gc", "POST")
    assert r.status == 403, r
    # Mirror requests are not admin requests.
    r, _ = admin_from(rp, "127.0.0.2", "/v2/")
    assert r.status == 200, r


def test_admin_allow_default_is_loopback():
    rp = h.Regproxy(["--allow", "127.0.0.0/8"])
    expect_admin(rp, "127.0.0.2", True)


def test_admin_allow_on_an_ipv6_listener():
    # Listeners are IPV6_V6ONLY, so IPv4-mapped peers never reach admin_allow from
    # them; the unmapping itself is in test_rules.c's ACL table.
    port = h.free_port("::1")
    rp = h.Regproxy(["--listen", "[::1]:%d" % port, "--admin-allow", "127.0.0.1"])
    expect_admin(rp, "::1", False, family=socket.AF_INET6)
    rp = h.Regproxy(["--listen", "[::1]:%d" % h.free_port("::1"), "--admin-allow", "::1/128"])
    expect_admin(rp, "::1", True, family=socket.AF_INET6)


def test_sighup_reloads_admin_allow():
    d = h.tmpdir()
    conf = h.write_file(os.path.join(d, "rp.yml"),
                        "allow: 127.0.0.0/8\nadmin_allow: [127.0.0.1]\n")
    rp = h.Regproxy(["--config", conf])
    assert admin_from(rp, "127.0.0.2", "/metrics")[0].status == 403
    h.write_file(conf, "allow: 127.0.0.0/8\nadmin_allow: 127.0.0.2/32\n")
    rp.signal(signal.SIGHUP)
    h.wait_until(lambda: admin_from(rp, "127.0.0.2", "/metrics")[0].status == 200, 10,
                 "200 after SIGHUP widened admin_allow", interval=0.1)
    assert admin_from(rp, "127.0.0.1", "/metrics")[0].status == 403
    assert admin_from(rp, "127.0.0.1", "/healthz")[0].status == 200
    # A bad value on reload keeps the running configuration.
    h.write_file(conf, "allow: 127.0.0.0/8\nadmin_allow: nope\n")
    rp.signal(signal.SIGHUP)
    rp.wait_log(msg=lambda v: "reload failed" in v and "admin_allow" in v)
    assert admin_from(rp, "127.0.0.2", "/metrics")[0].status == 200
    assert rp.alive()


def test_bad_admin_allow_exits_2_naming_it():
    listen = ["--listen", "127.0.0.1:%d" % h.free_port(), "--mitm", ""]
    rc, err = h.run_regproxy_expect_exit(["--admin-allow", "not-an-ip"] + listen)
    assert rc == 2 and "--admin-allow" in err, (rc, err[-1500:])
    rc, err = h.run_regproxy_expect_exit(listen, env={"REGPROXY_ADMIN_ALLOW": "10.0.0.0/99"})
    assert rc == 2 and "REGPROXY_ADMIN_ALLOW" in err, (rc, err[-1500:])
    _config_exit("mitm: \"\"\nadmin_allow:\n  - 127.0.0.1\n  - example.com\n", 4,
                 "admin_allow")


if __name__ == "__main__":
    h.main(globals())
