/* Registry paths, identities, image references and the Accept key (contract §3,
 * §4): tables of valid and hostile request paths, mirror-mode ?ns=, registry
 * spellings, image references as docker normalises them, and the Accept
 * headers real clients send (dockerd 20.10, containerd 1.6, skopeo 1.9). */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "regproxy/error.h"
#include "regproxy/registry.h"

/* ---- paths ---------------------------------------------------------------- */

#define H64  "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define H63  "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde"
#define H64U "0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef"
#define S256 "sha256:" H64
#define S512 "sha512:" H64 H64
#define T16  "abcdefghijklmnop"
#define T128 T16 T16 T16 T16 T16 T16 T16 T16

#define OTHER    RP_REG_OTHER
#define BASE     RP_REG_BASE
#define MANIFEST RP_REG_MANIFEST
#define BLOB     RP_REG_BLOB
#define NOT_V2   RP_REG_NOT_V2

struct path_case {
  const char *path;
  enum rp_reg_kind kind;
  const char *name; /* NULL: "" */
  const char *ref;  /* NULL: "" */
  bool digest;
  const char *ns; /* NULL: "" */
};

static const struct path_case path_cases[] = {
    /* The base endpoint. */
    {"/v2/", BASE, NULL, NULL, false, NULL},
    {"/v2", BASE, NULL, NULL, false, NULL},
    {"/v2/?ns=docker.io", BASE, NULL, NULL, false, "docker.io"},
    {"/v2?ns=ghcr.io", BASE, NULL, NULL, false, "ghcr.io"},
    {"/v2/?", BASE, NULL, NULL, false, NULL},

    /* Not the registry API at all. */
    {"", NOT_V2, NULL, NULL, false, NULL},
    {"/", NOT_V2, NULL, NULL, false, NULL},
    {"/v1/", NOT_V2, NULL, NULL, false, NULL},
    {"/v2x", NOT_V2, NULL, NULL, false, NULL},
    {"/V2/", NOT_V2, NULL, NULL, false, NULL},
    {"v2/", NOT_V2, NULL, NULL, false, NULL},
    {"//v2/", NOT_V2, NULL, NULL, false, NULL},
    {"/./v2/", NOT_V2, NULL, NULL, false, NULL},
    {"/v20/library/alpine/manifests/latest", NOT_V2, NULL, NULL, false, NULL},
    {"/v2x?ns=ghcr.io", NOT_V2, NULL, NULL, false, NULL},
    {"/token?scope=repository:library/alpine:pull&service=registry.docker.io", NOT_V2, NULL, NULL,
     false, NULL},
    {"http://registry-1.docker.io/v2/", NOT_V2, NULL, NULL, false, NULL},
    {"*", NOT_V2, NULL, NULL, false, NULL},

    /* Manifests by tag. */
    {"/v2/library/alpine/manifests/latest", MANIFEST, "library/alpine", "latest", false, NULL},
    {"/v2/library/alpine/manifests/3.18", MANIFEST, "library/alpine", "3.18", false, NULL},
    {"/v2/a/b/c/manifests/latest", MANIFEST, "a/b/c", "latest", false, NULL},
    {"/v2/a/manifests/A", MANIFEST, "a", "A", false, NULL},
    {"/v2/a/manifests/_x", MANIFEST, "a", "_x", false, NULL},
    {"/v2/a/manifests/v1.2.3-rc_1", MANIFEST, "a", "v1.2.3-rc_1", false, NULL},
    {"/v2/a/manifests/" T128, MANIFEST, "a", T128, false, NULL},
    {"/v2/0/manifests/0", MANIFEST, "0", "0", false, NULL},
    /* Every separator the name grammar has. */
    {"/v2/a.b_c__d-e---f/g0/manifests/t", MANIFEST, "a.b_c__d-e---f/g0", "t", false, NULL},
    /* Split from the end: a repository may have a "manifests" component. */
    {"/v2/foo/manifests/bar/manifests/latest", MANIFEST, "foo/manifests/bar", "latest", false,
     NULL},
    {"/v2/manifests/manifests/latest", MANIFEST, "manifests", "latest", false, NULL},
    {"/v2/blobs/manifests/x", MANIFEST, "blobs", "x", false, NULL},

    /* Manifests by digest: sha256/sha512 are cacheable, other well-formed
     * digests are manifests that are not. */
    {"/v2/library/alpine/manifests/" S256, MANIFEST, "library/alpine", S256, true, NULL},
    {"/v2/library/alpine/manifests/" S512, MANIFEST, "library/alpine", S512, true, NULL},
    {"/v2/a/manifests/sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564", MANIFEST, "a",
     "sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564", false, NULL},
    {"/v2/a/manifests/multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8", MANIFEST,
     "a", "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8", false, NULL},
    {"/v2/a/manifests/sha384:" H64 H63 "0", MANIFEST, "a", "sha384:" H64 H63 "0", false, NULL},

    /* Blobs: cacheable digests only. */
    {"/v2/library/alpine/blobs/" S256, BLOB, "library/alpine", S256, true, NULL},
    {"/v2/library/alpine/blobs/" S512, BLOB, "library/alpine", S512, true, NULL},
    {"/v2/blobs/blobs/" S256, BLOB, "blobs", S256, true, NULL},
    {"/v2/x/blobs/sha384:" H64 H63 "0", OTHER, NULL, NULL, false, NULL},
    {"/v2/x/blobs/sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564", OTHER, NULL, NULL,
     false, NULL},
    {"/v2/x/blobs/latest", OTHER, NULL, NULL, false, NULL},

    /* Bad digests of the registered algorithms. */
    {"/v2/library/alpine/blobs/sha256:" H63, OTHER, NULL, NULL, false, NULL},
    {"/v2/library/alpine/manifests/sha256:" H63, OTHER, NULL, NULL, false, NULL},
    {"/v2/library/alpine/blobs/sha256:" H64 "0", OTHER, NULL, NULL, false, NULL},
    {"/v2/library/alpine/blobs/sha256:" H64U, OTHER, NULL, NULL, false, NULL},
    {"/v2/library/alpine/manifests/sha256:" H64U, OTHER, NULL, NULL, false, NULL},
    {"/v2/library/alpine/blobs/SHA256:" H64, OTHER, NULL, NULL, false, NULL},
    {"/v2/library/alpine/manifests/SHA256:" H64, OTHER, NULL, NULL, false, NULL},
    {"/v2/library/alpine/blobs/sha512:" H64, OTHER, NULL, NULL, false, NULL},
    {"/v2/x/manifests/sha256:", OTHER, NULL, NULL, false, NULL},
    {"/v2/x/manifests/:" H64, OTHER, NULL, NULL, false, NULL},
    {"/v2/x/manifests/sha256-:" H64, OTHER, NULL, NULL, false, NULL},
    {"/v2/x/manifests/sha256:" H64 "/", OTHER, NULL, NULL, false, NULL},

    /* Bad names and tags. */
    {"/v2/Library/alpine/manifests/latest", OTHER, NULL, NULL, false, NULL},
    {"/v2/library/Alpine/blobs/" S256, OTHER, NULL, NULL, false, NULL},
    {"/v2/a/manifests/" T128 "x", OTHER, NULL, NULL, false, NULL},
    {"/v2/a/manifests/.latest", OTHER, NULL, NULL, false, NULL},
    {"/v2/a/manifests/-latest", OTHER, NULL, NULL, false, NULL},
    {"/v2/a/manifests/lat%65st", OTHER, NULL, NULL, false, NULL},
    {"/v2/a/manifests/latest#frag", OTHER, NULL, NULL, false, NULL},
    {"/v2/a/manifests/latest/", OTHER, NULL, NULL, false, NULL},
    {"/v2/a/manifests/", OTHER, NULL, NULL, false, NULL},
    {"/v2/a/manifests//latest", OTHER, NULL, NULL, false, NULL},
    {"/v2/a-/manifests/x", OTHER, NULL, NULL, false, NULL},
    {"/v2/-a/manifests/x", OTHER, NULL, NULL, false, NULL},
    {"/v2/a.-b/manifests/x", OTHER, NULL, NULL, false, NULL},
    {"/v2/a___b/manifests/x", OTHER, NULL, NULL, false, NULL},
    {"/v2/a..b/manifests/x", OTHER, NULL, NULL, false, NULL},
    {"/v2/a_/manifests/x", OTHER, NULL, NULL, false, NULL},
    {"/v2/a/manifests", OTHER, NULL, NULL, false, NULL},
    {"/v2/manifests/latest", OTHER, NULL, NULL, false, NULL},
    {"/v2/library%2Falpine/manifests/latest", OTHER, NULL, NULL, false, NULL},
    {"/v2/library/alpine", OTHER, NULL, NULL, false, NULL},
    {"/v2/library/alpine/", OTHER, NULL, NULL, false, NULL},
    {"/v2/library/alpine/Manifests/latest", OTHER, NULL, NULL, false, NULL},

    /* Hostile paths never yield a name. */
    {"/v2/../etc/passwd/blobs/" S256, OTHER, NULL, NULL, false, NULL},
    {"/v2/library/../alpine/manifests/latest", OTHER, NULL, NULL, false, NULL},
    {"/v2/./alpine/manifests/latest", OTHER, NULL, NULL, false, NULL},
    {"/v2//library/alpine/manifests/latest", OTHER, NULL, NULL, false, NULL},
    {"/v2/library//alpine/manifests/latest", OTHER, NULL, NULL, false, NULL},
    {"/v2/library/alpine/manifests/..", OTHER, NULL, NULL, false, NULL},
    {"/v2/library/alpine/blobs/../../../x", OTHER, NULL, NULL, false, NULL},
    {"/v2/%2e%2e/x/manifests/latest", OTHER, NULL, NULL, false, NULL},
    {"/v2/library\\alpine/manifests/latest", OTHER, NULL, NULL, false, NULL},

    /* Everything else under /v2/ passes. */
    {"/v2/_catalog", OTHER, NULL, NULL, false, NULL},
    {"/v2/_catalog?n=100&last=a", OTHER, NULL, NULL, false, NULL},
    {"/v2/library/alpine/tags/list", OTHER, NULL, NULL, false, NULL},
    {"/v2/library/alpine/tags/list?n=10", OTHER, NULL, NULL, false, NULL},
    {"/v2/library/alpine/tags/list?ns=ghcr.io", OTHER, NULL, NULL, false, "ghcr.io"},
    {"/v2/library/alpine/blobs/uploads/", OTHER, NULL, NULL, false, NULL},
    {"/v2/library/alpine/blobs/uploads/3a4c5a1e-0c8f-4f0f-9b8e-0a2f6f1c7d11", OTHER, NULL, NULL,
     false, NULL},
    {"/v2/library/alpine/blobs/uploads/?mount=" S256 "&from=library/busybox", OTHER, NULL, NULL,
     false, NULL},
    {"/v2/library/alpine/referrers/" S256, OTHER, NULL, NULL, false, NULL},
    {"/v2/library/alpine/referrers/" S256 "?artifactType=application/vnd.example", OTHER, NULL,
     NULL, false, NULL},

    /* Mirror mode: ns= is decoded, validated and made canonical. */
    {"/v2/library/alpine/manifests/3.18?ns=docker.io", MANIFEST, "library/alpine", "3.18", false,
     "docker.io"},
    {"/v2/library/alpine/manifests/3.18?ns=index.docker.io", MANIFEST, "library/alpine", "3.18",
     false, "docker.io"},
    {"/v2/library/alpine/manifests/3.18?ns=registry-1.docker.io:443", MANIFEST, "library/alpine",
     "3.18", false, "docker.io"},
    {"/v2/library/alpine/manifests/3.18?ns=Docker.IO.", MANIFEST, "library/alpine", "3.18", false,
     "docker.io"},
    {"/v2/owner/app/manifests/v1?ns=ghcr.io", MANIFEST, "owner/app", "v1", false, "ghcr.io"},
    {"/v2/owner/app/blobs/" S256 "?ns=ghcr.io", BLOB, "owner/app", S256, true, "ghcr.io"},
    {"/v2/x/manifests/t?ns=ghcr.io%3A443", MANIFEST, "x", "t", false, "ghcr.io"},
    {"/v2/x/manifests/t?ns=localhost:5000", MANIFEST, "x", "t", false, "localhost:5000"},
    {"/v2/x/manifests/t?ns=10.0.0.1:5000", MANIFEST, "x", "t", false, "10.0.0.1:5000"},
    {"/v2/x/manifests/t?ns=%5B%3A%3A1%5D%3A5000", MANIFEST, "x", "t", false, "[::1]:5000"},
    {"/v2/x/manifests/t?ns=%5B2001:DB8::1%5D", MANIFEST, "x", "t", false, "[2001:db8::1]"},
    {"/v2/x/manifests/t?ns=%67hcr.io", MANIFEST, "x", "t", false, "ghcr.io"},
    {"/v2/x/manifests/t?n=10&ns=quay.io&flag", MANIFEST, "x", "t", false, "quay.io"},
    {"/v2/x/manifests/t?foo=bar", MANIFEST, "x", "t", false, NULL},
    {"/v2/x/manifests/t?", MANIFEST, "x", "t", false, NULL},
    {"/v2/x/manifests/t?&&", MANIFEST, "x", "t", false, NULL},
    {"/v2/x/manifests/t?nsx=ghcr.io", MANIFEST, "x", "t", false, NULL},
    {"/v2/x/manifests/t?xns=ghcr.io", MANIFEST, "x", "t", false, NULL},

    /* A malformed query makes any path OTHER, without ns. */
    {"/v2/library/alpine/manifests/3.18?ns=bad host", OTHER, NULL, NULL, false, NULL},
    {"/v2/library/alpine/manifests/3.18?ns=bad%20host", OTHER, NULL, NULL, false, NULL},
    {"/v2/x/manifests/t?ns=", OTHER, NULL, NULL, false, NULL},
    {"/v2/x/manifests/t?ns", OTHER, NULL, NULL, false, NULL},
    {"/v2/x/manifests/t?ns=ghcr.io&ns=quay.io", OTHER, NULL, NULL, false, NULL},
    {"/v2/x/manifests/t?ns=ghcr.io&ns=ghcr.io", OTHER, NULL, NULL, false, NULL},
    {"/v2/x/manifests/t?ns=ghcr.io:0", OTHER, NULL, NULL, false, NULL},
    {"/v2/x/manifests/t?ns=ghcr.io:65536", OTHER, NULL, NULL, false, NULL},
    {"/v2/x/manifests/t?ns=ghcr.io:", OTHER, NULL, NULL, false, NULL},
    {"/v2/x/manifests/t?ns=ghcr.io:http", OTHER, NULL, NULL, false, NULL},
    {"/v2/x/manifests/t?ns=-bad.io", OTHER, NULL, NULL, false, NULL},
    {"/v2/x/manifests/t?ns=bad-.io", OTHER, NULL, NULL, false, NULL},
    {"/v2/x/manifests/t?ns=a..b", OTHER, NULL, NULL, false, NULL},
    {"/v2/x/manifests/t?ns=.", OTHER, NULL, NULL, false, NULL},
    {"/v2/x/manifests/t?ns=ghcr.io..", OTHER, NULL, NULL, false, NULL},
    {"/v2/x/manifests/t?ns=under_score.io", OTHER, NULL, NULL, false, NULL},
    {"/v2/x/manifests/t?ns=ghcr.io/evil", OTHER, NULL, NULL, false, NULL},
    {"/v2/x/manifests/t?ns=user@ghcr.io", OTHER, NULL, NULL, false, NULL},
    {"/v2/x/manifests/t?ns=::1", OTHER, NULL, NULL, false, NULL},
    {"/v2/x/manifests/t?ns=%5Bnot-v6%5D", OTHER, NULL, NULL, false, NULL},
    {"/v2/x/manifests/t?ns=%5B::1", OTHER, NULL, NULL, false, NULL},
    {"/v2/x/manifests/t?ns=%zz", OTHER, NULL, NULL, false, NULL},
    {"/v2/x/manifests/t?ns=ghcr.io%", OTHER, NULL, NULL, false, NULL},
    {"/v2/x/manifests/t?ns=ghcr.io%4", OTHER, NULL, NULL, false, NULL},
    {"/v2/x/manifests/t?ns=ghcr.io%00", OTHER, NULL, NULL, false, NULL},
    {"/v2/x/manifests/t?x=%4", OTHER, NULL, NULL, false, NULL},
    {"/v2/x/manifests/t?x=<script>", OTHER, NULL, NULL, false, NULL},
    {"/v2/x/manifests/t?x=\xc3\xa9", OTHER, NULL, NULL, false, NULL},
    {"/v2/?ns=bad%20host", OTHER, NULL, NULL, false, NULL},
};

