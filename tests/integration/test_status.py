"""The status page (contract §5): /status.json has the hit ratio, bytes served from the cache
and from upstream (in total and per minute over the last hour), the pulls saved, the recent
pulls and the top repositories after two skopeo pulls through MITM; GET / is a
self-contained page (CSP, no external resources) that headless chromium renders with those
numbers filled in and the last hour drawn as an inline SVG, sizes in the unit of the flags
(`--cache-max-size 20G` is 20 GiB); an instance that has served nothing shows the lines that
point dockerd, containerd and podman at it. Screenshots are kept under
$RP_BUILD_DIR/artifacts/ (else a temporary directory). Both keep the admin Host check."""

import json
import os
import shutil
import subprocess

import harness as h

HOST = "registry-1.docker.io"


def setup():
    global CA, REG, IMG, RP
    CA = h.shared_ca()
    REG = h.Registry()
    IMG = h.OciImage(os.path.join(h.tmpdir(), "img"), layer_sizes=(4000, 300 * 1024))
    h.skopeo(["copy", "--dest-cert-dir", CA.certdir, "oci:%s:3.18" % IMG.path,
              "docker://127.0.0.1:%d/library/alpine:3.18" % REG.port])
    RP = h.Regproxy(["--cache-max-size", "20G", "--mitm", HOST, "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, REG.port),
                     "--upstream-ca", CA.ca_crt])
    d = h.tmpdir()
    shutil.copy(os.path.join(RP.dir, "ca", "ca.crt"), os.path.join(d, "regproxy.crt"))
    shutil.copy(CA.ca_crt, os.path.join(d, "test-ca.crt"))
    for _ in range(2):
        h.skopeo(["copy", "--src-cert-dir", d, "docker://%s/library/alpine:3.18" % HOST,
                  "oci:%s:3.18" % os.path.join(h.tmpdir(), "out")], env={"HTTPS_PROXY": RP.url})


def status():
    r = RP.get_admin("/status.json")
    assert r.status == 200 and r.header("content-type") == "application/json", r
    return json.loads(r.body)


def test_status_json_after_two_pulls():
    s = status()
    pulls = [p for p in s["recent_pulls"] if p["image"] == "docker.io/library/alpine:3.18"]
    assert len(pulls) == 2, s["recent_pulls"]
    assert pulls[0]["cache"] == "revalidated" and pulls[1]["cache"] == "miss", pulls
    top = s["top_repositories"][0]
    assert top["repository"] == "docker.io/library/alpine", s["top_repositories"]
    layer = os.path.getsize(os.path.join(IMG.path, "blobs", "sha256", IMG.layers[1][7:]))
    assert top["from_cache"] >= layer and top["from_upstream"] >= layer, top
    assert 0.3 < s["hit_ratio"] < 0.7, s  # one cold pull, one warm
    assert s["bytes"]["from_cache"] == top["from_cache"]
    assert s["cache"]["objects"] >= len(IMG.blobs) and s["fills"] == []
    assert s["cache"]["max_size"] == 20 << 30, s["cache"]
    # The last hour, a minute a slot, oldest first: both pulls fall inside it.
    ms = s["minutes"]
    assert len(ms) == 60 and ms[-1]["time"] <= s["time"] < ms[-1]["time"] + 60, ms[-1]
    assert [m["time"] for m in ms] == [ms[0]["time"] + 60 * i for i in range(60)]
    hour = s["last_hour"]
    assert sum(m["from_cache"] for m in ms) == hour["from_cache"] == s["bytes"]["from_cache"]
    assert sum(m["from_upstream"] for m in ms) == hour["from_upstream"] == \
        s["bytes"]["from_upstream"]
    assert 0 < hour["hits"] < hour["requests"] == sum(m["requests"] for m in ms), hour
    assert abs(hour["hit_ratio"] - s["hit_ratio"]) < 1e-9, hour
    # The second pull's manifest GET was answered after a HEAD: one pull saved. The
    # distribution registry sends no ratelimit headers, so no limit is shown.
    assert s["pulls_saved"] == 1, s
    assert s["ratelimits"] == [{"registry": "docker.io", "auth": "anonymous",
                                "pulls_saved": 1}], s["ratelimits"]
    assert RP.metrics().sum("regproxy_pulls_saved_total", registry="docker.io") == 1


