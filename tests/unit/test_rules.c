/* Host lists, ACLs and port sets. The host-list table starts with every case
 * of golang.org/x/net/http/httpproxy's proxy_test.go (UseProxyTests with its
 * noProxy string, TestAllNoProxy, TestInvalidNoProxy and the NoProxy cases of
 * proxyForURLTests); our API is inverted relative to Go's useProxy(), so
 * `want` is true where Go says "do not use the proxy". */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "regproxy/error.h"
#include "regproxy/rules.h"

#define LD RP_HOSTLIST_LOOPBACK_DIRECT

/* proxy_test.go's noProxy. */
#define GO_NO_PROXY                                                                                \
  "foobar.com, .barbaz.net, *.wildcard.io, 192.168.1.1, 192.168.1.2:81, 192.168.1.3:80, "          \
  "10.0.0.0/30, 2001:db8::52:0:1, [2001:db8::52:0:2]:443, [2001:db8::52:0:3]:80, "                 \
  "2002:db8:a::45/64"

struct match_case {
  const char *list;
  unsigned flags;
  const char *host;
  uint16_t port;
  bool want;
};

static const struct match_case match_cases[] = {
    /* UseProxyTests: useProxy(host + ":80") with noProxy. Never proxy localhost. */
    {GO_NO_PROXY, LD, "localhost", 80, true},
    {GO_NO_PROXY, LD, "127.0.0.1", 80, true},
    {GO_NO_PROXY, LD, "127.0.0.2", 80, true},
    {GO_NO_PROXY, LD, "::1", 80, true},
    {GO_NO_PROXY, LD, "::2", 80, false},                       /* not a loopback address */
    {GO_NO_PROXY, LD, "192.168.1.1", 80, true},                /* matches exact IPv4 */
    {GO_NO_PROXY, LD, "192.168.1.2", 80, false},               /* ports do not match */
    {GO_NO_PROXY, LD, "192.168.1.3", 80, true},                /* matches exact IPv4:port */
    {GO_NO_PROXY, LD, "192.168.1.4", 80, false},               /* no match */
    {GO_NO_PROXY, LD, "10.0.0.2", 80, true},                   /* matches IPv4/CIDR */
    {GO_NO_PROXY, LD, "2001:db8::52:0:1", 80, true},           /* matches exact IPv6 */
    {GO_NO_PROXY, LD, "2001:db8::52:0:2", 80, false},          /* no match */
    {GO_NO_PROXY, LD, "2001:db8::52:0:3", 80, true},           /* matches exact [IPv6]:port */
    {GO_NO_PROXY, LD, "2002:db8:a::123", 80, true},            /* matches IPv6/CIDR */
    {GO_NO_PROXY, LD, "fe80::424b:c8be:1643:a1b6", 80, false}, /* no match */
    {GO_NO_PROXY, LD, "barbaz.net", 80, false},                /* does not match as .barbaz.net */
    {GO_NO_PROXY, LD, "www.barbaz.net", 80, true},             /* does match as .barbaz.net */
    {GO_NO_PROXY, LD, "foobar.com", 80, true},                 /* does match as foobar.com */
    {GO_NO_PROXY, LD, "www.foobar.com", 80, true},             /* NO_PROXY includes "foobar.com" */
    {GO_NO_PROXY, LD, "foofoobar.com", 80, false},             /* not a part of foobar.com */
    {GO_NO_PROXY, LD, "baz.com", 80, false},                   /* not a part of barbaz.com */
    {GO_NO_PROXY, LD, "localhost.net", 80, false},             /* not a suffix of address */
    {GO_NO_PROXY, LD, "local.localhost", 80, false},           /* not a prefix of address */
    {GO_NO_PROXY, LD, "barbarbaz.net", 80, false},             /* wrong domain */
    {GO_NO_PROXY, LD, "wildcard.io", 80, false},               /* does not match as *.wildcard.io */
    {GO_NO_PROXY, LD, "nested.wildcard.io", 80, true},         /* match as *.wildcard.io */
    {GO_NO_PROXY, LD, "awildcard.io", 80, false},              /* not a match because of '*' */

    /* TestAllNoProxy: "*" matches every UseProxyTests host. */
    {"*", LD, "localhost", 80, true},
    {"*", LD, "127.0.0.1", 80, true},
    {"*", LD, "127.0.0.2", 80, true},
    {"*", LD, "::1", 80, true},
    {"*", LD, "::2", 80, true},
    {"*", LD, "192.168.1.1", 80, true},
    {"*", LD, "192.168.1.2", 80, true},
    {"*", LD, "192.168.1.3", 80, true},
    {"*", LD, "192.168.1.4", 80, true},
    {"*", LD, "10.0.0.2", 80, true},
    {"*", LD, "2001:db8::52:0:1", 80, true},
    {"*", LD, "2001:db8::52:0:2", 80, true},
    {"*", LD, "2001:db8::52:0:3", 80, true},
    {"*", LD, "2002:db8:a::123", 80, true},
    {"*", LD, "fe80::424b:c8be:1643:a1b6", 80, true},
    {"*", LD, "barbaz.net", 80, true},
    {"*", LD, "www.barbaz.net", 80, true},
    {"*", LD, "foobar.com", 80, true},
    {"*", LD, "www.foobar.com", 80, true},
    {"*", LD, "foofoobar.com", 80, true},
    {"*", LD, "baz.com", 80, true},
    {"*", LD, "localhost.net", 80, true},
    {"*", LD, "local.localhost", 80, true},
    {"*", LD, "barbarbaz.net", 80, true},
    {"*", LD, "wildcard.io", 80, true},
    {"*", LD, "nested.wildcard.io", 80, true},
    {"*", LD, "awildcard.io", 80, true},

    /* proxyForURLTests with a NoProxy (http:// URLs, so port 80). */
    {"", LD, "example.com", 80, false},
    {"example.com", LD, "example.com", 80, true},
    {".example.com", LD, "example.com", 80, false},
    {"ample.com", LD, "example.com", 80, false},
    {"example.com", LD, "foo.example.com", 80, true},
    {".foo.com", LD, "example.com", 80, false},
    {".示例.com", LD, "www.示例.com", 80, true},
    {"xn--fsq092h.com", LD, "www.示例.com", 80, true},
    {"示例.com", LD, "www.xn--fsq092h.com", 80, true},
    /* http://[1000::%25.example.com]:123: a zone is not part of a name. */
    {"example.com", LD, "1000::%.example.com", 123, false},
    {"*.example.com", LD, "::1%.example.com", 80, true}, /* loopback, not the name */
    {"*.example.com", 0, "::1%.example.com", 80, false},

    /* Suffix match: a name covers its subdomains, label-aligned. */
    {"foo.com", 0, "foo.com", 443, true},
    {"foo.com", 0, "a.b.c.foo.com", 443, true},
    {"foo.com", 0, "afoo.com", 443, false},
    {"foo.com", 0, "foo.com.evil.net", 443, false},
    {"foo.com", 0, "oo.com", 443, false},
    {"registry-1.docker.io,.pkg.dev", 0, "registry-1.docker.io", 443, true},
    {"registry-1.docker.io,.pkg.dev", 0, "auth.docker.io", 443, false},
    {"registry-1.docker.io,.pkg.dev", 0, "europe-docker.pkg.dev", 443, true},
    {"registry-1.docker.io,.pkg.dev", 0, "pkg.dev", 443, false},

    /* Leading dot and "*." both mean subdomains only. */
    {".foo.com", 0, "foo.com", 443, false},
    {".foo.com", 0, "x.foo.com", 443, true},
    {"*.foo.com", 0, "foo.com", 443, false},
    {"*.foo.com", 0, "x.y.foo.com", 443, true},
    {"*foo.com", 0, "xfoo.com", 443, false}, /* only "*." is special */
    {"*foo.com", 0, "*foo.com", 443, true},

    /* host:port entries. */
    {"foo.com:443", 0, "foo.com", 443, true},
    {"foo.com:443", 0, "x.foo.com", 443, true},
    {"foo.com:443", 0, "foo.com", 80, false},
    {".foo.com:8443", 0, "x.foo.com", 8443, true},
    {"*.foo.com:8443", 0, "x.foo.com", 443, false},
    {"foo.com:", 0, "foo.com", 1234, true},     /* Go: an empty port is no port */
    {"foo.com:0443", 0, "foo.com", 443, false}, /* Go compares port strings */
    {"foo.com:https", 0, "foo.com", 443, false},
    {"foo.com:65536", 0, "foo.com", 0, false},
    {"foo.com:80:90", 0, "foo.com", 80, false}, /* not host:port, never matches */
    {"*:443", 0, "foo.com", 443, false},        /* "*" is special only alone */

    /* IP literal entries match IP literal hosts, with or without a port. */
    {"10.1.2.3", 0, "10.1.2.3", 443, true},
    {"10.1.2.3", 0, "10.1.2.4", 443, false},
    {"10.1.2.3:8080", 0, "10.1.2.3", 8080, true},
    {"10.1.2.3:8080", 0, "10.1.2.3", 443, false},
    {"10.1.2.3", 0, "::ffff:10.1.2.3", 443, true}, /* IP.Equal unmaps */
    {"::ffff:10.1.2.3", 0, "10.1.2.3", 443, true},
    {"10.1.2.3", 0, "010.1.2.3", 443, false}, /* not an IP to Go; a name */
    {"2001:DB8::1", 0, "2001:db8:0:0:0:0:0:1", 443, true},
    {"::1:80", 0, "::1:80", 443, true}, /* a bare IPv6 address, not ::1 port 80 */

    /* CIDR entries match only IP literal hosts; a name never does. */
    {"10.0.0.0/8", 0, "10.200.3.4", 443, true},
    {"10.0.0.0/8", 0, "11.0.0.1", 443, false},
    {"10.0.0.0/8", 0, "10.example.com", 443, false},
    {"10.0.0.0/8", 0, "10.0.0.1.nip.io", 443, false},
    {"10.1.2.3/8", 0, "10.99.0.1", 443, true},   /* host bits are masked off */
    {"10.0.0.0/008", 0, "10.99.0.1", 443, true}, /* Go's dtoi takes leading zeros */
    {"10.0.0.0/33", 0, "10.0.0.1", 443, false},  /* not a CIDR: a dead name */
    {"10.0.0.0/8:443", 0, "10.0.0.1", 443, false},
    {"10.0.0.0/8", 0, "::ffff:10.0.0.1", 443, true},
    {"0.0.0.0/0", 0, "203.0.113.9", 443, true},
    {"0.0.0.0/0", 0, "2001:db8::1", 443, false},
    {"fd00::/8", 0, "fd12:3456::1", 443, true},
    {"fd00::/8", 0, "fe80::1", 443, false},
    {"::/0", 0, "2001:db8::1", 443, true},
    {"::/0", 0, "203.0.113.9", 443, false}, /* IPNet.Contains: IPv4 is not in ::/0 */
    {"::ffff:0:0/96", 0, "203.0.113.9", 443, true},
    {"::ffff:10.0.0.0/104", 0, "10.1.2.3", 443, true},
    {"::ffff:10.0.0.0/104", 0, "11.1.2.3", 443, false},
    {"10.0.0.0/8", 0, "10.0.0.1", 1, true}, /* CIDRs have no port */

    /* Domain entries never match IP literals (x/net v0.36). */
    {"2.3.4", 0, "1.2.3.4", 443, false},
    {"2.3.4", 0, "x.2.3.4", 443, true},
    {"nip.io", 0, "1.2.3.4.nip.io", 443, true},

    /* [v6]:port entries. */
    {"[2001:db8::1]:443", 0, "2001:db8::1", 443, true},
    {"[2001:db8::1]:443", 0, "2001:db8::1", 80, false},
    {"[2001:db8::1]:443", 0, "2001:db8::2", 443, false},
    {"[::ffff:10.0.0.1]:443", 0, "10.0.0.1", 443, true},
    {"[2001:db8::1]", 0, "2001:db8::1", 443, false}, /* Go: no port, so a dead name */
    {"2001:db8::1", 0, "2001:db8::1", 443, true},

    /* Zones on the host are ignored for IP entries. */
    {"fe80::1", 0, "fe80::1%eth0", 443, true},
    {"fe80::/10", 0, "fe80::1%eth0", 443, true},
    {"fe80::1", 0, "fe80::1%", 443, false}, /* an empty zone makes no address */

    /* "*" alone. */
    {"*", 0, "anything.example", 1, true},
    {"*", 0, "203.0.113.9", 1, true},
    {"*", 0, "", 1, true},
    {"foo.com, * ,bar.com", 0, "baz.org", 443, true},

    /* Case-insensitivity, both sides. */
    {"FOO.Com", 0, "www.foo.COM", 443, true},
    {"foo.com", 0, "FOO.COM", 443, true},
    {"*.Wildcard.IO", 0, "A.WILDCARD.io", 443, true},
    {"2001:DB8::/32", 0, "2001:db8:ffff::1", 443, true},
    {"2001:db8::/32", 0, "2001:DB8:FFFF::1", 443, true},

    /* A trailing dot on the host (or the entry) is insignificant. */
    {"foo.com", 0, "foo.com.", 443, true},
    {"foo.com", 0, "www.foo.com.", 443, true},
    {".foo.com", 0, "foo.com.", 443, false},
    {"foo.com.", 0, "foo.com", 443, true},
    {"foo.com.", 0, "x.foo.com", 443, true},
    {"foo.com", 0, "foo.com..", 443, false},

    /* IDNs compare as punycode (UTS #46 non-transitional, like Go's idna.Lookup). */
    {"bücher.example", 0, "xn--bcher-kva.example", 443, true},
    {"bücher.example", 0, "www.xn--bcher-kva.example", 443, true},
    {"BÜCHER.Example", 0, "xn--bcher-kva.example", 443, true},
    {".bücher.example", 0, "xn--bcher-kva.example", 443, false},
    {"*.bücher.example:8443", 0, "a.xn--bcher-kva.example", 8443, true},
    {"xn--bcher-kva.example", 0, "bücher.example", 443, true},
    {"xn--bcher-kva.example", 0, "www.BÜCHER.example", 443, true},
    {"straße.de", 0, "xn--strae-oqa.de", 443, true},
    {"straße.de", 0, "strasse.de", 443, false},
    {"bücher.example", 0, "bucher.example", 443, false},
    {"a_b.bücher", 0, "a_b.xn--bcher-kva", 443, false}, /* STD3: Go keeps it raw */
    {"a_b.bücher", 0, "a_b.bücher", 443, true},

    /* Loopback: always matched with LOOPBACK_DIRECT, otherwise only if listed. */
    {"", LD, "localhost", 443, true},
    {"", LD, "LOCALHOST", 443, true},
    {"", LD, "localhost.", 443, true},
    {"", LD, "127.0.0.1", 443, true},
    {"", LD, "127.1.2.3", 443, true},
    {"", LD, "127.255.255.255", 443, true},
    {"", LD, "::1", 443, true},
    {"", LD, "0:0:0:0:0:0:0:1", 443, true},
    {"", LD, "::ffff:127.0.0.1", 443, true},
    {"", LD, "::1%lo", 443, true},
    {"", LD, "１２７．０．０．１", 443, true}, /* canonicalAddr's IDN mapping runs first */
    {"", LD, "foo.localhost", 443, false},
    {"", LD, "localhost.localdomain", 443, false},
    {"", LD, "128.0.0.1", 443, false},
    {"", LD, "::2", 443, false},
    {"", LD, "0.0.0.0", 443, false},
    {"", 0, "localhost", 443, false},
    {"", 0, "127.0.0.1", 443, false},
    {"", 0, "127.1.2.3", 443, false},
    {"", 0, "::1", 443, false},
    {"localhost", 0, "localhost", 443, true},
    {"localhost", 0, "127.0.0.1", 443, false},
    {"127.0.0.1", 0, "127.0.0.1", 443, true},
    {"127.0.0.0/8", 0, "127.1.2.3", 443, true},
    {"::1", 0, "::1", 443, true},
    {"::1", 0, "127.0.0.1", 443, false},

    /* Trimming and empty entries. */
    {" foo.com ,\tbar.com\n", 0, "bar.com", 443, true},
    {" foo.com ,\tbar.com\n", 0, "foo.com", 443, true},
    {"\u00a0foo.com\u3000", 0, "foo.com", 443, true}, /* Unicode white space */
    {",,foo.com,,", 0, "foo.com", 443, true},
    {"   ", 0, "foo.com", 443, false},
    {"foo.com", 0, "", 443, false},
    {"foo.com", 0, " foo.com ", 443, true}, /* useProxy trims the host too */
};