static void check_path(const char *path, size_t len, const struct path_case *c) {
  struct rp_reg_path p;

  memset(&p, 0x5a, sizeof p); /* the parser must set every field */
  rp_reg_path_parse(path, len, &p);
  if (p.kind != c->kind || strcmp(p.name, c->name ? c->name : "") != 0 ||
      strcmp(p.ref, c->ref ? c->ref : "") != 0 || p.ref_is_digest != c->digest ||
      strcmp(p.ns, c->ns ? c->ns : "") != 0) {
    print_error("path %s: kind %d name '%s' ref '%s' digest %d ns '%s'\n", c->path, (int)p.kind,
                p.name, p.ref, (int)p.ref_is_digest, p.ns);
    fail();
  }
}

static void test_path_table(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof path_cases / sizeof path_cases[0]; i++)
    check_path(path_cases[i].path, strlen(path_cases[i].path), &path_cases[i]);
}

/* Lengths are honoured: NULs inside, and bytes past len never read. */
static void test_path_lengths(void **state) {
  static const struct path_case other = {"(nul)", OTHER, NULL, NULL, false, NULL};
  static const struct path_case not_v2 = {"(nul)", NOT_V2, NULL, NULL, false, NULL};
  static const struct path_case base = {"(prefix)", BASE, NULL, NULL, false, NULL};
  static const struct path_case alpine = {"(prefix)", MANIFEST, "library/alpine",
                                          "latest",   false,    NULL};
  static const char nul_name[] = "/v2/library/alp\0ine/manifests/latest";
  static const char nul_tag[] = "/v2/library/alpine/manifests/lat\0est";
  static const char nul_seg[] = "/v2/library/alpine/manif\0sts/latest";
  static const char nul_query[] = "/v2/x/manifests/t?ns=ghcr.io\0";
  static const char nul_v2[] = "/v\0/";
  static const char longer[] = "/v2/library/alpine/manifests/latest/../../../../etc/passwd";
  struct rp_reg_path p;
  (void)state;

  check_path(nul_name, sizeof nul_name - 1, &other);
  check_path(nul_tag, sizeof nul_tag - 1, &other);
  check_path(nul_seg, sizeof nul_seg - 1, &other);
  check_path(nul_query, sizeof nul_query - 1, &other);
  check_path(nul_v2, sizeof nul_v2 - 1, &not_v2);
  check_path("/v2/\0", 5, &other);
  check_path(longer, strlen("/v2/library/alpine/manifests/latest"), &alpine);
  check_path(longer, 4, &base);
  check_path(longer, 3, &base);
  check_path(longer, 2, &not_v2);
  check_path(longer, 0, &not_v2);
  rp_reg_path_parse(NULL, 0, &p);
  assert_int_equal(p.kind, NOT_V2);
}

