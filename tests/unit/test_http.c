/* Request targets and the strict request-head glue (contract §2, §7). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "regproxy/error.h"
#include "regproxy/http.h"

struct target_case {
  const char *in;
  int connect;
  int ok;
  const char *host;
  unsigned port;
  const char *path;
};

static const struct target_case target_cases[] = {
    {"registry-1.docker.io:443", 1, 1, "registry-1.docker.io", 443, NULL},
    {"Registry-1.Docker.IO.:443", 1, 1, "registry-1.docker.io", 443, NULL},
    {"127.0.0.1:8443", 1, 1, "127.0.0.1", 8443, NULL},
    {"[::1]:443", 1, 1, "::1", 443, NULL},
    {"[2001:db8::1]:65535", 1, 1, "2001:db8::1", 65535, NULL},
    {"example.com", 1, 0, NULL, 0, NULL},
    {"example.com:", 1, 0, NULL, 0, NULL},
    {"example.com:0", 1, 0, NULL, 0, NULL},
    {"example.com:65536", 1, 0, NULL, 0, NULL},
    {"example.com:+443", 1, 0, NULL, 0, NULL},
    {"example.com:443x", 1, 0, NULL, 0, NULL},
    {"user@example.com:443", 1, 0, NULL, 0, NULL},
    {"user:pw@example.com:443", 1, 0, NULL, 0, NULL},
    {"[fe80::1%eth0]:443", 1, 0, NULL, 0, NULL},
    {"[::1:443", 1, 0, NULL, 0, NULL},
    {"[nothex]:443", 1, 0, NULL, 0, NULL},
    {"::1:443", 1, 0, NULL, 0, NULL},
    {"exa mple.com:443", 1, 0, NULL, 0, NULL},
    {".example.com:443", 1, 0, NULL, 0, NULL},
    {"a..b:443", 1, 0, NULL, 0, NULL},
    {":443", 1, 0, NULL, 0, NULL},
    {"http://example.com:443", 1, 0, NULL, 0, NULL},
    {"http://example.com/a?b=c", 0, 1, "example.com", 80, "/a?b=c"},
    {"HTTP://Example.COM:8080", 0, 1, "example.com", 8080, "/"},
    {"http://[::1]:5000/v2/", 0, 1, "::1", 5000, "/v2/"},
    {"http://example.com?x=1", 0, 1, "example.com", 80, "?x=1"},
    {"http://u:p@example.com/", 0, 0, NULL, 0, NULL},
    {"https://example.com/", 0, 1, "example.com", 443, "/"},
    {"ftp://example.com/", 0, 0, NULL, 0, NULL},
    {"/v2/library/alpine/manifests/3.18", 0, 1, "", 0, "/v2/library/alpine/manifests/3.18"},
    {"example.com:443", 0, 0, NULL, 0, NULL},
};

static void test_targets(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof(target_cases) / sizeof(target_cases[0]); i++) {
    const struct target_case *tc = &target_cases[i];
    struct rp_target t;
    const char *why = NULL;
    int rc = rp_target_parse(tc->in, strlen(tc->in), tc->connect, &t, &why);
    if (!tc->ok) {
      if (rc == 0)
        fail_msg("case %zu '%s': accepted, want rejected", i, tc->in);
      assert_non_null(why);
      continue;
    }
    if (rc != 0)
      fail_msg("case %zu '%s': rejected (%s)", i, tc->in, why);
    assert_string_equal(t.host, tc->host);
    assert_int_equal(t.port, tc->port);
    if (tc->path != NULL) {
      assert_int_equal(t.path_len, strlen(tc->path));
      assert_memory_equal(t.path, tc->path, t.path_len);
    }
  }
}

static void test_hostport(void **state) {
  struct rp_target t;
  const char *why;
  char buf[64];
  (void)state;
  assert_int_equal(rp_target_parse_authority("[::1]:443", 9, &t, &why), 0);
  rp_target_hostport(&t, true, buf, sizeof(buf));
  assert_string_equal(buf, "[::1]:443");
  rp_target_hostport(&t, false, buf, sizeof(buf));
  assert_string_equal(buf, "[::1]");
}

/* A Host field value (RFC 9112 §3.2): every form a client can send, and
 * the broken ones that once crashed the MITM Host check (finding 3). */
struct host_case {
  const char *in;
  uint16_t default_port;
  int ok;
  const char *host;
  unsigned port;
  int ip6;
};

