/* The registry auth client: WWW-Authenticate challenges recorded from real
 * registries (Docker Hub, ghcr, quay, distribution with htpasswd, GAR/GCR,
 * ECR) plus malformed ones, docker config.json credentials, token URLs and
 * token answers, the realm rule (scheme, host, address classes), and the
 * client's asynchronous behaviour (answers on the loop, one token fetch per
 * key in flight, cancel, Basic, anonymous, refused realms). */

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
#include <unistd.h>

#include "regproxy/auth.h"
#include "regproxy/config.h"
#include "regproxy/error.h"
#include "regproxy/upstream.h"

/* ---- challenges ------------------------------------------------------------ */

struct want_chal {
  enum rp_auth_scheme scheme;
  const char *realm, *service, *scope, *error;
};

struct chal_case {
  const char *input;
  int rc;
  size_t n;
  struct want_chal c[3];
};

#define BEARER RP_AUTH_BEARER
#define BASIC  RP_AUTH_BASIC
#define OTHER  RP_AUTH_OTHER

static const struct chal_case chal_cases[] = {
    /* Docker Hub, manifest of a public image (recorded). */
    {"Bearer realm=\"https://auth.docker.io/token\",service=\"registry.docker.io\","
     "scope=\"repository:library/alpine:pull\"",
     0,
     1,
     {{BEARER, "https://auth.docker.io/token", "registry.docker.io",
       "repository:library/alpine:pull", NULL}}},
    /* Docker Hub, GET /v2/ (no scope). */
    {"Bearer realm=\"https://auth.docker.io/token\",service=\"registry.docker.io\"",
     0,
     1,
     {{BEARER, "https://auth.docker.io/token", "registry.docker.io", NULL, NULL}}},
    /* Docker Hub, push without the right: a comma inside the quoted scope. */
    {"Bearer realm=\"https://auth.docker.io/token\",service=\"registry.docker.io\","
     "scope=\"repository:samalba/my-app:pull,push\",error=\"insufficient_scope\"",
     0,
     1,
     {{BEARER, "https://auth.docker.io/token", "registry.docker.io",
       "repository:samalba/my-app:pull,push", "insufficient_scope"}}},
    /* ghcr.io (recorded). */
    {"Bearer realm=\"https://ghcr.io/token\",service=\"ghcr.io\","
     "scope=\"repository:user/image:pull\"",
     0,
     1,
     {{BEARER, "https://ghcr.io/token", "ghcr.io", "repository:user/image:pull", NULL}}},
    /* quay.io (recorded, /v2/ and a repository). */
    {"Bearer realm=\"https://quay.io/v2/auth\",service=\"quay.io\"",
     0,
     1,
     {{BEARER, "https://quay.io/v2/auth", "quay.io", NULL, NULL}}},
    {"Bearer realm=\"https://quay.io/v2/auth\",service=\"quay.io\","
     "scope=\"repository:coreos/etcd:pull\"",
     0,
     1,
     {{BEARER, "https://quay.io/v2/auth", "quay.io", "repository:coreos/etcd:pull", NULL}}},
    /* GCR / Artifact Registry. */
    {"Bearer realm=\"https://gcr.io/v2/token\",service=\"gcr.io\","
     "scope=\"repository:google-containers/pause:pull\"",
     0,
     1,
     {{BEARER, "https://gcr.io/v2/token", "gcr.io", "repository:google-containers/pause:pull",
       NULL}}},
    /* distribution with auth.htpasswd (recorded). */
    {"Basic realm=\"Registry Realm\"", 0, 1, {{BASIC, "Registry Realm", NULL, NULL, NULL}}},
    /* ECR. */
    {"Basic realm=\"https://123456789012.dkr.ecr.us-east-1.amazonaws.com/\","
     "service=\"ecr.amazonaws.com\"",
     0,
     1,
     {{BASIC, "https://123456789012.dkr.ecr.us-east-1.amazonaws.com/", "ecr.amazonaws.com", NULL,
       NULL}}},
    /* Case-insensitive scheme and names, token values, whitespace around '='. */
    {"bEaReR REALM=\"https://a/token\", Service=reg.example , sCoPe = \"x:y:pull\"",
     0,
     1,
     {{BEARER, "https://a/token", "reg.example", "x:y:pull", NULL}}},
    /* quoted-pair. */
    {"Basic realm=\"a \\\"quoted\\\" \\\\ realm\"",
     0,
     1,
     {{BASIC, "a \"quoted\" \\ realm", NULL, NULL, NULL}}},
    /* Several challenges in one header. */
    {"Basic realm=\"r1\", Bearer realm=\"https://a/token\",service=\"s\"",
     0,
     2,
     {{BASIC, "r1", NULL, NULL, NULL}, {BEARER, "https://a/token", "s", NULL, NULL}}},
    {"Negotiate, Basic realm=\"x\"",
     0,
     2,
     {{OTHER, NULL, NULL, NULL, NULL}, {BASIC, "x", NULL, NULL, NULL}}},
    /* token68 forms. */
    {"Negotiate YWJjZA==, Bearer realm=\"x\"",
     0,
     2,
     {{OTHER, NULL, NULL, NULL, NULL}, {BEARER, "x", NULL, NULL, NULL}}},
    {"NTLM TlRMTVNTUAACAAAADAAMADAAAAA1", 0, 1, {{OTHER, NULL, NULL, NULL, NULL}}},
    /* Empty list elements, unknown parameters, a trailing comma. */
    {", Bearer realm=\"x\",, charset=\"UTF-8\" ,service=\"y\",",
     0,
     1,
     {{BEARER, "x", "y", NULL, NULL}}},
    /* A scheme alone, then a parameterless next element that is a scheme. */
    {"Bearer realm=\"x\", Basic",
     0,
     2,
     {{BEARER, "x", NULL, NULL, NULL}, {BASIC, NULL, NULL, NULL, NULL}}},
    /* Tabs as whitespace, obs-text inside a quoted string. */
    {"Basic\trealm=\"caf\xc3\xa9\"", 0, 1, {{BASIC, "caf\xc3\xa9", NULL, NULL, NULL}}},
    {"", 0, 0, {{0}}},
    {" , ,", 0, 0, {{0}}},

    /* Malformed. */
    {"Bearer realm=\"https://auth.docker.io/token", RP_EPARSE, 0, {{0}}}, /* unterminated */
    {"Bearer realm=\"x\\", RP_EPARSE, 0, {{0}}},                          /* escape at the end */
    {"Bearer realm=\"x\" service=\"y\"", RP_EPARSE, 0, {{0}}},            /* missing comma */
    {"Bearer realm=x y", RP_EPARSE, 0, {{0}}},
    {"=\"x\"", RP_EPARSE, 0, {{0}}}, /* no scheme */
    {"\"Bearer\" realm=\"x\"", RP_EPARSE, 0, {{0}}},
    {"Bearer realm=\"a\x01"
     "b\"",
     RP_EPARSE,
     0,
     {{0}}}, /* control character */
    {"Bearer realm=\"a\\\x01"
     "b\"",
     RP_EPARSE,
     0,
     {{0}}},
    {"Bearer realm=\"x\",realm=\"y\"", RP_EPARSE, 0, {{0}}}, /* duplicate parameter */
    {"Bearer realm=\"x\", service=", RP_EPARSE, 0, {{0}}},   /* no value */
    {"Bearer realm=\"x\", =\"y\"", RP_EPARSE, 0, {{0}}},
    {"Bearer realm=\"x\";service=\"y\"", RP_EPARSE, 0, {{0}}},
    {"Bearer realm==\"x\"", RP_EPARSE, 0, {{0}}},
    {"Bearer@ realm=\"x\"", RP_EPARSE, 0, {{0}}},
};