static void test_hostlist_match_table(void **state) {
  size_t failures = 0;

  (void)state;
  for (size_t i = 0; i < sizeof(match_cases) / sizeof(match_cases[0]); i++) {
    const struct match_case *c = &match_cases[i];
    struct rp_hostlist *list = NULL;
    char *err = NULL;
    int rc = rp_hostlist_parse(c->list, c->flags, &list, &err);
    bool got;

    if (rc != 0) {
      print_error("case %zu: parse \"%s\" failed: %d %s\n", i, c->list, rc, err ? err : "");
      failures++;
      free(err);
      continue;
    }
    assert_null(err);
    got = rp_hostlist_match(list, c->host, c->port);
    if (got != c->want) {
      print_error("case %zu: list \"%s\" flags %u host \"%s\" port %u: got %d, want %d\n", i,
                  c->list, c->flags, c->host, c->port, got, c->want);
      failures++;
    }
    rp_hostlist_destroy(list);
  }
  assert_int_equal(failures, 0);
}

struct parse_case {
  const char *spec;
  int want_rc;
  const char *in_err; /* a substring of *err, or NULL */
};

static const struct parse_case hostlist_parse_cases[] = {
    {"", 0, NULL},
    {",,,", 0, NULL},
    {GO_NO_PROXY, 0, NULL},
    /* TestInvalidNoProxy: Go ignores ":1" (and then proxies example.com);
     * a host-less entry is a configuration error here. */
    {":1", RP_EPARSE, "\":1\""},
    {":", RP_EPARSE, "\":\""},
    {"foo.com, :443 ,bar.com", RP_EPARSE, "\":443\""},
    {"[]:80", RP_EPARSE, "\"[]:80\""},
    {".", RP_EPARSE, "\".\""},
    {"*.", RP_EPARSE, "\"*.\""},
    {"..", RP_EPARSE, "\"..\""},
    /* Entries Go keeps although they can never match are accepted. */
    {"[::1]", 0, NULL},
    {"foo.com:http", 0, NULL},
    {"*:443", 0, NULL},
    {"a:b:c", 0, NULL},
    {"10.0.0.0/33", 0, NULL},
    {"[", 0, NULL},
    {"]", 0, NULL},
    {"-bü.com", 0, NULL}, /* IDN conversion fails: kept as written */
};