static const struct host_case host_cases[] = {
    {"registry-1.docker.io", 443, 1, "registry-1.docker.io", 443, 0},
    {"Registry-1.Docker.IO.", 443, 1, "registry-1.docker.io", 443, 0},
    {"registry.lan:5000", 443, 1, "registry.lan", 5000, 0},
    {"localhost", 80, 1, "localhost", 80, 0},
    {"127.0.0.1:2080", 80, 1, "127.0.0.1", 2080, 0},
    {"[::1]", 443, 1, "::1", 443, 1},
    {"[2001:DB8::1]:8443", 443, 1, "2001:db8::1", 8443, 1},
    {"[", 443, 0, NULL, 0, 0},
    {"[::1", 443, 0, NULL, 0, 0},
    {"[]", 443, 0, NULL, 0, 0},
    {"[::1]x", 443, 0, NULL, 0, 0},
    {"[::1]:", 443, 0, NULL, 0, 0},
    {"[::1]:0", 443, 0, NULL, 0, 0},
    {"[x]", 443, 0, NULL, 0, 0},
    {"[fe80::1%25eth0]", 443, 0, NULL, 0, 0},
    {"]", 443, 0, NULL, 0, 0},
    {"host:", 443, 0, NULL, 0, 0},
    {":443", 443, 0, NULL, 0, 0},
    {":", 443, 0, NULL, 0, 0},
    {"host:99999", 443, 0, NULL, 0, 0},
    {"host:443:1", 443, 0, NULL, 0, 0},
    {"host:-1", 443, 0, NULL, 0, 0},
    {"::1", 443, 0, NULL, 0, 0},
    {"a b", 443, 0, NULL, 0, 0},
    {"a\tb", 443, 0, NULL, 0, 0},
    {"", 443, 0, NULL, 0, 0},
    {".", 443, 0, NULL, 0, 0},
    {"user@host", 443, 0, NULL, 0, 0},
    {"host/path", 443, 0, NULL, 0, 0},
    {"host?q", 443, 0, NULL, 0, 0},
    {"a..b", 443, 0, NULL, 0, 0},
};

static void test_host_parse(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof(host_cases) / sizeof(host_cases[0]); i++) {
    const struct host_case *hc = &host_cases[i];
    struct rp_target t;
    const char *why = NULL;
    int rc = rp_http_host_parse(hc->in, strlen(hc->in), hc->default_port, &t, &why);
    if (!hc->ok) {
      if (rc == 0)
        fail_msg("case %zu '%s': accepted, want rejected", i, hc->in);
      assert_int_equal(rc, RP_EPARSE);
      assert_non_null(why);
      continue;
    }
    if (rc != 0)
      fail_msg("case %zu '%s': rejected (%s)", i, hc->in, why);
    assert_string_equal(t.host, hc->host);
    assert_int_equal(t.port, hc->port);
    assert_int_equal(t.host_is_ip6, hc->ip6);
  }
  {
    /* Lengths are honoured: nothing past n is read, a NUL inside is no end. */
    struct rp_target t;
    const char *why = NULL;
    assert_int_equal(rp_http_host_parse("[::1]:443", 3, 443, &t, &why), RP_EPARSE);
    assert_int_equal(rp_http_host_parse("[::1\0x]", 7, 443, &t, &why), RP_EPARSE);
    assert_int_equal(rp_http_host_parse("a\0b", 3, 443, &t, &why), RP_EPARSE);
    assert_int_equal(rp_http_host_parse("hostname", 4, 443, &t, &why), 0);
    assert_string_equal(t.host, "host");
    assert_int_equal(rp_http_host_parse(NULL, 0, 443, &t, &why), RP_EPARSE);
  }
}

/* The request's Host: exactly one field (RFC 9112 §3.2). */
static void test_request_host(void **state) {
  struct rp_http_header hd[3] = {
      {"Accept", 6, "*/*", 3},
      {"Host", 4, "a.example:8443", 14},
      {"HOST", 4, "a.example", 9},
  };
  struct rp_http_head h;
  struct rp_target t;
  const char *why = NULL;
  (void)state;
  memset(&h, 0, sizeof(h));
  h.headers = hd;
  h.nheaders = 1;
  assert_int_equal(rp_http_request_host(&h, 443, &t, &why), RP_EPARSE);
  assert_string_equal(why, "no Host header");
  h.nheaders = 2;
  assert_int_equal(rp_http_request_host(&h, 443, &t, &why), 0);
  assert_string_equal(t.host, "a.example");
  assert_int_equal(t.port, 8443);
  h.nheaders = 3;
  assert_int_equal(rp_http_request_host(&h, 443, &t, &why), RP_EPARSE);
  assert_string_equal(why, "more than one Host header");
  hd[2].name = "X-Host";
  hd[2].name_len = 6;
  assert_int_equal(rp_http_request_host(&h, 443, &t, &why), 0);
  hd[1].value = "[";
  hd[1].value_len = 1;
  assert_int_equal(rp_http_request_host(&h, 443, &t, &why), RP_EPARSE);
}

/* ---- the request parser ---- */

struct seen {
  int heads;
  char method[16];
  char target[128];
  size_t body;
  size_t nheaders;
  int chunked;
};