static void check_str(const char *want, const char *got, const char *what, const char *input) {
  if (want == NULL && got == NULL)
    return;
  if (want == NULL || got == NULL || strcmp(want, got) != 0)
    fail_msg("%s: %s: want %s, got %s", input, what, want ? want : "(null)", got ? got : "(null)");
}

static void test_challenge_table(void **state) {
  for (size_t i = 0; i < sizeof(chal_cases) / sizeof(chal_cases[0]); i++) {
    const struct chal_case *c = &chal_cases[i];
    struct rp_auth_challenge *list = NULL;
    size_t n = 0;
    int rc = rp_auth_challenges_parse(c->input, strlen(c->input), &list, &n);
    if (rc != c->rc)
      fail_msg("%s: rc %d, want %d", c->input, rc, c->rc);
    if (n != c->n)
      fail_msg("%s: %zu challenges, want %zu", c->input, n, c->n);
    for (size_t j = 0; j < n; j++) {
      if (list[j].scheme != c->c[j].scheme)
        fail_msg("%s: challenge %zu scheme %d, want %d", c->input, j, list[j].scheme,
                 c->c[j].scheme);
      check_str(c->c[j].realm, list[j].realm, "realm", c->input);
      check_str(c->c[j].service, list[j].service, "service", c->input);
      check_str(c->c[j].scope, list[j].scope, "scope", c->input);
      check_str(c->c[j].error, list[j].error, "error", c->input);
    }
    rp_auth_challenges_free(list, n);
  }
}

/* A failed parse leaves what an earlier header produced untouched. */
static void test_challenge_append(void **state) {
  struct rp_auth_challenge *list = NULL;
  size_t n = 0;
  const char *a = "Basic realm=\"r\"", *bad = "Bearer realm=\"x", *b = "Bearer realm=\"https://t\"";
  assert_int_equal(rp_auth_challenges_parse(a, strlen(a), &list, &n), 0);
  assert_int_equal(rp_auth_challenges_parse(bad, strlen(bad), &list, &n), RP_EPARSE);
  assert_int_equal(n, 1);
  assert_int_equal(rp_auth_challenges_parse(b, strlen(b), &list, &n), 0);
  assert_int_equal(n, 2);
  const struct rp_auth_challenge *pick = rp_auth_challenge_pick(list, n);
  assert_non_null(pick);
  assert_int_equal(pick->scheme, RP_AUTH_BEARER);
  rp_auth_challenges_free(list, n);
}

static void test_challenge_pick(void **state) {
  struct rp_auth_challenge *list = NULL;
  size_t n = 0;
  /* A Bearer without a realm cannot be answered: Basic wins. */
  const char *v = "Bearer service=\"s\", Basic realm=\"r\", Negotiate";
  assert_int_equal(rp_auth_challenges_parse(v, strlen(v), &list, &n), 0);
  assert_int_equal(n, 3);
  assert_ptr_equal(rp_auth_challenge_pick(list, n), &list[1]);
  rp_auth_challenges_free(list, n);
  list = NULL;
  n = 0;
  v = "Negotiate, NTLM";
  assert_int_equal(rp_auth_challenges_parse(v, strlen(v), &list, &n), 0);
  assert_null(rp_auth_challenge_pick(list, n));
  rp_auth_challenges_free(list, n);
}

#define HDR(n, v)                                                                                  \
  { n, sizeof(n) - 1, v, sizeof(v) - 1 }

