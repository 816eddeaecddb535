"""The man page (issue 12): build/man/regproxy.1 is generated from the option table, so
every option's flag, config key and REGPROXY_* variable appears in it; every --flag the
page mentions (hand-written prose included) is one `regproxy --help` knows; conf/regproxy.yml
names every config key; and the page renders with man(1)."""

import os
import re
import shutil
import subprocess

import harness as h

SRC = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
PAGE = None


def setup():
    global PAGE
    build = os.environ.get("RP_BUILD_DIR") or os.path.join(SRC, "build")
    PAGE = os.path.join(build, "man", "regproxy.1")
    if not os.path.exists(PAGE):
        if shutil.which("scdoc") is None:
            raise h.Skip("scdoc is not installed, so the build made no man page")
        raise AssertionError("%s missing although scdoc is installed" % PAGE)


def table():
    """(key, flags) of every entry of the option table, read from the C source itself."""
    with open(os.path.join(SRC, "src", "config", "options.c")) as f:
        src = f.read()
    with open(os.path.join(SRC, "src", "config", "internal.h")) as f:
        n = int(re.search(r"#define RP__N_OPTS (\d+)", f.read()).group(1))
    body = src[src.index("const struct rp__opt rp__opts[] = {"):]
    body = body[:body.index("\n};")]
    opts = re.findall(r'\{"([a-z_0-9]+)",\s*OT_[A-Z_]+,\s*([^,]+),', body)
    assert len(opts) == n, ("parsed %d options, RP__N_OPTS is %d" % (len(opts), n))
    return opts


def page_text():
    """The roff source with font changes and escapes taken out."""
    with open(PAGE) as f:
        t = f.read()
    t = re.sub(r"\\f[BIRP]", "", t)
    t = t.replace("\\&", "").replace("\\-", "-").replace("\\(aq", "'").replace("\\*(Aq", "'")
    return t


# Flags spelled otherwise than their key (flag_aliases in src/config/options.c).
FLAG_ALIASES = {"upstream_mirrors": "--upstream-mirror"}


def flag_of(key):
    return FLAG_ALIASES.get(key, "--" + key.replace("_", "-"))


def test_every_option_flag_key_and_variable():
    text = page_text()
    missing = []
    for key, flags in table():
        names = [flag_of(key)]
        if "OF_NO_KEY" not in flags:
            names.append(key)
        if "OF_NO_ENV" not in flags:
            names.append("REGPROXY_" + key.upper())
        missing += [n for n in names if not re.search(r"(?<![\w-])%s(?![\w-])" % re.escape(n), text)]
    assert not missing, "not in %s: %s" % (PAGE, missing)


def test_page_and_help_name_the_same_flags():
    out = h.run([h.regproxy_bin(), "--help"]).stdout.decode()
    helpflags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", out))
    pageflags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", page_text()))
    assert helpflags - pageflags == set(), ("in --help, not in the page", helpflags - pageflags)
    assert pageflags - helpflags == set(), ("in the page, unknown to --help",
                                            pageflags - helpflags)


def test_config_reference_names_every_key():
    with open(os.path.join(SRC, "conf", "regproxy.yml")) as f:
        conf = f.read()
    missing = [k for k, flags in table() if "OF_NO_KEY" not in flags
               and not re.search(r"^#?%s:" % re.escape(k), conf, re.M)]
    assert not missing, "keys conf/regproxy.yml does not show: %s" % missing


def test_renders():
    if shutil.which("man") is None:
        print("man is not installed: rendering not checked")
        return
    p = subprocess.run(["man", "-P", "cat", "-l", PAGE], capture_output=True, timeout=60,
                       env=h.clean_env(MANWIDTH="80", LC_ALL="C.UTF-8"))
    out = p.stdout.decode()
    assert p.returncode == 0, (p.returncode, p.stderr)
    assert p.stderr.strip() == b"", p.stderr
    assert out.startswith("regproxy(1)"), out[:200]
    for heading in ("NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "OPTIONS", "FILES",
                    "ENVIRONMENT", "EXIT STATUS", "SEE ALSO"):
        assert re.search(r"^%s$" % heading, out, re.M), heading
    assert "regproxy - caching forward proxy for container images" in out
    # Each option's term line starts a line, so no line breaking can split it.
    for key, _ in table():
        flag = flag_of(key)
        assert re.search(r"^\s+%s(\s|$)" % re.escape(flag), out, re.M), flag


if __name__ == "__main__":
    h.main(globals())
