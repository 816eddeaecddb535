"""The status page (SPEC §5): /status.json has the hit ratio, bytes served from the cache
and from upstream, the recent pulls and the top repositories after two skopeo pulls
through MITM; GET / is a self-contained page (CSP, no external resources) that headless
chromium renders with those numbers filled in; both keep the admin Host check."""

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
    RP = h.Regproxy(["--mitm", HOST, "--connect-to", "%s:443:127.0.0.1:%d" % (HOST, REG.port),
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


def test_page_is_self_contained_and_host_checked():
    r = RP.get_admin("/")
    assert r.status == 200 and r.header("content-type").startswith("text/html"), r
    csp = r.header("content-security-policy")
    assert csp and "default-src 'none'" in csp and "connect-src 'self'" in csp, csp
    assert b"/status.json" in r.body and b"http" not in r.body.replace(b"http-equiv", b"")
    r = RP.get_admin("/status.json", host="rebind.example")
    assert r.status == 421, r


def test_chromium_renders_the_numbers():
    chromium = shutil.which("chromium")
    if chromium is None:
        return  # no browser on this machine: the JSON and page checks above still ran
    d = h.tmpdir()
    p = h.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--user-data-dir=" + d,
               "--virtual-time-budget=5000", "--dump-dom", RP.url + "/"], timeout=60,
              check=False, env=h.clean_env(HOME=d))
    dom = p.stdout.decode(errors="replace")
    assert "docker.io/library/alpine:3.18" in dom, dom[-2000:]
    assert "<td>revalidated</td>" in dom, dom[-2000:]
    assert 'id="updated">(no answer)' not in dom and 'id="hit">-<' not in dom, dom[:2000]
    shot = os.path.join(d, "status.png")
    h.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--user-data-dir=" + d,
           "--virtual-time-budget=5000", "--window-size=1200,900", "--screenshot=" + shot,
           RP.url + "/"], timeout=60, check=False, env=h.clean_env(HOME=d))
    assert os.path.getsize(shot) > 10000, "screenshot missing or blank"


if __name__ == "__main__":
    h.main(globals())