/* The 255-character name limit, and the size of a whole head of garbage. */
static void test_path_overlong(void **state) {
  char path[600];
  const size_t big_len = RP_HTTP_HEAD_MAX;
  char *big;
  struct rp_reg_path p;
  size_t n;
  (void)state;

  for (size_t len = 250; len <= 260; len++) {
    memcpy(path, "/v2/", 4);
    n = 4;
    for (size_t i = 0; i < len; i++)
      path[n + i] = (i % 2 == 1) ? '/' : 'a'; /* a/a/a/... */
    path[n + len - 1] = 'a';
    n += len;
    n += (size_t)snprintf(path + n, sizeof path - n, "/manifests/latest");
    rp_reg_path_parse(path, n, &p);
    if (len <= 255) {
      assert_int_equal(p.kind, MANIFEST);
      assert_int_equal(strlen(p.name), len);
    } else {
      assert_int_equal(p.kind, OTHER);
      assert_string_equal(p.name, "");
    }
  }

  big = malloc(big_len);
  assert_non_null(big);
  memcpy(big, "/v2/", 4);
  memset(big + 4, 'a', big_len - 4);
  rp_reg_path_parse(big, big_len, &p);
  assert_int_equal(p.kind, OTHER);
  memset(big + 4, '/', big_len - 4);
  rp_reg_path_parse(big, big_len, &p);
  assert_int_equal(p.kind, OTHER);
  memcpy(big + big_len - 17, "/manifests/latest", 17);
  rp_reg_path_parse(big, big_len, &p);
  assert_int_equal(p.kind, OTHER);
  memset(big + 4, '?', big_len - 4);
  rp_reg_path_parse(big, big_len, &p);
  assert_int_equal(p.kind, BASE);
  free(big);
}

/* ---- registry identities ---------------------------------------------------- */

struct canon_case {
  const char *host;
  uint16_t port;
  const char *want;
};