static void test_hostlist_parse(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof(hostlist_parse_cases) / sizeof(hostlist_parse_cases[0]); i++) {
    const struct parse_case *c = &hostlist_parse_cases[i];
    struct rp_hostlist *list = (struct rp_hostlist *)&list;
    char *err = (char *)&err;
    int rc = rp_hostlist_parse(c->spec, LD, &list, &err);

    if (rc != c->want_rc)
      print_error("case %zu: \"%s\": rc %d, want %d\n", i, c->spec, rc, c->want_rc);
    assert_int_equal(rc, c->want_rc);
    if (rc == 0) {
      assert_non_null(list);
      assert_null(err);
    } else {
      assert_null(list);
      assert_non_null(err);
      if (!strstr(err, c->in_err))
        print_error("case %zu: message \"%s\" lacks %s\n", i, err, c->in_err);
      assert_non_null(strstr(err, c->in_err));
    }
    rp_hostlist_destroy(list);
    free(err);
  }
}

static void test_hostlist_api_edges(void **state) {
  struct rp_hostlist *list = NULL;
  char *err = NULL;

  (void)state;
  assert_int_equal(rp_hostlist_parse(NULL, 0, &list, &err), RP_EINVAL);
  assert_int_equal(rp_hostlist_parse("x", 0, NULL, &err), RP_EINVAL);
  assert_int_equal(rp_hostlist_parse("x", 1u << 7, &list, &err), RP_EINVAL);
  assert_null(list);
  /* err may be NULL when the caller does not want the message. */
  assert_int_equal(rp_hostlist_parse(":1", 0, &list, NULL), RP_EPARSE);
  assert_false(rp_hostlist_match(NULL, "localhost", 80));
  assert_int_equal(rp_hostlist_parse("*", LD, &list, &err), 0);
  assert_false(rp_hostlist_match(list, NULL, 80));
  rp_hostlist_destroy(list);
  rp_hostlist_destroy(NULL);
}

