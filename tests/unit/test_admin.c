/* The admin endpoints (src/admin) on a fake exchange, without a connection:
 * the Host check, admin_allow, methods, the headers of each answer and the
 * proxy's renderers, as a table. The fake records what a front would put on
 * the wire; its body writes complete at once. The cache jobs need a cache
 * and the thread pool: tests/integration/test_cache_cli.py drives them. */
#include <arpa/inet.h>
#include <llhttp.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "regproxy/admin.h"
#include "regproxy/rules.h"

/* ---- the fake exchange ---- */

struct fx {
  struct rp_exchange x;
  struct rp_sink sink;
  struct rp_http_head head;
  struct rp_http_header hdrs[2];
  char host[64];
  int status;
  int64_t length;
  char headers[1024]; /* "name: value\n" for each field of start */
  char body[16384];
  size_t body_len;
  char reason[200];
  bool finished, aborted, errored, close_after;
};

static int fx_start(struct rp_exchange *x, int status, const struct rp_http_header *h, size_t n,
                    int64_t length) {
  struct fx *f = (struct fx *)x;
  size_t off = 0;

  assert_int_equal(f->status, 0);
  f->status = status;
  f->length = length;
  for (size_t i = 0; i < n; i++)
    off += (size_t)snprintf(f->headers + off, sizeof(f->headers) - off, "%.*s: %.*s\n",
                            (int)h[i].name_len, h[i].name, (int)h[i].value_len, h[i].value);
  return 0;
}

static int fx_write(struct rp_sink *s, const uv_buf_t *bufs, unsigned n, rp_sink_cb cb, void *arg) {
  struct fx *f = (struct fx *)(void *)((char *)s - offsetof(struct fx, sink));

  for (unsigned i = 0; i < n; i++) {
    assert_true(f->body_len + bufs[i].len <= sizeof(f->body));
    memcpy(f->body + f->body_len, bufs[i].base, bufs[i].len);
    f->body_len += bufs[i].len;
  }
  cb(arg, 0);
  return 0;
}

static struct rp_sink *fx_body(struct rp_exchange *x) {
  return &((struct fx *)x)->sink;
}

static void fx_finish(struct rp_exchange *x) {
  struct fx *f = (struct fx *)x;
  assert_true(f->status != 0);
  f->finished = true;
}

static void fx_abort(struct rp_exchange *x, const char *reason) {
  ((struct fx *)x)->aborted = true;
  (void)reason;
}

static void fx_error(struct rp_exchange *x, int status, const char *reason, bool close_after) {
  struct fx *f = (struct fx *)x;
  assert_int_equal(f->status, 0);
  f->status = status;
  f->errored = true;
  f->close_after = close_after;
  if (f->reason[0] == '\0')
    snprintf(f->reason, sizeof(f->reason), "%s", reason);
}

static size_t fx_queued(struct rp_exchange *x) {
  (void)x;
  return 0;
}

static ssize_t fx_read(struct rp_exchange *x, char *buf, size_t n) {
  (void)x, (void)buf, (void)n;
  return 0;
}

static void fx_note(struct rp_exchange *x, const char *cache, const char *reason,
                    const char *host) {
  struct fx *f = (struct fx *)x;
  (void)cache, (void)host;
  if (reason != NULL)
    snprintf(f->reason, sizeof(f->reason), "%s", reason);
}

static const struct rp_exchange_ops fx_ops = {
    .start = fx_start,
    .body = fx_body,
    .finish = fx_finish,
    .abort = fx_abort,
    .error = fx_error,
    .queued = fx_queued,
    .read = fx_read,
    .note = fx_note,
};

static void fx_init(struct fx *f, const char *method, const char *path, const char *host) {
  static const struct {
    const char *name;
    int id;
  } methods[] = {{"GET", HTTP_GET},
                 {"HEAD", HTTP_HEAD},
                 {"POST", HTTP_POST},
                 {"PUT", HTTP_PUT},
                 {"DELETE", HTTP_DELETE}};

  memset(f, 0, sizeof(*f));
  f->x.ops = &fx_ops;
  f->sink.write = fx_write;
  f->head.method = method;
  f->head.method_len = strlen(method);
  for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
    if (strcmp(methods[i].name, method) == 0)
      f->head.method_id = methods[i].id;
  f->head.target = path;
  f->head.target_len = strlen(path);
  f->head.content_length = -1;
  f->head.keep_alive = true;
  f->head.headers = f->hdrs;
  snprintf(f->host, sizeof(f->host), "%s", host);
  f->hdrs[0] = (struct rp_http_header){"Host", 4, f->host, strlen(f->host)};
  f->head.nheaders = 1;
  f->x.head = &f->head;
  f->x.path = path;
  f->x.path_len = strlen(path);
}

/* ---- the proxy's side ---- */

static unsigned rendered;

static void metrics(void *data, struct rp_sbuf *b) {
  assert_ptr_equal(data, &rendered);
  rendered++;
  rp_sbuf_adds(b, "regproxy_connections_active 1\n");
}