static int on_head(void *data, const struct rp_http_head *h) {
  struct seen *s = data;
  s->heads++;
  snprintf(s->method, sizeof(s->method), "%.*s", (int)h->method_len, h->method);
  snprintf(s->target, sizeof(s->target), "%.*s", (int)h->target_len, h->target);
  s->nheaders = h->nheaders;
  s->chunked = h->chunked;
  return 0;
}

static int on_body(void *data, const char *at, size_t len) {
  struct seen *s = data;
  (void)at;
  s->body += len;
  return 0;
}

static const struct rp_http_callbacks cbs = {on_head, on_body};

/* Feed input in pieces of 'step' bytes through HEAD/DONE pauses; returns
 * the final status, or the error status (400…) as a negative number. */
static int feed(const char *in, size_t step, struct seen *s, int *messages) {
  struct rp_http_parser *p = rp_http_parser_create(RP_HTTP_REQUEST, &cbs, s);
  size_t len = strlen(in), off = 0;
  int result = 0;
  *messages = 0;
  while (off <= len) {
    size_t n = len - off < step ? len - off : step, used = 0;
    enum rp_http_status st = rp_http_parser_execute(p, in + off, n, &used);
    off += used;
    if (st == RP_HTTP_ERROR) {
      result = -rp_http_parser_error(p, NULL);
      break;
    }
    if (st == RP_HTTP_HEAD || st == RP_HTTP_DONE) {
      if (st == RP_HTTP_DONE)
        (*messages)++;
      rp_http_parser_resume(p);
      continue;
    }
    if (st == RP_HTTP_UPGRADE)
      break;
    if (off == len)
      break;
  }
  rp_http_parser_destroy(p);
  return result;
}

struct req_case {
  const char *in;
  int status; /* 0 = accepted */
  int messages;
};