static const struct canon_case canon_cases[] = {
    {"docker.io", 0, "docker.io"},
    {"docker.io", 443, "docker.io"},
    {"DOCKER.IO", 0, "docker.io"},
    {"docker.io.", 0, "docker.io"},
    {"index.docker.io", 443, "docker.io"},
    {"Index.Docker.IO.", 0, "docker.io"},
    {"registry-1.docker.io", 443, "docker.io"},
    {"registry-1.docker.io:443", 0, "docker.io"},
    {"REGISTRY-1.DOCKER.IO.:443", 0, "docker.io"},
    /* Another port is another registry. */
    {"docker.io", 5000, "docker.io:5000"},
    {"registry-1.docker.io", 80, "registry-1.docker.io:80"},
    /* Not Docker Hub. */
    {"auth.docker.io", 443, "auth.docker.io"},
    {"docker.io.evil.net", 443, "docker.io.evil.net"},
    {"GHCR.io", 443, "ghcr.io"},
    {"ghcr.io", 0, "ghcr.io"},
    {"ghcr.io", 8443, "ghcr.io:8443"},
    {"Quay.IO.", 80, "quay.io:80"},
    {"localhost:5000", 0, "localhost:5000"},
    {"localhost:5000", 5001, "localhost:5001"}, /* the argument wins */
    {"localhost:443", 0, "localhost"},
    {"10.0.0.1", 5000, "10.0.0.1:5000"},
    {"::1", 5000, "[::1]:5000"},
    {"::1", 443, "[::1]"},
    {"2001:DB8::1", 0, "[2001:db8::1]"},
    {"[::1]:5000", 0, "[::1]:5000"},
    {"[::1]", 8080, "[::1]:8080"},
    /* Unusable hosts give "". */
    {"", 0, ""},
    {":5000", 0, ""},
    {"host:abc", 0, ""},
    {"host:0", 0, ""},
    {"host:70000", 0, ""},
    {"[::1", 0, ""},
    {"[::1]x", 0, ""},
    {"a b", 0, ""},
    {"..", 0, ""},
    {".", 0, ""},
    {"a..b", 0, ""},
    {".ghcr.io", 0, ""},
    {"ghcr.io/x", 0, ""},
    {"ghcr.io\\", 0, ""},
    {"::zz", 0, ""},
    {"[fe80::1%eth0]", 0, ""},
    /* Hosts we connected to may be less tidy than a reference allows. */
    {"under_score.local", 5000, "under_score.local:5000"},
    {"-dash-.local", 0, "-dash-.local"},
};

static void test_canonical(void **state) {
  char buf[300];
  (void)state;

  for (size_t i = 0; i < sizeof canon_cases / sizeof canon_cases[0]; i++) {
    const struct canon_case *c = &canon_cases[i];
    memset(buf, 'x', sizeof buf);
    if (rp_reg_canonical(c->host, c->port, buf, sizeof buf) != buf || strcmp(buf, c->want) != 0) {
      print_error("canonical(%s, %u) = '%s', want '%s'\n", c->host, c->port, buf, c->want);
      fail();
    }
  }
  assert_string_equal(rp_reg_canonical(NULL, 443, buf, sizeof buf), "");
  /* Exactly fitting, one short, and no room at all. */
  assert_string_equal(rp_reg_canonical("ghcr.io", 8443, buf, 13), "ghcr.io:8443");
  assert_string_equal(rp_reg_canonical("ghcr.io", 8443, buf, 12), "");
  buf[0] = 'x';
  rp_reg_canonical("ghcr.io", 0, buf, 0);
  assert_int_equal(buf[0], 'x');
}

static void test_upstream_host(void **state) {
  char buf[64];
  const char *g = "ghcr.io";
  (void)state;

  assert_string_equal(rp_reg_upstream_host("docker.io"), "registry-1.docker.io");
  assert_ptr_equal(rp_reg_upstream_host(g), g);
  assert_string_equal(rp_reg_upstream_host("docker.io:5000"), "docker.io:5000");
  assert_string_equal(rp_reg_upstream_host("index.docker.io:80"), "index.docker.io:80");
  assert_null(rp_reg_upstream_host(NULL));
  /* Every spelling of Docker Hub goes to one upstream. */
  rp_reg_canonical("index.docker.io.", 443, buf, sizeof buf);
  assert_string_equal(rp_reg_upstream_host(buf), "registry-1.docker.io");
}

/* ---- image references ------------------------------------------------------- */

/* Rows from distribution/reference's normalize_test.go (ParseNormalizedNamed,
 * then TagNameOnly), the shapes prefetch is given, and where regproxy
 * deliberately differs: one identity for every spelling of Docker Hub, and
 * registries that could never be dialled are refused up front. */

#define HUB     "docker.io"
#define ID64    "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a"
#define DBCC    "dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9c"
#define BUSYBOX "sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa"
#define SONG    "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev"
#define NS255   "this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255_"
#define LONGNS                                                                                     \
  NS255 NS255 NS255 "this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255"
#define T129    T128 "q"
#define P240    T16 T16 T16 T16 T16 T16 T16 T16 T16 T16 T16 T16 T16 T16 T16
#define P247    P240 "abcdefg"
#define P248    P240 "abcdefgh"
#define P255    P240 "abcdefghijklmno"
#define P256    P240 T16
#define L61     T16 T16 T16 "abcdefghijklm"
#define L63     T16 T16 T16 "abcdefghijklmno"
#define L64     T16 T16 T16 T16
#define HOST253 L63 "." L63 "." L63 "." L61
#define HOST255 L63 "." L63 "." L63 "." L63

struct ref_case {
  const char *in;
  const char *registry; /* NULL: refused */
  const char *repo;
  const char *tag;
  const char *digest; /* NULL: "" */
};

#define REFUSED(s)                                                                                 \
  { s, NULL, NULL, NULL, NULL }