/* A long list and a long host: nothing is copied into fixed buffers. */
static void test_hostlist_names_port(void **state) {
  struct rp_hostlist *l = NULL;
  char *err = NULL;

  (void)state;
  assert_int_equal(
      rp_hostlist_parse("registry.lan:5000,.example.com,10.0.0.0/8,[::1]:8443", 0, &l, &err), 0);
  assert_true(rp_hostlist_names_port(l, 5000));
  assert_true(rp_hostlist_names_port(l, 8443));
  assert_false(rp_hostlist_names_port(l, 443)); /* entries without a port name none */
  assert_false(rp_hostlist_names_port(l, 80));
  assert_false(rp_hostlist_names_port(NULL, 5000));
  rp_hostlist_destroy(l);
}

/* Entries taken apart for the CA's name constraints: the text as written
 * (lower-case, trimmed), the domain form, or the network in 16-byte form. */
struct entry_case {
  const char *text;
  const char *domain; /* NULL for IP and CIDR entries */
  const char *addr;   /* inet_pton text of the masked address */
  unsigned bits;      /* prefix length in the address family */
};

static const struct entry_case entry_cases[] = {
    {"registry-1.docker.io", "registry-1.docker.io", NULL, 0},
    {".pkg.dev", ".pkg.dev", NULL, 0},
    {"*.example.com", ".example.com", NULL, 0},
    {"registry.lan:5000", "registry.lan", NULL, 0},
    {"trailing.dot.", "trailing.dot", NULL, 0},
    {"bücher.example", "xn--bcher-kva.example", NULL, 0},
    {"10.1.2.3", NULL, "10.1.2.3", 32},
    {"10.1.2.3:5000", NULL, "10.1.2.3", 32},
    {"192.168.7.9/16", NULL, "192.168.0.0", 16},
    {"[2001:db8::1]:443", NULL, "2001:db8::1", 128},
    {"2001:db8:a::45/64", NULL, "2001:db8:a::", 64},
};