static const struct req_case req_cases[] = {
    {"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n", 0, 1},
    {"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\nGET http://a/2 HTTP/1.1\r\nHost: a\r\n\r\n", 0, 2},
    {"POST http://a/ HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 0, 1},
    {"POST http://a/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 0, 1},
    {"GET http://a/ HTTP/1.1\r\nX-A: one\r\n two\r\n\r\n", 400, 0},
    {"GET http://a/ HTTP/1.1\r\nX-A:\r\n\ttwo\r\n\r\n", 400, 0},
    {"POST http://a/ HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400, 0},
    {"POST http://a/ HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400, 0},
    {"GET http://a/ HTTP/1.1\nHost: a\n\n", 400, 0},
    {"GET http://a/ HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", 400, 0},
    {"GET http://a/ HTTP/1.1\r\nHost : a\r\n\r\n", 400, 0},
    {"FOO http://a/ HTTP/1.1\r\n\r\n", 501, 0},
    {"BREW / HTTP/1.1\r\n\r\n", 501, 0},
    {"\x01\x02 / HTTP/1.1\r\n\r\n", 400, 0},
    {"GET / HTTP/2.0\r\n\r\n", 505, 0},
    {"POST http://a/ HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 400, 0},
    {"GET  http://a/ HTTP/1.1\r\n\r\n", 400, 0},
    {"GET http://a/  HTTP/1.1\r\n\r\n", 400, 0},
    {"GET http://a/ HTTP/1.1 extra\r\n\r\n", 400, 0},
    {"GET http://a/ HTPT/1.1\r\n\r\n", 400, 0},
    {"GET http://a/ HTTP/1.0\r\n\r\n", 0, 1},
};

static void test_requests(void **state) {
  static const size_t steps[] = {1, 2, 7, 4096};
  (void)state;
  for (size_t i = 0; i < sizeof(req_cases) / sizeof(req_cases[0]); i++) {
    for (size_t k = 0; k < sizeof(steps) / sizeof(steps[0]); k++) {
      struct seen s;
      int messages, rc;
      memset(&s, 0, sizeof(s));
      rc = feed(req_cases[i].in, steps[k], &s, &messages);
      if (rc != -req_cases[i].status)
        fail_msg("case %zu step %zu: got %d, want %d", i, steps[k], -rc, req_cases[i].status);
      if (req_cases[i].status == 0 && messages != req_cases[i].messages)
        fail_msg("case %zu step %zu: %d messages, want %d", i, steps[k], messages,
                 req_cases[i].messages);
    }
  }
}

static void test_body_and_head(void **state) {
  struct seen s;
  int messages;
  (void)state;
  memset(&s, 0, sizeof(s));
  assert_int_equal(feed("PUT http://a/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nA: 1\r\n\r\n"
                        "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
                        3, &s, &messages),
                   0);
  assert_string_equal(s.method, "PUT");
  assert_string_equal(s.target, "http://a/x");
  assert_int_equal(s.body, 5);
  assert_int_equal(s.nheaders, 2);
  assert_true(s.chunked);
}

static void test_head_limit(void **state) {
  static char big[RP_HTTP_HEAD_MAX + 4096];
  struct seen s;
  int messages;
  size_t n;
  (void)state;
  n = (size_t)snprintf(big, sizeof(big), "GET http://a/ HTTP/1.1\r\nX: ");
  memset(big + n, 'a', sizeof(big) - n - 5);
  memcpy(big + sizeof(big) - 5, "\r\n\r\n", 5);
  memset(&s, 0, sizeof(s));
  assert_int_equal(feed(big, 65536, &s, &messages), -431);
  /* Many empty header lines also hit the limit. */
  n = (size_t)snprintf(big, sizeof(big), "GET http://a/ HTTP/1.1\r\n");
  while (n + 8 < sizeof(big) - 5) {
    memcpy(big + n, "A:\r\n", 4);
    n += 4;
  }
  memcpy(big + n, "\r\n", 3);
  memset(&s, 0, sizeof(s));
  assert_int_equal(feed(big, 65536, &s, &messages), -431);
}

static void test_connect_upgrade(void **state) {
  struct rp_http_parser *p;
  struct seen s;
  const char *in = "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n\x16\x03\x01";
  size_t used = 0;
  (void)state;
  memset(&s, 0, sizeof(s));
  p = rp_http_parser_create(RP_HTTP_REQUEST, &cbs, &s);
  assert_int_equal(rp_http_parser_execute(p, in, strlen(in), &used), RP_HTTP_HEAD);
  assert_int_equal(used, strlen(in) - 3);
  assert_string_equal(s.method, "CONNECT");
  rp_http_parser_destroy(p);
}

/* Range values: what a Range header may carry, against a 1000-byte object. */
static void test_ranges(void **state) {
  static const struct {
    const char *v;
    int rc;
    uint64_t off, len;
  } t[] = {
      {"bytes=0-", 0, 0, 1000},
      {"bytes=100-", 0, 100, 900},
      {"bytes=100-199", 0, 100, 100},
      {"bytes=999-", 0, 999, 1},
      {"bytes=5-5", 0, 5, 1},
      {"BYTES=1-2", 0, 1, 2},
      {"bytes=100-5000", 0, 100, 900},              /* past the end: cut */
      {"bytes=0-18446744073709551615", 0, 0, 1000}, /* 2^64-1 */
      {"bytes=1000-", RP_EINVAL, 0, 0},             /* at the end: 416 */
      {"bytes=5000-6000", RP_EINVAL, 0, 0},
      {"bytes=0-18446744073709551616", RP_EPARSE, 0, 0}, /* 2^64 */
      {"bytes=18446744073709551616-", RP_EPARSE, 0, 0},
      {"bytes=-500", RP_EPARSE, 0, 0}, /* suffix ranges go upstream */
      {"bytes=0-1,5-6", RP_EPARSE, 0, 0},
      {"bytes=5-4", RP_EPARSE, 0, 0},
      {"bytes=5--7", RP_EPARSE, 0, 0},
      {"bytes=5-+7", RP_EPARSE, 0, 0},
      {"bytes=+5-", RP_EPARSE, 0, 0},
      {"bytes= 5-", RP_EPARSE, 0, 0},
      {"bytes=5- 7", RP_EPARSE, 0, 0},
      {"bytes=5-7 ", RP_EPARSE, 0, 0},
      {"bytes=5", RP_EPARSE, 0, 0},
      {"bytes=", RP_EPARSE, 0, 0},
      {"items=0-5", RP_EPARSE, 0, 0},
      {"bytes=0x10-", RP_EPARSE, 0, 0},
  };
  (void)state;
  for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
    uint64_t off = 77, len = 77;
    int rc = rp_http_range_parse(t[i].v, strlen(t[i].v), 1000, &off, &len);
    if (rc != t[i].rc)
      fail_msg("%s: rc %d, want %d", t[i].v, rc, t[i].rc);
    if (rc == 0 && (off != t[i].off || len != t[i].len))
      fail_msg("%s: [%llu, +%llu), want [%llu, +%llu)", t[i].v, (unsigned long long)off,
               (unsigned long long)len, (unsigned long long)t[i].off, (unsigned long long)t[i].len);
  }
  {
    uint64_t off, len;
    assert_int_equal(rp_http_range_parse("bytes=0-", 8, 0, &off, &len), RP_EINVAL); /* empty */
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_targets),    cmocka_unit_test(test_hostport),
      cmocka_unit_test(test_host_parse), cmocka_unit_test(test_request_host),
      cmocka_unit_test(test_requests),   cmocka_unit_test(test_body_and_head),
      cmocka_unit_test(test_head_limit), cmocka_unit_test(test_connect_upgrade),
      cmocka_unit_test(test_ranges),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