static void test_challenge_from_headers(void **state) {
  struct rp_auth_challenge ch;
  const struct rp_http_header h1[] = {
      HDR("Content-Type", "application/json"),
      HDR("www-authenticate", "Basic realm=\"Registry Realm\""),
      HDR("WWW-Authenticate",
          "Bearer realm=\"https://auth.docker.io/token\","
          "service=\"registry.docker.io\",scope=\"repository:library/alpine:pull\""),
  };
  assert_int_equal(rp_auth_challenge_from_headers(h1, 3, &ch), 0);
  assert_int_equal(ch.scheme, RP_AUTH_BEARER);
  assert_string_equal(ch.realm, "https://auth.docker.io/token");
  assert_string_equal(ch.service, "registry.docker.io");
  assert_string_equal(ch.scope, "repository:library/alpine:pull");
  rp_auth_challenge_clear(&ch);
  assert_null(ch.realm);

  const struct rp_http_header h2[] = {HDR("Content-Length", "0")};
  assert_int_equal(rp_auth_challenge_from_headers(h2, 1, &ch), UV_ENOENT);
  const struct rp_http_header h3[] = {HDR("WWW-Authenticate", "Bearer realm=\"x")};
  assert_int_equal(rp_auth_challenge_from_headers(h3, 1, &ch), RP_EPARSE);
  /* One malformed header does not hide a good one. */
  const struct rp_http_header h4[] = {HDR("WWW-Authenticate", "Bearer realm=\"x"),
                                      HDR("WWW-Authenticate", "Basic realm=\"ok\"")};
  assert_int_equal(rp_auth_challenge_from_headers(h4, 2, &ch), 0);
  assert_int_equal(ch.scheme, RP_AUTH_BASIC);
  assert_string_equal(ch.realm, "ok");
  rp_auth_challenge_clear(&ch);
}

/* ---- Basic, registry keys ------------------------------------------------- */

static void test_basic_value(void **state) {
  char *v = rp_auth_basic_value("user", "pass");
  assert_string_equal(v, "Basic dXNlcjpwYXNz");
  free(v);
  v = rp_auth_basic_value("a", "p:w:d");
  assert_string_equal(v, "Basic YTpwOnc6ZA==");
  free(v);
}

static void test_registry_key(void **state) {
  static const char *const cases[][2] = {
      {"https://index.docker.io/v1/", "docker.io"},
      {"index.docker.io", "docker.io"},
      {"registry-1.docker.io", "docker.io"},
      {"registry-1.docker.io:443", "docker.io"},
      {"Docker.IO", "docker.io"},
      {"registry.hub.docker.com", "docker.io"},
      {"ghcr.io", "ghcr.io"},
      {"https://quay.io/v2/", "quay.io"},
      {"http://LOCALHOST:5000/", "localhost:5000"},
      {"127.0.0.1:5000", "127.0.0.1:5000"},
      {"docker.io.evil.example", "docker.io.evil.example"},
      {"", ""},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    char out[256];
    rp_auth_registry_key(cases[i][0], out, sizeof(out));
    if (strcmp(out, cases[i][1]) != 0)
      fail_msg("key(%s) = %s, want %s", cases[i][0], out, cases[i][1]);
  }
}

/* ---- docker config.json ------------------------------------------------------ */

static const char docker_config[] =
    "{\n"
    "  \"auths\": {\n"
    "    \"https://index.docker.io/v1/\": {\"auth\": \"aHViOmh1YnBhc3M=\"},\n"
    "    \"ghcr.io\": {\"auth\": \"Z2g6Z2hwX3Rva2VuOndpdGg6Y29sb25z\"},\n"
    "    \"localhost:5000\": {\"username\": \"lu\", \"password\": \"lp\"},\n"
    "    \"quay.io\": {},\n"
    "    \"registry-1.docker.io\": {\"auth\": \"b3RoZXI6b3RoZXI=\"},\n"
    "    \"https://gcr.io\": {\"identitytoken\": \"refresh\"}\n"
    "  },\n"
    "  \"credsStore\": \"desktop\",\n"
    "  \"HttpHeaders\": {\"User-Agent\": \"Docker-Client/24\"}\n"
    "}\n";

static void test_creds_parse(void **state) {
  struct rp_auth_creds *c = NULL;
  char *err = NULL;
  const char *u, *p;
  assert_int_equal(rp_auth_creds_parse(docker_config, strlen(docker_config), "cfg.json", &c, &err),
                   0);
  assert_null(err);
  assert_int_equal(rp_auth_creds_count(c), 3);
  /* Docker Hub under every spelling; the first entry wins over the alias. */
  static const char *const hub[] = {"docker.io", "registry-1.docker.io", "index.docker.io",
                                    "https://index.docker.io/v1/"};
  for (size_t i = 0; i < 4; i++) {
    assert_int_equal(rp_auth_creds_lookup(c, hub[i], &u, &p), 0);
    assert_string_equal(u, "hub");
    assert_string_equal(p, "hubpass");
  }
  assert_int_equal(rp_auth_creds_lookup(c, "ghcr.io", &u, &p), 0);
  assert_string_equal(u, "gh");
  assert_string_equal(p, "ghp_token:with:colons"); /* split at the first colon */
  assert_int_equal(rp_auth_creds_lookup(c, "LOCALHOST:5000", &u, &p), 0);
  assert_string_equal(u, "lu");
  assert_string_equal(p, "lp");
  assert_int_equal(rp_auth_creds_lookup(c, "quay.io", &u, &p), UV_ENOENT); /* {} placeholder */
  assert_int_equal(rp_auth_creds_lookup(c, "gcr.io", &u, &p), UV_ENOENT);
  assert_int_equal(rp_auth_creds_lookup(c, "localhost:5001", &u, &p), UV_ENOENT);
  rp_auth_creds_destroy(c);
  rp_auth_creds_destroy(NULL);
}