static void test_hostlist_entries(void **state) {
  struct rp_hostlist *l = NULL;
  struct rp_hostlist_entry e;
  char *err = NULL;
  char spec[512] = "";
  const size_t n = sizeof(entry_cases) / sizeof(entry_cases[0]);

  (void)state;
  for (size_t i = 0; i < n; i++) {
    strcat(spec, i == 0 ? " " : " , ");
    strcat(spec, entry_cases[i].text);
  }
  /* Upper case in the list comes out lower-cased. */
  spec[1] = 'R';
  assert_int_equal(rp_hostlist_parse(spec, 0, &l, &err), 0);
  assert_false(rp_hostlist_has_star(l));
  assert_int_equal(rp_hostlist_count(l), n);
  for (size_t i = 0; i < n; i++) {
    const struct entry_case *c = &entry_cases[i];
    uint8_t want[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    bool v4 = strchr(c->addr != NULL ? c->addr : "", ':') == NULL;
    unsigned ones = 0;

    rp_hostlist_entry(l, i, &e);
    assert_string_equal(e.text, c->text);
    assert_int_equal(e.is_net, c->domain == NULL);
    if (c->domain != NULL) {
      assert_string_equal(e.domain, c->domain);
      continue;
    }
    assert_null(e.domain);
    assert_int_equal(e.is4, v4);
    assert_int_equal(inet_pton(v4 ? AF_INET : AF_INET6, c->addr, v4 ? want + 12 : want), 1);
    assert_memory_equal(e.addr, want, 16);
    for (size_t b = v4 ? 12 : 0; b < 16; b++)
      for (int k = 7; k >= 0; k--)
        ones += (e.mask[b] >> k) & 1;
    assert_int_equal(ones, c->bits);
  }
  rp_hostlist_destroy(l);

  assert_int_equal(rp_hostlist_parse("ghcr.io, *", 0, &l, &err), 0);
  assert_true(rp_hostlist_has_star(l));
  assert_int_equal(rp_hostlist_count(l), 1);
  rp_hostlist_destroy(l);
  assert_false(rp_hostlist_has_star(NULL));
  assert_int_equal(rp_hostlist_count(NULL), 0);
}

static void test_hostlist_long_input(void **state) {
  size_t n = 200000;
  char *spec = malloc(n + 32);
  char *host = malloc(n + 32);
  struct rp_hostlist *list = NULL;
  char *err = NULL;

  (void)state;
  assert_non_null(spec);
  assert_non_null(host);
  memset(spec, 'a', n);
  strcpy(spec + n, ".example,1.2.3.4,::1");
  memset(host, 'b', n);
  strcpy(host + n, ".aaaa.example");
  assert_int_equal(rp_hostlist_parse(spec, 0, &list, &err), 0);
  assert_false(rp_hostlist_match(list, host, 443));
  memset(host, 'a', n);
  strcpy(host + n, ".example");
  assert_true(rp_hostlist_match(list, host, 443));
  /* An over-long "IP" is a name, not an address. */
  memset(host, '1', n);
  strcpy(host + n, ".2.3.4");
  assert_false(rp_hostlist_match(list, host, 443));
  rp_hostlist_destroy(list);
  free(spec);
  free(host);
}

/* ---- ACL ---------------------------------------------------------------- */

static socklen_t make_sa(const char *text, struct sockaddr_storage *ss) {
  memset(ss, 0, sizeof(*ss));
  if (strchr(text, ':')) {
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;

    sin6->sin6_family = AF_INET6;
    assert_int_equal(inet_pton(AF_INET6, text, &sin6->sin6_addr), 1);
    return sizeof(*sin6);
  }
  struct sockaddr_in *sin = (struct sockaddr_in *)ss;

  sin->sin_family = AF_INET;
  assert_int_equal(inet_pton(AF_INET, text, &sin->sin_addr), 1);
  return sizeof(*sin);
}

struct acl_case {
  const char *spec;
  const char *client;
  bool want;
};

#define ACL1 "127.0.0.1,10.0.0.0/8,::1,fd00::/8"

static const struct acl_case acl_cases[] = {
    {ACL1, "127.0.0.1", true},
    {ACL1, "::ffff:127.0.0.1", true}, /* unmapped first */
    {ACL1, "127.0.0.2", false},
    {ACL1, "10.255.0.1", true},
    {ACL1, "::ffff:10.1.1.1", true},
    {ACL1, "11.0.0.1", false},
    {ACL1, "::1", true},
    {ACL1, "::2", false},
    {ACL1, "fd12:3456::1", true},
    {ACL1, "fe80::1", false},
    {"", "127.0.0.1", false},
    {"", "::1", false},
    {" 192.0.2.1 , 2001:DB8::/32 ", "192.0.2.1", true},
    {" 192.0.2.1 , 2001:DB8::/32 ", "2001:db8:1::7", true},
    {"::ffff:192.0.2.1", "192.0.2.1", true},
    {"::ffff:192.0.2.0/120", "192.0.2.77", true},
    {"::ffff:192.0.2.0/120", "192.0.3.77", false},
    {"::/0", "2001:db8::1", true},
    {"::/0", "192.0.2.1", false},
    {"::/0", "::ffff:192.0.2.1", false},
    {"0.0.0.0/0", "192.0.2.1", true},
    {"0.0.0.0/0", "::ffff:192.0.2.1", true},
    {"0.0.0.0/0", "2001:db8::1", false},
    {"192.0.2.0/24,,", "192.0.2.200", true},
};

static void test_acl_match_table(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof(acl_cases) / sizeof(acl_cases[0]); i++) {
    const struct acl_case *c = &acl_cases[i];
    struct sockaddr_storage ss;
    struct rp_acl *acl = NULL;
    char *err = NULL;

    make_sa(c->client, &ss);
    assert_int_equal(rp_acl_parse(c->spec, &acl, &err), 0);
    assert_null(err);
    if (rp_acl_match(acl, (struct sockaddr *)&ss) != c->want)
      print_error("case %zu: acl \"%s\" client %s: want %d\n", i, c->spec, c->client, c->want);
    assert_int_equal(rp_acl_match(acl, (struct sockaddr *)&ss), c->want);
    rp_acl_destroy(acl);
  }
}