static const struct ref_case ref_cases[] = {
    /* TestValidateReferenceName */
    {"docker/docker", HUB, "docker/docker", "latest", NULL},
    {"library/debian", HUB, "library/debian", "latest", NULL},
    {"debian", HUB, "library/debian", "latest", NULL},
    {"docker.io/docker/docker", HUB, "docker/docker", "latest", NULL},
    {"docker.io/library/debian", HUB, "library/debian", "latest", NULL},
    {"docker.io/debian", HUB, "library/debian", "latest", NULL},
    {"index.docker.io/docker/docker", HUB, "docker/docker", "latest", NULL},
    {"index.docker.io/library/debian", HUB, "library/debian", "latest", NULL},
    {"index.docker.io/debian", HUB, "library/debian", "latest", NULL},
    {"127.0.0.1:5000/docker/docker", "127.0.0.1:5000", "docker/docker", "latest", NULL},
    {"127.0.0.1:5000/library/debian", "127.0.0.1:5000", "library/debian", "latest", NULL},
    {"127.0.0.1:5000/debian", "127.0.0.1:5000", "debian", "latest", NULL},
    {SONG, HUB, "library/" SONG, "latest", NULL},
    /* With a registry a 64-hex-digit name is no longer taken for an image ID. */
    {"docker.io/" ID64, HUB, "library/" ID64, "latest", NULL},
    REFUSED("https://github.com/docker/docker"),
    REFUSED("docker/Docker"),
    REFUSED("-docker"),
    REFUSED("-docker/docker"),
    REFUSED("-docker.io/docker/docker"),
    REFUSED("docker///docker"),
    REFUSED("docker.io/docker/Docker"),
    REFUSED("docker.io/docker///docker"),
    REFUSED(ID64),

    /* TestValidateRemoteName */
    {"docker-rules/docker", HUB, "docker-rules/docker", "latest", NULL},
    {"docker---rules/docker", HUB, "docker---rules/docker", "latest", NULL},
    {"doc/docker", HUB, "doc/docker", "latest", NULL},
    {"d/docker", HUB, "d/docker", "latest", NULL},
    {"jess/t", HUB, "jess/t", "latest", NULL},
    {"dock__er/docker", HUB, "dock__er/docker", "latest", NULL},
    REFUSED("docker-/docker"),
    REFUSED("-docker-/docker"),
    REFUSED("____/____"),
    REFUSED("_docker/_docker"),
    REFUSED("dock..er/docker"),
    REFUSED("dock_.er/docker"),
    REFUSED("dock-.er/docker"),
    REFUSED("docker/"),
    REFUSED(LONGNS "/docker"),

    /* TestParseRepositoryInfo: familiar, full and ambiguous spellings. */
    {"fooo/bar", HUB, "fooo/bar", "latest", NULL},
    {"index.docker.io/fooo/bar", HUB, "fooo/bar", "latest", NULL},
    {"nonlibrary/ubuntu", HUB, "nonlibrary/ubuntu", "latest", NULL},
    {"other/library", HUB, "other/library", "latest", NULL},
    {"127.0.0.1:8000/private/moonbase", "127.0.0.1:8000", "private/moonbase", "latest", NULL},
    {"127.0.0.1:8000/privatebase", "127.0.0.1:8000", "privatebase", "latest", NULL},
    {"example.com/private/moonbase", "example.com", "private/moonbase", "latest", NULL},
    {"example.com/privatebase", "example.com", "privatebase", "latest", NULL},
    {"example.com:8000/privatebasee", "example.com:8000", "privatebasee", "latest", NULL},
    {"ubuntu-12.04-base", HUB, "library/ubuntu-12.04-base", "latest", NULL},
    {"index.docker.io/library/ubuntu-12.04-base", HUB, "library/ubuntu-12.04-base", "latest", NULL},
    {"library/foo/bar", HUB, "library/foo/bar", "latest", NULL},
    {"store/foo/bar", HUB, "store/foo/bar", "latest", NULL},

    /* TestParseReferenceWithTagAndDigest: both are kept. */
    {"busybox:latest@" BUSYBOX, HUB, "library/busybox", "latest", BUSYBOX},

    /* TestParseAnyReference, as far as ParseNormalizedNamed goes. */
    {"redis:latest", HUB, "library/redis", "latest", NULL},
    {"docker.io/library/redis:latest", HUB, "library/redis", "latest", NULL},
    {"redis@sha256:" DBCC, HUB, "library/redis", "", "sha256:" DBCC},
    {"dmcgowan/myapp@sha256:" DBCC, HUB, "dmcgowan/myapp", "", "sha256:" DBCC},
    {"docker.io/mcgowan/myapp:latest", HUB, "mcgowan/myapp", "latest", NULL},
    {"dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9", HUB,
     "library/dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9", "latest", NULL},
    {"dbcc1", HUB, "library/dbcc1", "latest", NULL},
    /* A bare digest is an image "sha256" with a hex tag to ParseNormalizedNamed. */
    {"sha256:" DBCC, HUB, "library/sha256", DBCC, NULL},

    /* TestNormalizedSplitHostname */
    {"test.com/foo", "test.com", "foo", "latest", NULL},
    {"test_com/foo", HUB, "test_com/foo", "latest", NULL},
    {"docker/migrator", HUB, "docker/migrator", "latest", NULL},
    {"test.com:8080/foo", "test.com:8080", "foo", "latest", NULL},
    {"test-com:8080/foo", "test-com:8080", "foo", "latest", NULL},
    {"foo", HUB, "library/foo", "latest", NULL},
    {"xn--n3h.com/foo", "xn--n3h.com", "foo", "latest", NULL},
    {"xn--n3h.com:18080/foo", "xn--n3h.com:18080", "foo", "latest", NULL},
    {"docker.io/library/foo/bar", HUB, "library/foo/bar", "latest", NULL},

    /* TestInvalidReferenceComponents */
    REFUSED("-foo"),
    REFUSED("busybox:-foo"),
    REFUSED("busybox@foo"),

    /* What `regproxy prefetch` is given. */
    {"alpine", HUB, "library/alpine", "latest", NULL},
    {"alpine:3.18", HUB, "library/alpine", "3.18", NULL},
    {"library/alpine@" S256, HUB, "library/alpine", "", S256},
    {"alpine:3.18@" S256, HUB, "library/alpine", "3.18", S256},
    {"alpine@" S512, HUB, "library/alpine", "", S512},
    {"ghcr.io/org/app:1", "ghcr.io", "org/app", "1", NULL},
    {"localhost:5000/x", "localhost:5000", "x", "latest", NULL},
    {"localhost/x", "localhost", "x", "latest", NULL},
    {"[::1]:5000/x:tag", "[::1]:5000", "x", "tag", NULL},
    {"[::1]/x", "[::1]", "x", "latest", NULL},
    {"[2001:DB8::1]:5000/a/b", "[2001:db8::1]:5000", "a/b", "latest", NULL},
    {"docker.io/alpine", HUB, "library/alpine", "latest", NULL},
    {"index.docker.io/library/alpine", HUB, "library/alpine", "latest", NULL},
    /* Without a '/' there is no registry: these are Docker Hub images. */
    {"localhost", HUB, "library/localhost", "latest", NULL},
    {"localhost:5000", HUB, "library/localhost", "5000", NULL},
    {"docker.io", HUB, "library/docker.io", "latest", NULL},
    /* Only a whole input of 64 hex digits is an image ID. */
    {ID64 ":v1", HUB, "library/" ID64, "v1", NULL},
    {"library/" ID64, HUB, "library/" ID64, "latest", NULL},

    /* One identity per registry. distribution keeps "registry-1.docker.io",
     * "docker.io:443" and "DOCKER.IO" as other domains without "library/";
     * to regproxy (rp_reg_canonical) they are all Docker Hub. */
    {"registry-1.docker.io/alpine", HUB, "library/alpine", "latest", NULL},
    {"registry-1.docker.io/library/alpine:3", HUB, "library/alpine", "3", NULL},
    {"docker.io:443/alpine", HUB, "library/alpine", "latest", NULL},
    {"DOCKER.IO/alpine", HUB, "library/alpine", "latest", NULL},
    {"Index.Docker.IO/org/app", HUB, "org/app", "latest", NULL},
    {"docker.io:5000/alpine", "docker.io:5000", "alpine", "latest", NULL},
    {"GHCR.io:443/org/app", "ghcr.io", "org/app", "latest", NULL},
    {"localhost:05000/x", "localhost:5000", "x", "latest", NULL},

    /* distribution (v0.5+) takes an upper-case first component for a
     * registry, since a repository component cannot hold one. */
    {"Foo/bar", "foo", "bar", "latest", NULL},
    {"MyRegistry/username/image:1", "myregistry", "username/image", "1", NULL},
    {"LOCALHOST/x", "localhost", "x", "latest", NULL},
    REFUSED("Foo"),
    REFUSED("Foo_bar/x"),

    /* Tags: [\w][\w.-]{0,127}. */
    {"alpine:" T128, HUB, "library/alpine", T128, NULL},
    {"alpine:Latest_1.0-rc", HUB, "library/alpine", "Latest_1.0-rc", NULL},
    {"alpine:_x", HUB, "library/alpine", "_x", NULL},
    REFUSED("alpine:" T129),
    REFUSED("alpine:.x"),
    REFUSED("alpine:-x"),
    REFUSED("alpine:"),
    REFUSED("alpine:a:b"),
    REFUSED("alpine:a/b"),
    REFUSED("alpine:a+b"),

    /* Digests: sha256 and sha512 in lower-case hex of the exact length. */
    REFUSED("alpine@"),
    REFUSED("alpine@sha256"),
    REFUSED("alpine@sha256:"),
    REFUSED("alpine@sha256:" H63),
    REFUSED("alpine@sha256:" H64 "0"),
    REFUSED("alpine@sha256:" H64U),
    REFUSED("alpine@SHA256:" H64),
    REFUSED("alpine@sha384:" H64 T16 T16),
    REFUSED("alpine@md5:0123456789abcdef0123456789abcdef"),
    REFUSED("alpine@sha512:" H64),
    REFUSED("alpine@" S256 "@" S256),
    REFUSED("alpine@" S256 ":3.18"),
    REFUSED("alpine@" S256 "/x"),
    REFUSED("@" S256),

    /* Lengths: the repository path (with "library/") is at most 255; the
     * registry is bounded as a DNS name and by the identity buffer. */
    {"example.com/" P255, "example.com", P255, "latest", NULL},
    {P247, HUB, "library/" P247, "latest", NULL},
    {HOST253 "/x", HOST253, "x", "latest", NULL},
    REFUSED("example.com/" P256),
    REFUSED(P248),
    REFUSED(HOST255 "/x"),
    REFUSED(HOST253 ":5000/x"),
    REFUSED(L64 ".example.com/x"),

    /* Registries distribution's domain grammar refuses, and ones it lets
     * through that could never be dialled. */
    REFUSED("ghcr.io:/x"),
    REFUSED("ghcr.io:abc/x"),
    REFUSED("ghcr.io:0/x"),
    REFUSED("ghcr.io:65536/x"),
    REFUSED("example.com./x"),
    REFUSED(".example.com/x"),
    REFUSED("ex_ample.com/x"), /* distribution: a name with no registry at all */
    REFUSED("ex ample.com/x"),
    REFUSED("::1/x"),
    REFUSED("[::1/x"),
    REFUSED("[::1]x/y"),
    REFUSED("[]/x"),
    REFUSED("[:::]/x"),
    REFUSED("[::ffff:1.2.3.4]/x"),
    REFUSED("[fe80::1%eth0]/x"),
    REFUSED("user@ghcr.io/x"),

    /* Shapes that are no reference. */
    REFUSED(""),
    REFUSED(" alpine"),
    REFUSED("alpine "),
    REFUSED("al pine"),
    REFUSED("alpine\n"),
    REFUSED("/alpine"),
    REFUSED("alpine/"),
    REFUSED("ghcr.io/"),
    REFUSED("ghcr.io/x/"),
    REFUSED("alpine//x"),
    REFUSED("ghcr.io//x"),
    REFUSED("https://ghcr.io/x"),
    REFUSED("docker://alpine"),
    REFUSED("ALPINE"),
    REFUSED("alpine/X"),
    REFUSED(":tag"),
    REFUSED("ghcr.io/a/../b"),
    REFUSED("ghcr.io/./b"),
    REFUSED("ghcr.io/x?y"),
    REFUSED("ghcr.io/x#y"),
    REFUSED("alpine\xc3\xa9"),
};