static void test_creds_errors(void **state) {
  static const struct {
    const char *json;
    const char *err_part;
  } cases[] = {
      {"{\"auths\": {\"a\": {\"auth\": \"!!!\"}}}",
       "cfg.json: auths.\"a\": \"auth\" is not valid base64"},
      {"{\"auths\": {\"a\": {\"auth\": \"dXNlcnBhc3M=\"}}}", "does not decode to user:password"},
      {"{\"auths\": {\"a\": {\"auth\": 5}}}", "\"auth\" is not a string"},
      {"{\"auths\": {\"a\": 5}}", "auths.\"a\" is not an object"},
      {"{\"auths\": []}", "\"auths\" is not an object"},
      {"[1]", "not a JSON object"},
      {"{\n\"auths\": {\n", "cfg.json:3:"},
      {"{\"auths\": {}, \"auths\": {}}", "cfg.json:1:"}, /* duplicate keys */
      {"", "cfg.json:"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    struct rp_auth_creds *c = NULL;
    char *err = NULL;
    int rc = rp_auth_creds_parse(cases[i].json, strlen(cases[i].json), "cfg.json", &c, &err);
    if (rc != RP_ECONFIG)
      fail_msg("%s: rc %d", cases[i].json, rc);
    assert_null(c);
    if (err == NULL || strstr(err, cases[i].err_part) == NULL)
      fail_msg("%s: err %s, want it to contain %s", cases[i].json, err ? err : "(null)",
               cases[i].err_part);
    free(err);
  }
  /* No "auths" at all is fine: nothing configured. */
  struct rp_auth_creds *c = NULL;
  assert_int_equal(rp_auth_creds_parse("{}", 2, "x", &c, NULL), 0);
  assert_int_equal(rp_auth_creds_count(c), 0);
  rp_auth_creds_destroy(c);
}

static void test_creds_load(void **state) {
  char path[] = "/tmp/rp-test-auth-XXXXXX";
  int fd = mkstemp(path);
  struct rp_auth_creds *c = NULL;
  char *err = NULL;
  const char *u, *p;
  assert_true(fd >= 0);
  assert_int_equal(write(fd, docker_config, strlen(docker_config)), (ssize_t)strlen(docker_config));
  close(fd);
  assert_int_equal(rp_auth_creds_load(path, &c, &err), 0);
  assert_int_equal(rp_auth_creds_lookup(c, "docker.io", &u, &p), 0);
  rp_auth_creds_destroy(c);
  unlink(path);
  c = NULL;
  assert_int_equal(rp_auth_creds_load(path, &c, &err), UV_ENOENT);
  assert_non_null(err);
  assert_non_null(strstr(err, path));
  free(err);
}

/* ---- the realm rule: address classes and realm URLs ------------------------------ */

#define LB RP_ADDR_LOOPBACK
#define LL RP_ADDR_LINK_LOCAL
#define PV RP_ADDR_PRIVATE
#define UN RP_ADDR_UNSPECIFIED
#define RS RP_ADDR_RESERVED
#define PB RP_ADDR_PUBLIC

static void test_addr_class(void **state) {
  static const struct {
    const char *host;
    int want; /* -1: a name, not an address */
  } cases[] = {
      {"127.0.0.1", LB},
      {"127.255.255.254", LB},
      {"::1", LB},
      {"[::1]", LB},
      {"::ffff:127.0.0.1", LB}, /* IPv4-mapped: unmapped first */
      {"[::ffff:7f00:1]", LB},
      {"localhost", LB},
      {"LocalHost.", LB},
      {"127.1", LB}, /* resolvers read short and hex forms too */
      {"0x7f000001", LB},
      {"2130706433", LB},
      {"169.254.169.254", LL},
      {"169.254.0.1", LL},
      {"[fe80::1]", LL},
      {"fe80::1%eth0", LL},
      {"febf:ffff::1", LL},
      {"::ffff:169.254.169.254", LL},
      {"64:ff9b::a9fe:a9fe", LL}, /* NAT64 to 169.254.169.254 */
      {"10.1.2.3", PV},
      {"172.16.0.1", PV},
      {"172.31.255.255", PV},
      {"192.168.1.1", PV},
      {"100.64.0.1", PV},
      {"100.127.255.255", PV},
      {"198.18.0.1", PV},
      {"192.0.0.170", PV},
      {"fc00::1", PV},
      {"fd12:3456::1", PV},
      {"fec0::1", PV},
      {"64:ff9b:1::1", PV},
      {"::ffff:10.0.0.1", PV},
      {"0.0.0.0", UN},
      {"0.1.2.3", UN},
      {"::", UN},
      {"[::]", UN},
      {"::ffff:0.0.0.0", UN},
      {"224.0.0.1", RS},
      {"255.255.255.255", RS},
      {"240.0.0.1", RS},
      {"192.0.2.1", RS},
      {"ff02::1", RS},
      {"2001:db8::1", RS},
      {"::127.0.0.1", RS}, /* IPv4-compatible, deprecated */
      {"100::1", RS},
      {"8.8.8.8", PB},
      {"172.15.255.255", PB},
      {"172.32.0.1", PB},
      {"100.63.255.255", PB},
      {"100.128.0.1", PB},
      {"169.253.255.255", PB},
      {"11.0.0.1", PB},
      {"2606:4700::1111", PB},
      {"64:ff9b::808:808", PB},
      {"::ffff:8.8.8.8", PB},
      {"fbff::1", PB},
      {"fe7f::1", PB},
      {"registry.example", -1},
      {"localhost.example", -1},
      {"127.0.0.1.nip.io", -1},
      {"", -1},
      {"[", -1},
      {"[::1", -1},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    int got = rp_upstream_host_class(cases[i].host);
    if (got != cases[i].want)
      fail_msg("%s: class %d want %d", cases[i].host, got, cases[i].want);
  }
  /* The same through socket addresses, as the engine sees them. */
  struct sockaddr_in in4 = {.sin_family = AF_INET};
  struct sockaddr_in6 in6 = {.sin6_family = AF_INET6};
  assert_int_equal(inet_pton(AF_INET, "169.254.169.254", &in4.sin_addr), 1);
  assert_int_equal(rp_upstream_addr_class((struct sockaddr *)&in4), LL);
  assert_int_equal(inet_pton(AF_INET, "93.184.216.34", &in4.sin_addr), 1);
  assert_int_equal(rp_upstream_addr_class((struct sockaddr *)&in4), PB);
  assert_int_equal(inet_pton(AF_INET6, "::ffff:192.168.0.1", &in6.sin6_addr), 1);
  assert_int_equal(rp_upstream_addr_class((struct sockaddr *)&in6), PV);
  assert_int_equal(inet_pton(AF_INET6, "::1", &in6.sin6_addr), 1);
  assert_int_equal(rp_upstream_addr_class((struct sockaddr *)&in6), LB);
  struct sockaddr other = {.sa_family = AF_UNIX};
  assert_int_equal(rp_upstream_addr_class(&other), RS);
  assert_string_equal(rp_upstream_addr_class_name(RP_ADDR_LINK_LOCAL), "link-local");
}

#define BIT(c) (1u << (c))

static void test_realm_check(void **state) {
  static const struct {
    const char *realm, *registry, *registry_ip;
    int rc;
    unsigned internal_ok;
    const char *why; /* a part of the reason */
  } cases[] = {
      /* https anywhere public; names are checked at connect time. */
      {"https://auth.docker.io/token", "docker.io", "54.1.2.3", 0, 0, NULL},
      {"https://auth.docker.io/token", "registry-1.docker.io:443", NULL, 0, 0, NULL},
      {"HTTPS://Auth.Example/token", "r.example", NULL, 0, 0, NULL},
      {"https://8.8.8.8/token", "r.example", NULL, 0, 0, NULL},
      /* A loopback registry (the tests' set-up) may have a loopback realm. */
      {"https://auth.docker.io/token", "docker.io", "127.0.0.1", 0, BIT(LB), NULL},
      {"https://127.0.0.1:5001/token", "docker.io", "127.0.0.1", 0, BIT(LB), NULL},
      {"https://[::1]:5001/token", "r.example", "127.0.0.1", 0, BIT(LB), NULL},
      {"https://localhost:5001/token", "127.0.0.1:5000", NULL, 0, BIT(LB), NULL},
      {"https://127.0.0.1/token", "localhost:5000", NULL, 0, BIT(LB), NULL},
      {"https://10.0.0.9/token", "registry.lan:5000", "10.0.0.5", 0, BIT(PV), NULL},
      {"https://[fd00::9]/token", "registry.lan", "192.168.1.5", 0, BIT(PV), NULL},
      {"https://10.0.0.9/token", "10.0.0.5:5000", NULL, 0, BIT(PV), NULL},
      {"https://10.0.0.9/token", "[::1]:5000", "10.0.0.5", 0, BIT(LB) | BIT(PV), NULL},
      /* ... but never another internal class, nor any without one. */
      {"https://10.1.2.3/token", "docker.io", "127.0.0.1", RP_EDENIED, 0, "private"},
      {"https://169.254.169.254/token", "docker.io", "127.0.0.1", RP_EDENIED, 0, "link-local"},
      {"https://169.254.169.254/token", "r.example", NULL, RP_EDENIED, 0, "address is unknown"},
      {"https://[::ffff:169.254.169.254]/token", "r.example", "10.0.0.5", RP_EDENIED, 0,
       "link-local"},
      {"https://[fe80::1]/token", "r.example", "10.0.0.5", RP_EDENIED, 0, "link-local"},
      {"https://127.0.0.1:2080/admin", "r.example", "54.1.2.3", RP_EDENIED, 0, "loopback"},
      {"https://localhost/token", "r.example", NULL, RP_EDENIED, 0, "loopback"},
      {"https://0.0.0.0:2080/token", "r.example", "127.0.0.1", RP_EDENIED, 0, "unspecified"},
      {"https://2130706433/token", "r.example", NULL, RP_EDENIED, 0, "loopback"},
      {"https://user:pw@169.254.169.254/token", "r.example", NULL, RP_EDENIED, 0, "link-local"},
      /* http only on the registry's own host, whatever the port. */
      {"http://registry.lan:5001/token", "registry.lan:5000", "10.0.0.5", 0, BIT(PV), NULL},
      {"http://REGISTRY.lan/token", "http://registry.lan:5000", NULL, 0, 0, NULL},
      {"http://127.0.0.1:1/token", "127.0.0.1:9", NULL, 0, BIT(LB), NULL},
      {"http://registry-1.docker.io/token", "docker.io", NULL, 0, 0, NULL},
      {"http://169.254.169.254/token", "docker.io", "127.0.0.1", RP_EDENIED, 0, "plain-http"},
      {"http://other-host.example/token", "registry.lan:5000", NULL, RP_EDENIED, 0,
       "not on the registry's own host registry.lan"},
      {"http://auth.docker.io/token", "docker.io", NULL, RP_EDENIED, 0, "plain-http"},
      {"http://registry.lan.evil/token", "registry.lan", NULL, RP_EDENIED, 0, "plain-http"},
      {"http://evil@registry.lan/token", "other.lan", NULL, RP_EDENIED, 0, "plain-http"},
      /* Not http(s). */
      {"ftp://r.example/token", "r.example", NULL, RP_EPARSE, 0, "http(s)"},
      {"file:///etc/passwd", "r.example", NULL, RP_EPARSE, 0, "http(s)"},
      {"Registry Realm", "r.example", NULL, RP_EPARSE, 0, "http(s)"},
      {"", "r.example", NULL, RP_EPARSE, 0, "without a realm"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    struct rp_auth_challenge ch = {.scheme = RP_AUTH_BEARER};
    char why[300];
    unsigned ok = 12345;
    ch.realm = (char *)cases[i].realm;
    ch.registry_ip = (char *)cases[i].registry_ip;
    int rc = rp_auth_realm_check(&ch, cases[i].registry, &ok, why, sizeof(why));
    if (rc != cases[i].rc || ok != cases[i].internal_ok)
      fail_msg("%s for %s (%s): rc %d ok %#x want %d %#x (%s)", cases[i].realm, cases[i].registry,
               cases[i].registry_ip ? cases[i].registry_ip : "-", rc, ok, cases[i].rc,
               cases[i].internal_ok, why);
    if (cases[i].why != NULL && strstr(why, cases[i].why) == NULL)
      fail_msg("%s for %s: reason \"%s\" lacks \"%s\"", cases[i].realm, cases[i].registry, why,
               cases[i].why);
  }
}

/* The registry's address travels with its challenge. */
static void test_challenge_registry_ip(void **state) {
  struct rp_auth_challenge a = {.scheme = RP_AUTH_BEARER}, b;
  a.realm = strdup("https://auth.example/token");
  a.registry_ip = strdup("10.0.0.5");
  assert_int_equal(rp_auth_challenge_copy(&b, &a), 0);
  assert_string_equal(b.registry_ip, "10.0.0.5");
  rp_auth_challenge_clear(&a);
  assert_null(a.registry_ip);
  rp_auth_challenge_clear(&b);
  const struct rp_http_header h[] = {HDR("WWW-Authenticate", "Bearer realm=\"https://a/t\"")};
  assert_int_equal(rp_auth_challenge_from_headers(h, 1, &b), 0);
  assert_null(b.registry_ip); /* unknown: only rp_auth_challenge_from_response knows it */
  rp_auth_challenge_clear(&b);
}

/* ---- token URLs and answers ------------------------------------------------------ */

static void test_token_url(void **state) {
  static const struct {
    const char *realm, *service, *scope, *account, *want;
  } cases[] = {
      {"https://auth.docker.io/token", "registry.docker.io", "repository:library/alpine:pull", NULL,
       "https://auth.docker.io/token?service=registry.docker.io&scope=repository%3Alibrary%"
       "2Falpine%3Apull"},
      {"https://ghcr.io/token", "ghcr.io", NULL, NULL, "https://ghcr.io/token?service=ghcr.io"},
      {"https://a/token?x=1", "s", "repository:a:pull repository:b:pull,push", "me@x",
       "https://a/token?x=1&service=s&scope=repository%3Aa%3Apull&scope=repository%3Ab%3Apull%"
       "2Cpush&account=me%40x"},
      {"http://127.0.0.1:5001/auth?", NULL, "registry:catalog:*", NULL,
       "http://127.0.0.1:5001/auth?scope=registry%3Acatalog%3A%2A"},
      {"https://a/token", NULL, NULL, NULL, "https://a/token"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    char *url = NULL;
    assert_int_equal(
        rp_auth_token_url(cases[i].realm, cases[i].service, cases[i].scope, cases[i].account, &url),
        0);
    assert_string_equal(url, cases[i].want);
    free(url);
  }
  char *url = NULL;
  assert_int_equal(rp_auth_token_url("ftp://a/token", "s", NULL, NULL, &url), RP_EPARSE);
  assert_int_equal(rp_auth_token_url("Registry Realm", "s", NULL, NULL, &url), RP_EPARSE);
  assert_int_equal(rp_auth_token_url("https://a/to ken", "s", NULL, NULL, &url), RP_EPARSE);
  assert_int_equal(rp_auth_token_url("https://a/\r\nX: y", "s", NULL, NULL, &url), RP_EPARSE);
  assert_null(url);
}

static void test_token_response(void **state) {
  static const struct {
    const char *body;
    int rc;
    const char *token;
    uint64_t ttl;
  } cases[] = {
      {"{\"token\":\"abc.def.ghi\",\"access_token\":\"abc.def.ghi\",\"expires_in\":300,"
       "\"issued_at\":\"2023-01-01T00:00:00Z\"}",
       0, "abc.def.ghi", 300},
      {"{\"access_token\":\"x\"}", 0, "x", 60},
      {"{\"token\":\"\",\"access_token\":\"y\",\"expires_in\":0}", 0, "y", 60},
      {"{\"token\":\"t\",\"expires_in\":\"300\"}", 0, "t", 60},
      {"{\"token\":\"t\",\"expires_in\":1e9}", 0, "t", 86400},
      {"{\"token\":\"t\",\"expires_in\":120.5}", 0, "t", 120},
      {"{\"token\":\"a b\"}", RP_EPARSE, NULL, 0},
      {"{\"token\":\"a\\r\\nX: y\"}", RP_EPARSE, NULL, 0},
      {"{\"token\":5}", RP_EPARSE, NULL, 0},
      {"{}", RP_EPARSE, NULL, 0},
      {"[\"token\"]", RP_EPARSE, NULL, 0},
      {"<html>nope</html>", RP_EPARSE, NULL, 0},
      {"", RP_EPARSE, NULL, 0},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    char *tok = NULL;
    uint64_t ttl = 0;
    int rc = rp_auth_parse_token_response(cases[i].body, strlen(cases[i].body), &tok, &ttl);
    if (rc != cases[i].rc)
      fail_msg("%s: rc %d want %d", cases[i].body, rc, cases[i].rc);
    if (rc == 0) {
      assert_string_equal(tok, cases[i].token);
      assert_int_equal(ttl, cases[i].ttl);
    } else {
      assert_null(tok);
    }
    free(tok);
  }
}

/* ---- the client, on a real loop -------------------------------------------------- */

struct answer {
  int calls;
  int status;
  char value[256];
  char reason[256];
  uv_loop_t *loop;
  int inside_get; /* set around rp_auth_get: callbacks must not run then */
};

static void on_answer(void *data, int status, const char *authorization, const char *reason) {
  struct answer *a = data;
  assert_false(a->inside_get);
  a->calls++;
  a->status = status;
  snprintf(a->value, sizeof(a->value), "%s", authorization ? authorization : "");
  snprintf(a->reason, sizeof(a->reason), "%s", reason ? reason : "");
}

struct client {
  uv_loop_t loop;
  struct rp_upstream *up;
  struct rp_auth *auth;
  char cfg[64];
};

/* tokens.example is reached on 127.0.0.1 port 1 (nothing listens there),
 * the way the integration tests map registry names to loopback. */
static struct rp_connect_to to_loopback = {
    .host = "tokens.example", .port = 443, .to_addr = "127.0.0.1", .to_port = 1};

static void client_open(struct client *c, int with_creds) {
  struct rp_upstream_opts uo = {
      .connect_timeout_ms = 2000, .connect_to = &to_loopback, .n_connect_to = 1};
  struct rp_auth_opts ao = {0};
  char *err = NULL;
  assert_int_equal(uv_loop_init(&c->loop), 0);
  assert_int_equal(rp_upstream_create(&c->loop, &uo, &c->up), 0);
  ao.up = c->up;
  c->cfg[0] = '\0';
  if (with_creds) {
    snprintf(c->cfg, sizeof(c->cfg), "/tmp/rp-test-auth-XXXXXX");
    int fd = mkstemp(c->cfg);
    assert_true(fd >= 0);
    assert_true(write(fd, docker_config, strlen(docker_config)) > 0);
    close(fd);
    ao.docker_config = c->cfg;
  }
  assert_int_equal(rp_auth_create(&ao, &c->auth, &err), 0);
}

static void client_close(struct client *c) {
  rp_auth_destroy(c->auth);
  rp_upstream_destroy(c->up);
  uv_run(&c->loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&c->loop), 0);
  if (c->cfg[0] != '\0')
    unlink(c->cfg);
}

static struct rp_auth_req *get(struct client *c, struct answer *a, const char *registry,
                               const char *scope, const char *challenge, unsigned flags) {
  struct rp_auth_challenge *list = NULL;
  size_t n = 0;
  assert_int_equal(rp_auth_challenges_parse(challenge, strlen(challenge), &list, &n), 0);
  assert_int_equal(n, 1);
  a->inside_get = 1;
  struct rp_auth_req *r = rp_auth_get(c->auth, registry, scope, &list[0], flags, on_answer, a);
  a->inside_get = 0;
  rp_auth_challenges_free(list, n); /* the request keeps its own copy */
  assert_non_null(r);
  return r;
}

static void test_client_basic(void **state) {
  struct client c;
  struct answer a = {0}, b = {0}, d = {0};
  client_open(&c, 1);
  get(&c, &a, "localhost:5000", "repository:x/y:pull", "Basic realm=\"Registry Realm\"", 0);
  get(&c, &b, "localhost:5000", "repository:x/y:pull", "Basic realm=\"Registry Realm\"",
      RP_AUTH_ANONYMOUS);
  get(&c, &d, "elsewhere:5000", NULL, "Basic realm=\"Registry Realm\"", 0);
  assert_int_equal(a.calls + b.calls + d.calls, 0); /* never inside rp_auth_get */
  uv_run(&c.loop, UV_RUN_DEFAULT);
  assert_int_equal(a.calls, 1);
  assert_int_equal(a.status, 0);
  assert_string_equal(a.value, "Basic bHU6bHA="); /* lu:lp */
  assert_int_equal(b.calls, 1);
  assert_int_equal(b.status, RP_EDENIED);
  assert_non_null(strstr(b.reason, "anonymous"));
  assert_int_equal(d.calls, 1);
  assert_int_equal(d.status, RP_EDENIED);
  assert_non_null(strstr(d.reason, "elsewhere:5000"));
  /* Remembered for the next first try. */
  char *v = rp_auth_cached(c.auth, "LOCALHOST:5000", "repository:x/y:pull", 0);
  assert_non_null(v);
  assert_string_equal(v, "Basic bHU6bHA=");
  free(v);
  rp_auth_invalidate(c.auth, "localhost:5000", "repository:x/y:pull", 0);
  assert_null(rp_auth_cached(c.auth, "localhost:5000", "repository:x/y:pull", 0));
  client_close(&c);
}

static void test_client_errors_and_cancel(void **state) {
  struct client c;
  struct answer a = {0}, b = {0}, d = {0}, e = {0};
  client_open(&c, 0);
  get(&c, &a, "r.example", NULL, "Bearer service=\"s\"", 0);
  get(&c, &b, "r.example", NULL, "Negotiate", 0);
  get(&c, &d, "r.example", NULL, "Bearer realm=\"ftp://r.example/token\"", 0);
  struct rp_auth_req *r = get(&c, &e, "r.example", NULL, "Basic realm=\"x\"", 0);
  rp_auth_cancel(r);
  uv_run(&c.loop, UV_RUN_DEFAULT);
  assert_int_equal(a.calls, 1);
  assert_int_equal(a.status, RP_EPARSE);
  assert_int_equal(b.calls, 1);
  assert_int_equal(b.status, RP_EINVAL);
  assert_int_equal(d.calls, 1);
  assert_int_equal(d.status, RP_EPARSE);
  assert_int_equal(e.calls, 0);
  client_close(&c);
}

/* Three askers, one token fetch: the realm refuses connections, so all three
 * get that error, and nothing is cached. */
static void test_client_single_flight(void **state) {
  struct client c;
  struct answer a[4] = {{0}};
  struct rp_auth_stats st;
  const char *ch = "Bearer realm=\"http://127.0.0.1:1/token\",service=\"s\","
                   "scope=\"repository:x/y:pull\"";
  client_open(&c, 0);
  for (int i = 0; i < 3; i++)
    get(&c, &a[i], "127.0.0.1:9", NULL, ch, 0);
  /* Another scope is another key, and a cancelled asker stays silent. */
  struct rp_auth_req *r = get(&c, &a[3], "127.0.0.1:9", "repository:other:pull", ch, 0);
  rp_auth_cancel(r);
  uv_run(&c.loop, UV_RUN_DEFAULT);
  rp_auth_get_stats(c.auth, &st);
  assert_int_equal(st.token_fetches, 2);
  assert_int_equal(st.coalesced, 2);
  for (int i = 0; i < 3; i++) {
    assert_int_equal(a[i].calls, 1);
    assert_int_equal(a[i].status, UV_ECONNREFUSED);
    assert_non_null(strstr(a[i].reason, "127.0.0.1:1"));
  }
  assert_int_equal(a[3].calls, 0);
  assert_null(rp_auth_cached(c.auth, "127.0.0.1:9", "repository:x/y:pull", 0));
  client_close(&c);
}

/* Credentials go to a plain-http realm only on the registry's own host. */
static void test_client_plain_http_realm(void **state) {
  struct client c;
  struct answer a = {0}, b = {0};
  struct rp_auth_stats st;
  client_open(&c, 1);
  get(&c, &a, "localhost:5000", NULL, "Bearer realm=\"http://tokens.example:1/token\"", 0);
  get(&c, &b, "localhost:5000", NULL, "Bearer realm=\"http://localhost:1/token\"", 0);
  uv_run(&c.loop, UV_RUN_DEFAULT);
  assert_int_equal(a.calls, 1);
  assert_int_equal(a.status, RP_EDENIED);
  assert_non_null(strstr(a.reason, "plain-http"));
  assert_int_equal(b.calls, 1);
  assert_int_equal(b.status, UV_ECONNREFUSED); /* tried: same host, port 1 refuses */
  rp_auth_get_stats(c.auth, &st);
  assert_int_equal(st.token_fetches, 1);
  client_close(&c);
}

/* Refused realms: checked before any token request (the counter does not
 * move), and names that lead to a refused address stop at the socket. */
static void test_client_realm_refused(void **state) {
  struct client c;
  struct answer a = {0}, b = {0}, d = {0}, e = {0}, f = {0};
  struct rp_auth_stats st;
  client_open(&c, 1);
  get(&c, &a, "localhost:5000", NULL, "Bearer realm=\"https://169.254.169.254/latest\"", 0);
  get(&c, &b, "localhost:5000", NULL, "Bearer realm=\"http://169.254.169.254/latest\"", 0);
  get(&c, &d, "r.example", NULL, "Bearer realm=\"https://10.1.2.3/token\"", 0);
  get(&c, &e, "r.example", NULL, "Bearer realm=\"https://localhost:1/token\"", 0);
  rp_auth_get_stats(c.auth, &st);
  assert_int_equal(st.token_fetches, 0);
  uv_run(&c.loop, UV_RUN_DEFAULT);
  assert_int_equal(a.status, RP_EDENIED);
  assert_non_null(strstr(a.reason, "link-local"));
  assert_int_equal(b.status, RP_EDENIED);
  assert_non_null(strstr(b.reason, "plain-http"));
  assert_int_equal(d.status, RP_EDENIED);
  assert_non_null(strstr(d.reason, "private"));
  assert_int_equal(e.status, RP_EDENIED);
  assert_non_null(strstr(e.reason, "loopback"));

  /* A name mapped to loopback: refused by the engine before connecting... */
  memset(&e, 0, sizeof(e));
  get(&c, &e, "r.example", NULL, "Bearer realm=\"https://tokens.example/token\"", 0);
  /* ...unless the registry answered from loopback itself: then it is tried. */
  {
    struct rp_auth_challenge ch = {.scheme = RP_AUTH_BEARER};
    ch.realm = "https://tokens.example/token";
    ch.registry_ip = "127.0.0.1";
    assert_non_null(rp_auth_get(c.auth, "r2.example", NULL, &ch, 0, on_answer, &f));
  }
  uv_run(&c.loop, UV_RUN_DEFAULT);
  assert_int_equal(e.calls, 1);
  assert_int_equal(e.status, RP_EDENIED);
  assert_non_null(strstr(e.reason, "refusing to connect to 127.0.0.1 (loopback address)"));
  assert_int_equal(f.calls, 1);
  assert_int_equal(f.status, UV_ECONNREFUSED);
  rp_auth_get_stats(c.auth, &st);
  assert_int_equal(st.token_fetches, 2);
  assert_null(rp_auth_cached(c.auth, "r.example", "", 0));
  client_close(&c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_challenge_table),
      cmocka_unit_test(test_challenge_append),
      cmocka_unit_test(test_challenge_pick),
      cmocka_unit_test(test_challenge_from_headers),
      cmocka_unit_test(test_basic_value),
      cmocka_unit_test(test_registry_key),
      cmocka_unit_test(test_creds_parse),
      cmocka_unit_test(test_creds_errors),
      cmocka_unit_test(test_creds_load),
      cmocka_unit_test(test_addr_class),
      cmocka_unit_test(test_realm_check),
      cmocka_unit_test(test_challenge_registry_ip),
      cmocka_unit_test(test_token_url),
      cmocka_unit_test(test_token_response),
      cmocka_unit_test(test_client_basic),
      cmocka_unit_test(test_client_errors_and_cancel),
      cmocka_unit_test(test_client_single_flight),
      cmocka_unit_test(test_client_plain_http_realm),
      cmocka_unit_test(test_client_realm_refused),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