static char *status_json(void *data, size_t *len) {
  assert_ptr_equal(data, &rendered);
  rendered++;
  *len = 8;
  return strdup("{\"t\":1}\n");
}

static const char pem[] = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
static char *names[] = {"regproxy.internal"};

/* ---- the table ---- */

struct admin_case {
  const char *method, *path, *host;
  const char *client; /* an IPv4 address; admin_allow is 127.0.0.0/8 */
  bool ca;            /* the CA's PEM is there */
  int status;
  bool error;         /* the exchange's own short answer (text/plain) */
  const char *header; /* a field the answer carries ("name: value") */
  const char *body;   /* the start of the body, or NULL */
  const char *reason; /* the log's reason, or NULL for none */
};

static const struct admin_case cases[] = {
    {"GET", "/healthz", "127.0.0.1:2080", "127.0.0.1", false, 200, false,
     "Content-Type: text/plain; charset=utf-8", "ok\n", NULL},
    {"GET", "/healthz", "localhost", "127.0.0.1", false, 200, false, "Cache-Control: no-store",
     "ok\n", NULL},
    {"GET", "/healthz", "[::1]:2080", "127.0.0.1", false, 200, false, NULL, "ok\n", NULL},
    {"GET", "/healthz", "Regproxy.Internal", "127.0.0.1", false, 200, false, NULL, "ok\n", NULL},
    /* DNS rebinding: a name that is not ours. */
    {"GET", "/healthz", "evil.example", "127.0.0.1", false, 421, true, NULL, NULL,
     "admin requests need Host: localhost, an IP address or a server_names entry"},
    {"GET", "/metrics", "localhost.evil.example", "127.0.0.1", false, 421, true, NULL, NULL, NULL},
    /* admin_allow: everything but /healthz and /ca.crt. */
    {"GET", "/healthz", "127.0.0.1", "192.0.2.7", false, 200, false, NULL, "ok\n", NULL},
    {"GET", "/ca.crt", "127.0.0.1", "192.0.2.7", true, 200, false,
     "Content-Type: application/x-pem-file", "-----BEGIN CERTIFICATE-----", NULL},
    {"GET", "/metrics", "127.0.0.1", "192.0.2.7", false, 403, true, NULL, NULL,
     "client address not in admin_allow"},
    {"GET", "/status.json", "127.0.0.1", "192.0.2.7", false, 403, true, NULL, NULL, NULL},
    {"GET", "/", "127.0.0.1", "192.0.2.7", false, 403, true, NULL, NULL, NULL},
    {"GET", "/cache/du", "127.0.0.1", "192.0.2.7", false, 403, true, NULL, NULL, NULL},
    {"GET", "/nope", "127.0.0.1", "192.0.2.7", false, 403, true, NULL, NULL, NULL},
    /* The endpoints. */
    {"GET", "/metrics", "127.0.0.1", "127.0.0.1", false, 200, false,
     "Content-Type: text/plain; version=0.0.4; charset=utf-8", "regproxy_connections_active 1",
     NULL},
    {"GET", "/status.json?x=1", "127.0.0.1", "127.0.0.1", false, 200, false,
     "Content-Type: application/json", "{\"t\":1}", NULL},
    {"GET", "/", "127.0.0.1", "127.0.0.1", false, 200, false,
     "Content-Security-Policy: default-src 'none'; connect-src 'self'; style-src "
     "'unsafe-inline'; script-src 'unsafe-inline'",
     "<!doctype html>", NULL},
    {"GET", "/", "127.0.0.1", "127.0.0.1", false, 200, false, "X-Content-Type-Options: nosniff",
     NULL, NULL},
    {"HEAD", "/metrics", "127.0.0.1", "127.0.0.1", false, 200, false, NULL, NULL, NULL},
    {"GET", "/ca.crt", "127.0.0.1", "127.0.0.1", false, 404, true, NULL, NULL,
     "no such admin endpoint"},
    {"GET", "/nope", "127.0.0.1", "127.0.0.1", false, 404, true, NULL, NULL, NULL},
    {"POST", "/metrics", "127.0.0.1", "127.0.0.1", false, 405, false, "Allow: GET, HEAD",
     "admin endpoints answer GET and HEAD\n", "admin endpoints answer GET and HEAD"},
    /* /cache/…: JSON errors, checked in this order; then the cache (off here). */
    {"GET", "/cache/nope", "127.0.0.1", "127.0.0.1", false, 404, false,
     "Content-Type: application/json", "{\"error\":\"no such admin endpoint\"}\n",
     "no such admin endpoint"},
    {"PUT", "/cache/du", "127.0.0.1", "127.0.0.1", false, 405, false, "Allow: GET, HEAD",
     "{\"error\":\"method not allowed here\"}\n", NULL},
    {"GET", "/cache/gc", "127.0.0.1", "127.0.0.1", false, 405, false, "Allow: POST", NULL, NULL},
    {"GET", "/cache/objects/x", "127.0.0.1", "127.0.0.1", false, 400, false, NULL, NULL,
     "not a digest (sha256:<64 hex> or sha512:<128 hex>, lower case)"},
    {"POST", "/cache/gc", "127.0.0.1", "127.0.0.1", false, 403, false, NULL, NULL,
     "changing the cache needs the header X-Regproxy-Cli: 1"},
    {"DELETE", "/cache/objects/x", "127.0.0.1", "127.0.0.1", false, 403, false, NULL, NULL, NULL},
    {"GET", "/cache/du", "127.0.0.1", "127.0.0.1", false, 503, false, "Cache-Control: no-store",
     "{\"error\":\"the cache is off\"}\n", "the cache is off"},
};