static void check_ref(const char *s, size_t n, const struct ref_case *c) {
  struct rp_reg_ref r;
  const char *why = NULL;
  int rc;

  memset(&r, 0x5a, sizeof r); /* the parser must set every field */
  rc = rp_reg_ref_parse(s, n, &r, &why);
  if (c->registry == NULL) {
    if (rc != RP_EPARSE || why == NULL || why[0] == '\0' || r.registry[0] != '\0' ||
        r.repo[0] != '\0' || r.tag[0] != '\0' || r.digest[0] != '\0') {
      print_error("ref '%s': rc %d why '%s', want refused\n", c->in, rc, why ? why : "(null)");
      fail();
    }
    return;
  }
  if (rc != 0 || strcmp(r.registry, c->registry) != 0 || strcmp(r.repo, c->repo) != 0 ||
      strcmp(r.tag, c->tag) != 0 || strcmp(r.digest, c->digest ? c->digest : "") != 0) {
    print_error("ref '%s': rc %d (%s) registry '%s' repo '%s' tag '%s' digest '%s'\n", c->in, rc,
                rc != 0 && why ? why : "", rc == 0 ? r.registry : "", rc == 0 ? r.repo : "",
                rc == 0 ? r.tag : "", rc == 0 ? r.digest : "");
    fail();
  }
}

static void test_ref_table(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof ref_cases / sizeof ref_cases[0]; i++)
    check_ref(ref_cases[i].in, strlen(ref_cases[i].in), &ref_cases[i]);
}

/* Exactly n bytes are read: NULs inside refuse, bytes past n do not count,
 * and an input in a buffer of its own size is never overrun (ASan). */
static void test_ref_lengths(void **state) {
  static const struct ref_case alpine318 = {"(prefix)", HUB, "library/alpine", "3.18", NULL};
  static const struct ref_case refused = REFUSED("(nul)");
  static const char *const exact[] = {"alpine", "ghcr.io/org/app:1", "alpine@" S256, "[::1]"};
  struct rp_reg_ref r;
  const char *why = "untouched";
  (void)state;

  check_ref("alpine\0:3.18", 12, &refused);
  check_ref("alpine:3.18\0", 12, &refused);
  check_ref("\0", 1, &refused);
  check_ref("ghcr.io\0/x", 10, &refused);
  check_ref("[::1\0]/x", 8, &refused);
  check_ref("alpine:3.18garbage", 11, &alpine318);
  check_ref("alpine:3.18@garbage", 11, &alpine318);
  for (size_t i = 0; i < sizeof exact / sizeof exact[0]; i++) {
    size_t n = strlen(exact[i]);
    char *copy = malloc(n);
    assert_non_null(copy);
    memcpy(copy, exact[i], n);
    (void)rp_reg_ref_parse(copy, n, &r, &why);
    free(copy);
  }

  /* NULL input is refused; why may be NULL. */
  assert_int_equal(rp_reg_ref_parse(NULL, 5, &r, &why), RP_EPARSE);
  assert_string_equal(why, "empty image reference");
  assert_int_equal(rp_reg_ref_parse("Alpine", 6, &r, NULL), RP_EPARSE);
  assert_int_equal(rp_reg_ref_parse("alpine", 6, &r, NULL), 0);
}

/* The messages say which part is wrong. */
static void test_ref_messages(void **state) {
  static const struct {
    const char *in, *why;
  } cases[] = {
      {"", "empty image reference"},
      {ID64, "an image ID (64 hex digits) is not a repository name"},
      {"ghcr.io:0/x", "invalid registry host[:port]"},
      {"docker/Docker", "repository name must be lower-case"},
      {"docker//docker", "invalid repository name"},
      {P248, "repository name longer than 255 characters"},
      {"alpine:.x", "invalid tag"},
      {"alpine:" T129, "tag longer than 128 characters"},
      {"alpine@sha384:" H64 T16 T16, "unsupported digest algorithm (sha256 and sha512 only)"},
      {"alpine@sha256:" H64U, "invalid digest"},
  };
  struct rp_reg_ref r;
  (void)state;

  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const char *why = NULL;
    assert_int_equal(rp_reg_ref_parse(cases[i].in, strlen(cases[i].in), &r, &why), RP_EPARSE);
    assert_non_null(why);
    if (strcmp(why, cases[i].why) != 0) {
      print_error("ref '%s': why '%s', want '%s'\n", cases[i].in, why, cases[i].why);
      fail();
    }
  }
}

