/* Registry paths, identities and the Accept key (SPEC §3): tables of valid
 * and hostile request paths, mirror-mode ?ns=, registry spellings, and the
 * Accept headers real clients send (dockerd 20.10, containerd 1.6,
 * skopeo 1.9). */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
     {"accept: text/plain", "ACCEPT: text/html", "AcCePt: text/plain"},
     "text/html,text/plain"},
    {"value case and parameters",
     {"Accept: Application/JSON;charset=utf-8", "Accept: application/json ; q=0.5"},
     "application/json"},
    {"whitespace", {"Accept:  text/html ;level=1 ,\ttext/* , */*;q=0.1"}, "*/*,text/*,text/html"},
    {"q=0 refuses", {"Accept: application/json;q=0, text/plain"}, "text/plain"},
    {"q=0.000 refuses", {"Accept: application/json; Q = 0.000"}, "?"},
    {"q=0.001 accepts", {"Accept: application/json;q=0.001"}, "application/json"},
    {"wildcard refused", {"Accept: */*;q=0"}, "?"},
    {"garbage only", {"Accept: text"}, "?"},
    {"garbage dropped", {"Accept: text, /json, json/, */json, a b/c, " OCI_INDEX}, OCI_INDEX},
    {"duplicates", {"Accept: a/b, A/B, a/b;x=1", "Accept: a/b"}, "a/b"},
    {"control bytes", {"Accept: a/b\x01, c/d"}, "c/d"},
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
  assert_string_equal(key, "application/json,text/plain");
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
  assert_true(strlen(key) < sizeof key);
  assert_true(strncmp(key, "*/*,application/x-000,application/x-001,", 40) == 0);
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
      cmocka_unit_test(test_accept_key_table),
      cmocka_unit_test(test_accept_key_lengths),
      cmocka_unit_test(test_accept_key_small_buffer),
      cmocka_unit_test(test_accept_key_many),
      cmocka_unit_test(test_accept_allows),
      cmocka_unit_test(test_accept_clients_take_index),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