static void test_admin_table(void **state) {
  struct rp_acl *allow = NULL;
  char *err = NULL;
  (void)state;

  assert_int_equal(rp_acl_parse("127.0.0.0/8,::1", &allow, &err), 0);
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    const struct admin_case *tc = &cases[i];
    struct rp_admin a = {.allow = allow,
                         .server_names = names,
                         .n_server_names = 1,
                         .metrics = metrics,
                         .status_json = status_json,
                         .data = &rendered};
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(40000)};
    struct fx f;

    if (tc->ca) {
      a.ca_pem = pem;
      a.ca_pem_len = sizeof(pem) - 1;
    }
    assert_int_equal(inet_pton(AF_INET, tc->client, &sin.sin_addr), 1);
    fx_init(&f, tc->method, tc->path, tc->host);
    rp_admin_serve(&a, &f.x, (const struct sockaddr *)&sin);
    if (f.status != tc->status)
      fail_msg("case %zu (%s %s Host %s from %s): status %d, want %d", i, tc->method, tc->path,
               tc->host, tc->client, f.status, tc->status);
    assert_int_equal(f.errored, tc->error);
    assert_false(f.aborted);
    /* Answered at once, one way or the other, and never cached. */
    assert_true(f.errored || f.finished);
    if (!f.errored) {
      /* All but the listener-level 405, which is like the exchange's own. */
      if (!(tc->status == 405 && strncmp(tc->path, "/cache/", 7) != 0))
        assert_non_null(strstr(f.headers, "Cache-Control: no-store\n"));
      assert_int_equal(f.length, (int64_t)f.body_len);
    }
    if (tc->header != NULL && strstr(f.headers, tc->header) == NULL)
      fail_msg("case %zu: no \"%s\" in\n%s", i, tc->header, f.headers);
    if (tc->body != NULL &&
        (f.body_len < strlen(tc->body) || memcmp(f.body, tc->body, strlen(tc->body)) != 0))
      fail_msg("case %zu: body %.*s", i, (int)f.body_len, f.body);
    if (tc->reason != NULL)
      assert_string_equal(f.reason, tc->reason);
  }
  rp_acl_destroy(allow);
}

/* The renderers run only for their own endpoints, from allowed clients. */
static void test_admin_renderers_on_demand(void **state) {
  struct rp_admin a = {.metrics = metrics, .status_json = status_json, .data = &rendered};
  struct sockaddr_in sin = {.sin_family = AF_INET};
  struct rp_acl *allow = NULL;
  char *err = NULL;
  struct fx f;
  (void)state;

  assert_int_equal(rp_acl_parse("127.0.0.1", &allow, &err), 0);
  a.allow = allow;
  inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
  rendered = 0;
  fx_init(&f, "GET", "/healthz", "127.0.0.1");
  rp_admin_serve(&a, &f.x, (const struct sockaddr *)&sin);
  assert_int_equal(rendered, 0);
  fx_init(&f, "GET", "/metrics", "127.0.0.1");
  rp_admin_serve(&a, &f.x, (const struct sockaddr *)&sin);
  fx_init(&f, "HEAD", "/status.json", "127.0.0.1");
  rp_admin_serve(&a, &f.x, (const struct sockaddr *)&sin);
  assert_int_equal(rendered, 2);
  inet_pton(AF_INET, "127.0.0.2", &sin.sin_addr);
  fx_init(&f, "GET", "/metrics", "127.0.0.1");
  rp_admin_serve(&a, &f.x, (const struct sockaddr *)&sin);
  assert_int_equal(f.status, 403);
  assert_int_equal(rendered, 2);
  rp_acl_destroy(allow);
}

/* Mirror mode shares the rule. */
static void test_admin_host_rule(void **state) {
  static const struct {
    const char *host;
    bool ok;
  } t[] = {
      {"127.0.0.1", true},
      {"127.0.0.1:5000", true},
      {"[::1]", true},
      {"[fd00::5]:2080", true},
      {"localhost", true},
      {"LOCALHOST.", true},
      {"regproxy.internal", true},
      {"example.com", false},
      {"127.0.0.1.nip.io", false},
      {"", false},
      {"[", false},
      {"a b", false},
  };
  (void)state;
  for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
    struct fx f;
    fx_init(&f, "GET", "/v2/", t[i].host);
    if (rp_admin_host_allowed(&f.head, names, 1) != t[i].ok)
      fail_msg("Host %s: want %s", t[i].host, t[i].ok ? "allowed" : "refused");
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_admin_table),
      cmocka_unit_test(test_admin_renderers_on_demand),
      cmocka_unit_test(test_admin_host_rule),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