static const struct parse_case acl_parse_cases[] = {
    {"localhost", RP_EPARSE, "\"localhost\""},
    {"127.0.0.1,example.com", RP_EPARSE, "\"example.com\""},
    {"10.0.0.0/33", RP_EPARSE, "\"10.0.0.0/33\""},
    {"fe80::/129", RP_EPARSE, "\"fe80::/129\""},
    {"1.2.3", RP_EPARSE, "\"1.2.3\""},
    {"01.2.3.4", RP_EPARSE, "\"01.2.3.4\""},
    {"1.2.3.4/", RP_EPARSE, "\"1.2.3.4/\""},
    {"1.2.3.4/+8", RP_EPARSE, "\"1.2.3.4/+8\""},
    {"1.2.3.4/8/8", RP_EPARSE, "\"1.2.3.4/8/8\""},
    {"::1%lo", RP_EPARSE, "\"::1%lo\""},
    {"[::1]", RP_EPARSE, "\"[::1]\""},
    {"10.0.0.1:80", RP_EPARSE, "\"10.0.0.1:80\""},
    {"*", RP_EPARSE, "\"*\""},
    /* Control bytes and quotes are escaped in the message. */
    {"10.0.0.1,\x01zz\"", RP_EPARSE, "\"\\x01zz\\x22\""},
    {"", 0, NULL},
    {" , ", 0, NULL},
    {"0.0.0.0/0,::/0", 0, NULL},
};