/* ---- Accept key ------------------------------------------------------------- */

#define DOCKER_V2     "application/vnd.docker.distribution.manifest.v2+json"
#define DOCKER_LIST   "application/vnd.docker.distribution.manifest.list.v2+json"
#define DOCKER_V1     "application/vnd.docker.distribution.manifest.v1+json"
#define DOCKER_V1_JWS "application/vnd.docker.distribution.manifest.v1+prettyjws"
#define OCI_MANIFEST  "application/vnd.oci.image.manifest.v1+json"
#define OCI_INDEX     "application/vnd.oci.image.index.v1+json"

/* dockerd 20.10 sends one Accept line per type distribution's client has
 * registered (distribution.ManifestMediaTypes(), in Go map order). */
#define KEY_DOCKERD                                                                                \
  "application/json," DOCKER_LIST "," DOCKER_V1_JWS "," DOCKER_V2 "," OCI_INDEX "," OCI_MANIFEST
/* containerd 1.6 resolving a tag: one line, remotes/docker/resolver.go. */
#define LINE_CONTAINERD DOCKER_V2 ", " DOCKER_LIST ", " OCI_MANIFEST ", " OCI_INDEX ", */*"
#define KEY_CONTAINERD  "*/*," DOCKER_LIST "," DOCKER_V2 "," OCI_INDEX "," OCI_MANIFEST
/* skopeo 1.9 (containers/image 5.23): DefaultRequestedManifestMIMETypes, one line each. */
#define KEY_SKOPEO                                                                                 \
  DOCKER_LIST "," DOCKER_V1 "," DOCKER_V1_JWS "," DOCKER_V2 "," OCI_INDEX "," OCI_MANIFEST

struct accept_case {
  const char *what;
  const char *lines[8]; /* "Name: value" */
  const char *want;
};

static const struct accept_case accept_cases[] = {
    {"dockerd 20.10",
     {"Accept: " DOCKER_V2, "Accept: " DOCKER_LIST, "Accept: " OCI_INDEX, "Accept: " OCI_MANIFEST,
      "Accept: " DOCKER_V1_JWS, "Accept: application/json"},
     KEY_DOCKERD},
    {"dockerd 20.10, another map order",
     {"User-Agent: docker/20.10.24 go/go1.19.7", "Accept: application/json",
      "Accept: " OCI_MANIFEST, "Accept: " DOCKER_V1_JWS, "Accept: " DOCKER_V2, "Accept: " OCI_INDEX,
      "Accept: " DOCKER_LIST},
     KEY_DOCKERD},
    {"containerd 1.6 resolve", {"Accept: " LINE_CONTAINERD}, KEY_CONTAINERD},
    {"containerd 1.6 fetch by digest", {"Accept: " OCI_INDEX ", */*"}, "*/*," OCI_INDEX},
    {"q-values (synthetic, containerd-like)",
     {"Accept: " DOCKER_V2 ", " DOCKER_LIST ", " OCI_MANIFEST ";q=0.9, " OCI_INDEX
      ";q=0.9, */*;q=0.8"},
     KEY_CONTAINERD},
    {"skopeo 1.9",
     {"Accept: " OCI_MANIFEST, "Accept: " DOCKER_V2, "Accept: " DOCKER_V1_JWS, "Accept: " DOCKER_V1,
      "Accept: " DOCKER_LIST, "Accept: " OCI_INDEX},
     KEY_SKOPEO},
    {"no Accept", {"Host: registry-1.docker.io", "Accept-Encoding: gzip"}, ""},
    {"nothing at all", {NULL}, ""},
    {"empty Accept", {"Accept: "}, ""},
    {"empty elements", {"Accept: , ,\t,", "Accept:"}, ""},
    {"header name case",
     {"accept: application/json", "ACCEPT: " OCI_INDEX, "AcCePt: application/json"},
     "application/json," OCI_INDEX},
    {"value case and parameters",
     {"Accept: Application/JSON;charset=utf-8", "Accept: application/json ; q=0.5"},
     "application/json"},
    {"whitespace", {"Accept:  application/* ;level=1 ,\ttext/* , */*;q=0.1"}, "*/*,application/*"},
    {"q=0 refuses", {"Accept: application/json;q=0, " OCI_INDEX}, OCI_INDEX},
    {"q=0.000 refuses", {"Accept: application/json; Q = 0.000"}, "?"},
    {"q=0.001 accepts", {"Accept: application/json;q=0.001"}, "application/json"},
    {"wildcard refused", {"Accept: */*;q=0"}, "?"},
    {"garbage only", {"Accept: text"}, "?"},
    {"garbage dropped", {"Accept: text, /json, json/, */json, a b/c, " OCI_INDEX}, OCI_INDEX},
    {"duplicates",
     {"Accept: application/JSON, application/json;x=1", "Accept: application/json"},
     "application/json"},
    {"control bytes", {"Accept: application/json\x01, " OCI_INDEX}, OCI_INDEX},
    /* Only ranges that can select a manifest are members: a client cannot
     * multiply the keys a tag is remembered under. */
    {"other types dropped",
     {"Accept: text/plain, a/b, application/x-made-up, " OCI_INDEX},
     OCI_INDEX},
    {"only other types", {"Accept: text/html, image/png"}, "?"},
};

static void build_head(const char *const *lines, struct rp_http_header *hdrs,
                       struct rp_http_head *h) {
  memset(h, 0, sizeof *h);
  h->headers = hdrs;
  for (size_t i = 0; i < 8 && lines[i] != NULL; i++) {
    const char *colon = strchr(lines[i], ':');
    assert_non_null(colon);
    hdrs[i].name = lines[i];
    hdrs[i].name_len = (size_t)(colon - lines[i]);
    hdrs[i].value = colon + 1;
    hdrs[i].value_len = strlen(colon + 1);
    h->nheaders++;
  }
}

static void test_accept_key_table(void **state) {
  struct rp_http_header hdrs[8];
  struct rp_http_head h;
  char key[RP_REG_ACCEPT_KEY_SIZE];
  (void)state;

  for (size_t i = 0; i < sizeof accept_cases / sizeof accept_cases[0]; i++) {
    const struct accept_case *c = &accept_cases[i];
    build_head(c->lines, hdrs, &h);
    memset(key, 'x', sizeof key);
    rp_reg_accept_key(&h, key, sizeof key);
    if (strcmp(key, c->want) != 0) {
      print_error("%s: key '%s', want '%s'\n", c->what, key, c->want);
      fail();
    }
  }
  rp_reg_accept_key(NULL, key, sizeof key);
  assert_string_equal(key, "");
}