def test_page_is_self_contained_and_host_checked():
    r = RP.get_admin("/")
    assert r.status == 200 and r.header("content-type").startswith("text/html"), r
    csp = r.header("content-security-policy")
    assert csp and "default-src 'none'" in csp and "connect-src 'self'" in csp, csp
    assert b"/status.json" in r.body
    # Nothing is loaded from elsewhere: the only URLs in the page are the SVG namespace and
    # the set-up lines the empty state shows (text, never fetched). No markup is built
    # from strings either.
    body = r.body
    for allowed in (b"http-equiv", b"http-proxy.conf", b"'http://www.w3.org/2000/svg'", b"'http://'",
                    b"https://registry-1.docker.io"):
        body = body.replace(allowed, b"")
    assert b"http" not in body, body[body.find(b"http") - 80:body.find(b"http") + 80]
    for bad in (b"innerHTML", b"outerHTML", b"insertAdjacentHTML", b"document.write",
                b"<img", b"<link", b"url(", b"@import", b" src="):
        assert bad not in r.body, bad
    r = RP.get_admin("/status.json", host="rebind.example")
    assert r.status == 421, r


def browse(rp, name):
    """The page as headless chromium leaves it (DOM text) and a screenshot of it, kept as
    a test artifact; None when there is no browser here."""
    chromium = shutil.which("chromium")
    if chromium is None:
        return None  # no browser on this machine: the JSON and page checks still ran
    d = h.tmpdir()
    p = h.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--user-data-dir=" + d,
               "--virtual-time-budget=5000", "--dump-dom", rp.url + "/"], timeout=60,
              check=False, env=h.clean_env(HOME=d))
    dom = p.stdout.decode(errors="replace")
    art = os.path.join(os.environ.get("RP_BUILD_DIR") or h.tmpdir(), "artifacts")
    os.makedirs(art, exist_ok=True)
    shot = os.path.join(art, name)
    if os.path.exists(shot):
        os.unlink(shot)
    h.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--user-data-dir=" + d,
           "--hide-scrollbars", "--virtual-time-budget=5000", "--window-size=1200,1100",
           "--screenshot=" + shot, rp.url + "/"], timeout=60, check=False,
          env=h.clean_env(HOME=d))
    assert os.path.exists(shot) and os.path.getsize(shot) > 10000, "screenshot missing or blank"
    print("screenshot: " + shot)
    return dom


def test_chromium_renders_the_numbers():
    dom = browse(RP, "status.png")
    if dom is None:
        return
    assert "docker.io/library/alpine:3.18" in dom, dom[-2000:]
    assert "<td>revalidated</td>" in dom, dom[-2000:]
    assert 'id="updated">(no answer)' not in dom and 'id="hit">-<' not in dom, dom[:2000]
    assert " objects of 20 GiB</span>" in dom, dom[:3000]
    # The chart: 60 minutes drawn, this minute's bars from cache and from upstream.
    assert dom.count("<g><title>") == 60 and 'fill="#2e9d5b"' in dom, dom
    assert 'fill="#e8833a"' in dom and "60 min ago" in dom, dom
    assert '<div id="empty" hidden=""' in dom, dom[:3000]


def test_empty_state_shows_the_setup_lines():
    rp = h.Regproxy(["--mitm", HOST])
    s = json.loads(rp.get_admin("/status.json").body)
    assert s["recent_pulls"] == [] and s["pulls_saved"] == 0 and s["ratelimits"] == [], s
    assert len(s["minutes"]) == 60 and not any(m["requests"] for m in s["minutes"]), s
    assert "http://" + s["listen"] == rp.url, (s["listen"], rp.url)
    dom = browse(rp, "status-empty.png")
    if dom is None:
        return
    u = rp.url
    assert '<div id="empty">' in dom and '<div id="busy" hidden=""' in dom, dom[:3000]
    for line in ('Environment="HTTP_PROXY=%s" "HTTPS_PROXY=%s"' % (u, u),
                 '{"registry-mirrors": ["%s"]}' % u,
                 '[host."%s"]' % u,
                 'env = ["HTTP_PROXY=%s", "HTTPS_PROXY=%s"' % (u, u),
                 "curl -fsS %s/ca.crt -o /usr/local/share/ca-certificates/regproxy.crt" % u,
                 'href="%s/ca.crt"' % u):
        assert line.replace("&", "&amp;") in dom, (line, dom)


if __name__ == "__main__":
    h.main(globals())