static void test_acl_parse(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof(acl_parse_cases) / sizeof(acl_parse_cases[0]); i++) {
    const struct parse_case *c = &acl_parse_cases[i];
    struct rp_acl *acl = NULL;
    char *err = NULL;
    int rc = rp_acl_parse(c->spec, &acl, &err);

    if (rc != c->want_rc)
      print_error("case %zu: \"%s\": rc %d, want %d\n", i, c->spec, rc, c->want_rc);
    assert_int_equal(rc, c->want_rc);
    if (rc == 0) {
      assert_non_null(acl);
      assert_null(err);
    } else {
      assert_null(acl);
      assert_non_null(err);
      assert_non_null(strstr(err, c->in_err));
    }
    rp_acl_destroy(acl);
    free(err);
  }
}

static void test_acl_edges(void **state) {
  struct sockaddr_un sun;
  struct rp_acl *acl = NULL;
  char *err = NULL;

  (void)state;
  memset(&sun, 0, sizeof(sun));
  sun.sun_family = AF_UNIX;
  assert_int_equal(rp_acl_parse("0.0.0.0/0,::/0", &acl, &err), 0);
  assert_false(rp_acl_match(acl, (struct sockaddr *)&sun));
  assert_false(rp_acl_match(acl, NULL));
  assert_false(rp_acl_match(NULL, (struct sockaddr *)&sun));
  rp_acl_destroy(acl);
  rp_acl_destroy(NULL);
  assert_int_equal(rp_acl_parse(NULL, &acl, &err), RP_EINVAL);
}

/* ---- loopback ----------------------------------------------------------- */