/* Header names and values are not NUL-terminated: only the lengths count. */
static void test_accept_key_lengths(void **state) {
  static const char raw[] = "AcceptXtext/plain,application/jsonGARBAGE, z/z";
  struct rp_http_header hd = {raw, 6, raw + 7, 27};
  struct rp_http_head h = {0};
  char key[64];
  (void)state;

  h.headers = &hd;
  h.nheaders = 1;
  rp_reg_accept_key(&h, key, sizeof key);
  assert_string_equal(key, "application/json");
  hd.name_len = 7; /* "AcceptX" is another header */
  rp_reg_accept_key(&h, key, sizeof key);
  assert_string_equal(key, "");
}

/* A key that does not fit loses members from the end; it never turns into
 * "" (accept anything) while Accept was sent. */
static void test_accept_key_small_buffer(void **state) {
  static const char *const lines[] = {"Accept: " LINE_CONTAINERD, NULL};
  struct rp_http_header hdrs[8];
  struct rp_http_head h;
  char key[RP_REG_ACCEPT_KEY_SIZE];
  (void)state;

  build_head(lines, hdrs, &h);
  rp_reg_accept_key(&h, key, strlen(KEY_CONTAINERD) + 1);
  assert_string_equal(key, KEY_CONTAINERD);
  rp_reg_accept_key(&h, key, strlen(KEY_CONTAINERD));
  assert_string_equal(key, "*/*," DOCKER_LIST "," DOCKER_V2 "," OCI_INDEX);
  rp_reg_accept_key(&h, key, 4);
  assert_string_equal(key, "*/*");
  rp_reg_accept_key(&h, key, 3);
  assert_string_equal(key, "?");
  rp_reg_accept_key(&h, key, 1);
  assert_string_equal(key, "");
  key[0] = 'x';
  rp_reg_accept_key(&h, key, 0);
  assert_int_equal(key[0], 'x');
}

/* Many Accept lines (up to the head limit) stay bounded. */
static void test_accept_key_many(void **state) {
  static struct rp_http_header hdrs[RP_HTTP_MAX_HEADERS];
  static char values[RP_HTTP_MAX_HEADERS][40];
  struct rp_http_head h = {0};
  char key[RP_REG_ACCEPT_KEY_SIZE];
  (void)state;

  for (size_t i = 0; i < RP_HTTP_MAX_HEADERS; i++) {
    int n = snprintf(values[i], sizeof values[i], "application/x-%03zu, */*", i);
    hdrs[i].name = "Accept";
    hdrs[i].name_len = 6;
    hdrs[i].value = values[i];
    hdrs[i].value_len = (size_t)n;
  }
  h.headers = hdrs;
  h.nheaders = RP_HTTP_MAX_HEADERS;
  rp_reg_accept_key(&h, key, sizeof key);
  assert_string_equal(key, "*/*"); /* the made-up types are no members */
  assert_true(rp_reg_accept_allows(key, OCI_INDEX));
}

struct allows_case {
  const char *key;
  const char *type;
  bool want;
};

static const struct allows_case allows_cases[] = {
    /* The stored type of a multi-arch image is an OCI index: every real
     * client's set takes it. */
    {KEY_DOCKERD, OCI_INDEX, true},
    {KEY_CONTAINERD, OCI_INDEX, true},
    {KEY_SKOPEO, OCI_INDEX, true},
    {"*/*," OCI_INDEX, OCI_INDEX, true},
    {KEY_DOCKERD, DOCKER_V2, true},
    {KEY_DOCKERD, DOCKER_V1, false},
    {KEY_SKOPEO, DOCKER_V1, true},
    {KEY_DOCKERD, OCI_INDEX "; charset=utf-8", true},
    {KEY_DOCKERD, "Application/VND.OCI.Image.Index.v1+JSON", true},
    {KEY_DOCKERD, " " OCI_INDEX " ", true},
    {KEY_DOCKERD, "application/vnd.oci.image.index.v1", false},
    {KEY_DOCKERD, "application", false},
    {KEY_DOCKERD, "", false},
    {KEY_CONTAINERD, "text/plain", true}, /* the full wildcard */
    /* A client without a manifest list type never gets an index. */
    {DOCKER_V2, OCI_INDEX, false},
    {DOCKER_V2 "," OCI_MANIFEST, DOCKER_LIST, false},
    /* No Accept at all accepts anything; "?" accepts nothing. */
    {"", OCI_INDEX, true},
    {"", "", true},
    {"?", OCI_INDEX, false},
    {"?", "?", false},
    /* Major-type wildcards. */
    {"application/*", OCI_INDEX, true},
    {"text/*", OCI_INDEX, false},
    {"application/*", "applicationx/json", false},
    {"app/*", "application/json", false},
    {"application/*", "application", false},
    /* Whole members only. */
    {"application/json,text/plain", "text/plain", true},
    {"application/json", "application/jsonx", false},
    {"application/json", "application/js", false},
    {"application/json", "application/json;q=1", true},
    {"*/*", "", true},
};

static void test_accept_allows(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof allows_cases / sizeof allows_cases[0]; i++) {
    const struct allows_case *c = &allows_cases[i];
    if (rp_reg_accept_allows(c->key, c->type) != c->want) {
      print_error("allows('%s', '%s') != %d\n", c->key, c->type, (int)c->want);
      fail();
    }
  }
  assert_true(rp_reg_accept_allows(NULL, OCI_INDEX));
  assert_false(rp_reg_accept_allows("application/json", NULL));
  assert_true(rp_reg_accept_allows("*/*", NULL));
}

/* Keys from the real clients' heads round-trip through allows(). */
static void test_accept_clients_take_index(void **state) {
  static const char *const dockerd[] = {"Accept: " DOCKER_V2,
                                        "Accept: " DOCKER_LIST,
                                        "Accept: " OCI_INDEX,
                                        "Accept: " OCI_MANIFEST,
                                        "Accept: " DOCKER_V1_JWS,
                                        "Accept: application/json",
                                        NULL};
  static const char *const containerd[] = {"Accept: " LINE_CONTAINERD, NULL};
  struct rp_http_header hdrs[8];
  struct rp_http_head h;
  char key[RP_REG_ACCEPT_KEY_SIZE];
  (void)state;

  build_head(dockerd, hdrs, &h);
  rp_reg_accept_key(&h, key, sizeof key);
  assert_true(rp_reg_accept_allows(key, OCI_INDEX));
  assert_true(rp_reg_accept_allows(key, DOCKER_LIST));
  build_head(containerd, hdrs, &h);
  rp_reg_accept_key(&h, key, sizeof key);
  assert_true(rp_reg_accept_allows(key, OCI_INDEX));
  assert_true(rp_reg_accept_allows(key, DOCKER_V1_JWS)); /* through the wildcard */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_path_table),
      cmocka_unit_test(test_path_lengths),
      cmocka_unit_test(test_path_overlong),
      cmocka_unit_test(test_canonical),
      cmocka_unit_test(test_upstream_host),
      cmocka_unit_test(test_ref_table),
      cmocka_unit_test(test_ref_lengths),
      cmocka_unit_test(test_ref_messages),
      cmocka_unit_test(test_accept_key_table),
      cmocka_unit_test(test_accept_key_lengths),
      cmocka_unit_test(test_accept_key_small_buffer),
      cmocka_unit_test(test_accept_key_many),
      cmocka_unit_test(test_accept_allows),
      cmocka_unit_test(test_accept_clients_take_index),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