static void test_sockaddr_is_loopback(void **state) {
  static const struct {
    const char *addr;
    bool want;
  } cases[] = {
      {"127.0.0.1", true},
      {"127.255.255.254", true},
      {"127.1.2.3", true},
      {"::1", true},
      {"::ffff:127.0.0.1", true},
      {"::ffff:127.9.9.9", true},
      {"128.0.0.1", false},
      {"126.255.255.255", false},
      {"0.0.0.0", false},
      {"::", false},
      {"::2", false},
      {"::ffff:128.0.0.1", false},
      {"::127.0.0.1", false},
      {"fe80::1", false},
  };
  struct sockaddr_un sun;

  (void)state;
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    struct sockaddr_storage ss;

    make_sa(cases[i].addr, &ss);
    if (rp_sockaddr_is_loopback((struct sockaddr *)&ss) != cases[i].want)
      print_error("case %zu: %s: want %d\n", i, cases[i].addr, cases[i].want);
    assert_int_equal(rp_sockaddr_is_loopback((struct sockaddr *)&ss), cases[i].want);
  }
  memset(&sun, 0, sizeof(sun));
  sun.sun_family = AF_UNIX;
  assert_false(rp_sockaddr_is_loopback((struct sockaddr *)&sun));
  assert_false(rp_sockaddr_is_loopback(NULL));
}

/* ---- port sets ---------------------------------------------------------- */

static void test_portset(void **state) {
  struct rp_portset *set = NULL;
  char *err = NULL;

  (void)state;
  assert_int_equal(rp_portset_parse("443,8443,5000-5010", &set, &err), 0);
  assert_null(err);
  assert_true(rp_portset_has(set, 443));
  assert_true(rp_portset_has(set, 8443));
  assert_true(rp_portset_has(set, 5000));
  assert_true(rp_portset_has(set, 5005));
  assert_true(rp_portset_has(set, 5010));
  assert_false(rp_portset_has(set, 80));
  assert_false(rp_portset_has(set, 4999));
  assert_false(rp_portset_has(set, 5011));
  assert_false(rp_portset_has(set, 0));
  assert_false(rp_portset_has(set, 65535));
  rp_portset_destroy(set);

  assert_int_equal(rp_portset_parse(" 1 - 65535 ", &set, &err), 0);
  assert_true(rp_portset_has(set, 1));
  assert_true(rp_portset_has(set, 65535));
  assert_false(rp_portset_has(set, 0));
  rp_portset_destroy(set);

  assert_int_equal(rp_portset_parse("", &set, &err), 0);
  assert_false(rp_portset_has(set, 443));
  rp_portset_destroy(set);

  assert_int_equal(rp_portset_parse("443,,65535,", &set, &err), 0);
  assert_true(rp_portset_has(set, 65535));
  rp_portset_destroy(set);

  assert_false(rp_portset_has(NULL, 443));
  rp_portset_destroy(NULL);
}

static const struct parse_case portset_parse_cases[] = {
    {"0", RP_EPARSE, "\"0\""},
    {"65536", RP_EPARSE, "\"65536\""},
    {"99999999999999999999", RP_EPARSE, "\"99999999999999999999\""},
    {"https", RP_EPARSE, "\"https\""},
    {"443,80x", RP_EPARSE, "\"80x\""},
    {"5010-5000", RP_EPARSE, "\"5010-5000\""},
    {"-5", RP_EPARSE, "\"-5\""},
    {"5-", RP_EPARSE, "\"5-\""},
    {"1-2-3", RP_EPARSE, "\"1-2-3\""},
    {"0-10", RP_EPARSE, "\"0-10\""},
    {"44 3", RP_EPARSE, "\"44 3\""},
    {"+443", RP_EPARSE, "\"+443\""},
};

static void test_portset_parse_errors(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof(portset_parse_cases) / sizeof(portset_parse_cases[0]); i++) {
    const struct parse_case *c = &portset_parse_cases[i];
    struct rp_portset *set = NULL;
    char *err = NULL;
    int rc = rp_portset_parse(c->spec, &set, &err);

    if (rc != c->want_rc)
      print_error("case %zu: \"%s\": rc %d, want %d\n", i, c->spec, rc, c->want_rc);
    assert_int_equal(rc, c->want_rc);
    assert_null(set);
    assert_non_null(err);
    assert_non_null(strstr(err, c->in_err));
    free(err);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_hostlist_match_table),
      cmocka_unit_test(test_hostlist_parse),
      cmocka_unit_test(test_hostlist_api_edges),
      cmocka_unit_test(test_hostlist_long_input),
      cmocka_unit_test(test_hostlist_names_port),
      cmocka_unit_test(test_hostlist_entries),
      cmocka_unit_test(test_acl_match_table),
      cmocka_unit_test(test_acl_parse),
      cmocka_unit_test(test_acl_edges),
      cmocka_unit_test(test_sockaddr_is_loopback),
      cmocka_unit_test(test_portset),
      cmocka_unit_test(test_portset_parse_errors),
  };

  return cmocka_run_group_tests(tests, NULL, NULL);
}
