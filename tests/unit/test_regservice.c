/* The registry service's decisions, reached the way a front reaches them:
 * rp_registry_serve with a fake exchange (an in-test struct rp_exchange that
 * records the answer, completes body writes on a later loop turn and ends
 * the request as a connection does), the real cache in a temporary
 * directory, the real upstream engine, and a stand-in registry: a small
 * HTTP/1.1 server on the test's own loop that keeps blobs and a tag, lets
 * in the credentials it is told to, and counts every request it gets.
 *
 * One table row per decision: miss, hit, coalesced, refused, revalidated,
 * stale, and by way in (plain HTTP, mirror). */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <llhttp.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "regproxy/cache.h"
#include "regproxy/exchange.h"
#include "regproxy/registry_service.h"
#include "regproxy/rules.h"
#include "regproxy/upstream.h"

static uv_loop_t loop;

/* ---- the stand-in registry ---- */

#define MAX_LOG 64

struct upstream {
  uv_tcp_t tcp;
  uint16_t port;
  bool down;              /* answer every request 503 */
  const char *allowed[4]; /* Authorization values let in; "" for none */
  const char *blob;       /* the one blob, and its digest */
  size_t blob_len;
  char blob_digest[80];
  const char *manifest; /* the tag "v1" names it */
  char manifest_digest[80];
  char log[MAX_LOG][200]; /* "METHOD path auth" */
  unsigned nlog;
};

static struct upstream up;

struct up_conn {
  uv_tcp_t tcp;
  char buf[8192];
  size_t len;
  uv_write_t wr;
  char *out;
};

static void sha256_hex(const char *p, size_t n, char out[80]) {
  unsigned char md[32];
  SHA256((const unsigned char *)p, n, md);
  strcpy(out, "sha256:");
  for (int i = 0; i < 32; i++)
    snprintf(out + 7 + 2 * i, 3, "%02x", md[i]);
}

static bool allowed(const char *auth) {
  for (size_t i = 0; i < 4 && up.allowed[i] != NULL; i++)
    if (strcmp(up.allowed[i], auth) == 0)
      return true;
  return false;
}

static unsigned count(const char *method, const char *what) {
  unsigned n = 0;
  for (unsigned i = 0; i < up.nlog; i++)
    if (strncmp(up.log[i], method, strlen(method)) == 0 && strstr(up.log[i], what) != NULL)
      n++;
  return n;
}

static void up_closed(uv_handle_t *h) {
  struct up_conn *uc = h->data;
  free(uc->out);
  free(uc);
}

static void up_written(uv_write_t *w, int status) {
  struct up_conn *uc = w->data;
  (void)status;
  uv_close((uv_handle_t *)&uc->tcp, up_closed);
}

/* What the registry answers one request (a whole head, no body). */
static void up_answer(struct up_conn *uc) {
  char method[16] = "", path[512] = "", auth[256] = "", head[1024];
  const char *status = "404 Not Found", *ctype = "application/json", *body = "{}";
  const char *a = strstr(uc->buf, "\r\nAuthorization: ");
  size_t body_len = 2;
  char extra[256] = "";
  bool is_head;
  int n;

  sscanf(uc->buf, "%15s %511s", method, path);
  if (a != NULL)
    sscanf(a + 17, "%255[^\r]", auth);
  if (up.nlog < MAX_LOG)
    snprintf(up.log[up.nlog++], sizeof(up.log[0]), "%s %s %s", method, path, auth);
  is_head = strcmp(method, "HEAD") == 0;
  if (up.down) {
    status = "503 Service Unavailable";
  } else if (!allowed(auth)) {
    status = "401 Unauthorized";
    snprintf(extra, sizeof(extra), "WWW-Authenticate: Basic realm=\"test\"\r\n");
  } else if (up.blob != NULL && strstr(path, "/blobs/") != NULL &&
             strstr(path, up.blob_digest) != NULL) {
    status = "200 OK";
    ctype = "application/octet-stream";
    body = up.blob;
    body_len = up.blob_len;
    snprintf(extra, sizeof(extra), "Docker-Content-Digest: %s\r\n", up.blob_digest);
  } else if (up.manifest != NULL && strstr(path, "/manifests/") != NULL &&
             (strstr(path, "/manifests/v1") != NULL || strstr(path, up.manifest_digest) != NULL)) {
    status = "200 OK";
    ctype = "application/vnd.oci.image.manifest.v1+json";
    body = up.manifest;
    body_len = strlen(up.manifest);
    snprintf(extra, sizeof(extra), "Docker-Content-Digest: %s\r\n", up.manifest_digest);
  }
  n = snprintf(head, sizeof(head),
               "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s"
               "Connection: close\r\n\r\n",
               status, ctype, body_len, extra);
  uc->out = malloc((size_t)n + body_len);
  assert_non_null(uc->out);
  memcpy(uc->out, head, (size_t)n);
  if (!is_head)
    memcpy(uc->out + n, body, body_len);
  {
    uv_buf_t b = uv_buf_init(uc->out, (unsigned)n + (is_head ? 0 : (unsigned)body_len));
    uc->wr.data = uc;
    uv_write(&uc->wr, (uv_stream_t *)&uc->tcp, &b, 1, up_written);
  }
}

static void up_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  struct up_conn *uc = h->data;
  (void)hint;
  *b = uv_buf_init(uc->buf + uc->len, (unsigned)(sizeof(uc->buf) - 1 - uc->len));
}

static void up_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b) {
  struct up_conn *uc = s->data;
  (void)b;
  if (nread < 0) {
    uv_close((uv_handle_t *)&uc->tcp, up_closed);
    return;
  }
  uc->len += (size_t)nread;
  uc->buf[uc->len] = '\0';
  if (strstr(uc->buf, "\r\n\r\n") != NULL) {
    uv_read_stop(s);
    up_answer(uc);
  }
}

static void up_accept(uv_stream_t *server, int status) {
  struct up_conn *uc = calloc(1, sizeof(*uc));
  (void)status;
  assert_non_null(uc);
  uv_tcp_init(&loop, &uc->tcp);
  uc->tcp.data = uc;
  assert_int_equal(uv_accept(server, (uv_stream_t *)&uc->tcp), 0);
  uv_read_start((uv_stream_t *)&uc->tcp, up_alloc, up_read);
}

static void up_start(void) {
  struct sockaddr_in a;
  struct sockaddr_storage ss;
  int len = sizeof(ss);

  memset(&up, 0, sizeof(up));
  uv_tcp_init(&loop, &up.tcp);
  uv_ip4_addr("127.0.0.1", 0, &a);
  assert_int_equal(uv_tcp_bind(&up.tcp, (const struct sockaddr *)&a, 0), 0);
  assert_int_equal(uv_listen((uv_stream_t *)&up.tcp, 64, up_accept), 0);
  uv_tcp_getsockname(&up.tcp, (struct sockaddr *)&ss, &len);
  up.port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

/* ---- the fake exchange (a front) ---- */

struct fx {
  struct rp_exchange x;
  struct rp_sink sink;
  struct rp_http_head head;
  struct rp_http_header hdrs[4];
  char path[512];
  char auth[128];
  int status;
  bool started, finished, aborted, ended;
  char cache[32];
  char digest[100];
  char *body;
  size_t body_len;
  /* writes complete on a later loop turn, as a socket's do */
  uv_timer_t timer;
  struct {
    rp_sink_cb cb;
    void *arg;
  } q[256];
  unsigned nq;
};

static void fx_end(struct fx *f) {
  struct rp_exchange_handler hd = f->x.handler;
  struct rp_exchange_summary s = {.status = f->status,
                                  .bytes_out = f->body_len,
                                  .client = "127.0.0.1:1",
                                  .complete = f->finished};
  memset(&f->x.handler, 0, sizeof(f->x.handler));
  f->ended = true;
  if (hd.end != NULL)
    hd.end(hd.data, &s);
}

static int fx_start(struct rp_exchange *x, int status, const struct rp_http_header *h, size_t n,
                    int64_t length) {
  struct fx *f = (struct fx *)x;
  (void)length;
  assert_false(f->started);
  f->started = true;
  f->status = status;
  for (size_t i = 0; i < n; i++)
    if (rp_http_token_eq(h[i].name, h[i].name_len, "docker-content-digest"))
      snprintf(f->digest, sizeof(f->digest), "%.*s", (int)h[i].value_len, h[i].value);
  return 0;
}

static void fx_flush(uv_timer_t *t) {
  struct fx *f = t->data;
  unsigned n = f->nq;
  f->nq = 0;
  for (unsigned i = 0; i < n; i++)
    f->q[i].cb(f->q[i].arg, 0);
}

static int fx_write(struct rp_sink *s, const uv_buf_t *bufs, unsigned n, rp_sink_cb cb, void *arg) {
  struct fx *f = (struct fx *)(void *)((char *)s - offsetof(struct fx, sink));
  for (unsigned i = 0; i < n; i++) {
    f->body = realloc(f->body, f->body_len + bufs[i].len + 1);
    assert_non_null(f->body);
    memcpy(f->body + f->body_len, bufs[i].base, bufs[i].len);
    f->body_len += bufs[i].len;
    f->body[f->body_len] = '\0';
  }
  assert_true(f->nq < 256);
  f->q[f->nq].cb = cb;
  f->q[f->nq].arg = arg;
  f->nq++;
  uv_timer_start(&f->timer, fx_flush, 0, 0);
  return 0;
}

static struct rp_sink *fx_body(struct rp_exchange *x) {
  return &((struct fx *)x)->sink;
}

static void fx_finish(struct rp_exchange *x) {
  struct fx *f = (struct fx *)x;
  f->finished = true;
  fx_end(f);
}

static void fx_abort(struct rp_exchange *x, const char *reason) {
  struct fx *f = (struct fx *)x;
  (void)reason;
  f->aborted = true;
  fx_end(f);
}

static void fx_error(struct rp_exchange *x, int status, const char *reason, bool close_after) {
  struct fx *f = (struct fx *)x;
  (void)reason;
  (void)close_after;
  f->started = true;
  f->status = status;
  f->finished = true;
  fx_end(f);
}

static size_t fx_queued(struct rp_exchange *x) {
  (void)x;
  return 0;
}

static ssize_t fx_read(struct rp_exchange *x, char *buf, size_t n) {
  (void)x;
  (void)buf;
  (void)n;
  return 0;
}

static void fx_note(struct rp_exchange *x, const char *cache, const char *reason,
                    const char *host) {
  struct fx *f = (struct fx *)x;
  (void)reason;
  (void)host;
  if (cache != NULL)
    snprintf(f->cache, sizeof(f->cache), "%s", cache);
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

/* A GET (or HEAD) of path with an Authorization value ("" for none). */
static struct fx *fx_new(const char *method, const char *path, const char *auth) {
  struct fx *f = calloc(1, sizeof(*f));
  assert_non_null(f);
  f->x.ops = &fx_ops;
  f->sink.write = fx_write;
  snprintf(f->path, sizeof(f->path), "%s", path);
  snprintf(f->auth, sizeof(f->auth), "%s", auth);
  f->head.method = method;
  f->head.method_len = strlen(method);
  f->head.method_id = strcmp(method, "HEAD") == 0 ? HTTP_HEAD : HTTP_GET;
  f->head.target = f->path;
  f->head.target_len = strlen(f->path);
  f->head.content_length = -1;
  f->head.headers = f->hdrs;
  f->head.keep_alive = true;
  if (auth[0] != '\0') {
    f->hdrs[0] = (struct rp_http_header){"Authorization", 13, f->auth, strlen(f->auth)};
    f->head.nheaders = 1;
  }
  f->x.head = &f->head;
  f->x.path = f->path;
  f->x.path_len = strlen(f->path);
  uv_timer_init(&loop, &f->timer);
  f->timer.data = f;
  return f;
}

static void fx_closed(uv_handle_t *h) {
  struct fx *f = h->data;
  free(f->body);
  free(f);
}

static void fx_free(struct fx *f) {
  if (!f->ended)
    fx_end(f);         /* the client leaves */
  fx_flush(&f->timer); /* a closing front completes the writes it still holds */
  uv_close((uv_handle_t *)&f->timer, fx_closed);
}

/* ---- the service under test ---- */

static struct rp_cache *cache;
static struct rp_upstream *engine;
static struct rp_registry *reg;
static struct rp_hostlist *mitm;
static char dir[64];

static void run_until_(bool (*pred)(void *), void *arg, const char *what) {
  uint64_t start = uv_hrtime();
  while (!pred(arg)) {
    uv_run(&loop, UV_RUN_ONCE);
    if (uv_hrtime() - start > 20ULL * 1000000000ULL)
      fail_msg("timed out waiting for %s", what);
  }
}

static bool fx_ended(void *arg) {
  return ((struct fx *)arg)->ended;
}

static bool blob_cached(void *arg) {
  struct rp_digest d;
  (void)arg;
  rp_digest_parse(up.blob_digest, strlen(up.blob_digest), &d);
  return rp_cache_has(cache, &d, NULL);
}

static bool manifest_cached(void *arg) {
  struct rp_digest d;
  (void)arg;
  rp_digest_parse(up.manifest_digest, strlen(up.manifest_digest), &d);
  return rp_cache_has(cache, &d, NULL);
}

#define run_until(pred, arg) run_until_(pred, arg, #pred)

static int setup(void **state) {
  struct rp_cache_opts co = {.max_size = 1ULL << 30};
  struct rp_upstream_opts uo;
  struct rp_registry_opts ro;
  char *err = NULL;

  (void)state;
  assert_int_equal(uv_loop_init(&loop), 0);
  up_start();
  snprintf(dir, sizeof(dir), "/tmp/rp-regservice-XXXXXX");
  assert_non_null(mkdtemp(dir));
  co.dir = dir;
  assert_int_equal(rp_cache_open(&loop, &co, &cache, &err), 0);
  memset(&uo, 0, sizeof(uo));
  uo.connect_timeout_ms = 5000;
  assert_int_equal(rp_upstream_create(&loop, &uo, &engine), 0);
  assert_int_equal(rp_hostlist_parse("registry.example", 0, &mitm, &err), 0);
  memset(&ro, 0, sizeof(ro));
  ro.loop = &loop;
  ro.up = engine;
  ro.cache = cache;
  ro.access_check = true;
  ro.access_ttl_ms = 60000;
  ro.mitm = mitm;
  assert_int_equal(rp_registry_create(&ro, &reg), 0);
  up.blob = "the layer's bytes, which only some clients may read";
  up.blob_len = strlen(up.blob);
  sha256_hex(up.blob, up.blob_len, up.blob_digest);
  up.manifest =
      "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\"}";
  sha256_hex(up.manifest, strlen(up.manifest), up.manifest_digest);
  up.allowed[0] = "Bearer alice";
  up.allowed[1] = "Bearer carol";
  return 0;
}

static void remove_tree(const char *path) {
  char cmd[128];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", path);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", path);
}

static int teardown(void **state) {
  (void)state;
  rp_registry_destroy(reg);
  rp_upstream_destroy(engine);
  rp_cache_close(cache);
  uv_close((uv_handle_t *)&up.tcp, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&loop), 0);
  rp_hostlist_destroy(mitm);
  remove_tree(dir);
  return 0;
}

static struct fx *get(enum rp_registry_way way, const char *path, const char *auth) {
  struct fx *f = fx_new("GET", path, auth);
  struct rp_registry_target t = {.way = way, .host = "127.0.0.1", .port = up.port};
  assert_true(rp_registry_serve(reg, &t, &f->x));
  return f;
}

static char *blob_path(void) {
  static char p[256];
  snprintf(p, sizeof(p), "/v2/team/app/blobs/%s", up.blob_digest);
  return p;
}

/* ---- the table ---- */

/* miss, then hit: the second pull of a layer never leaves the machine. */
static void test_miss_then_hit(void **state) {
  struct fx *f;
  (void)state;
  f = get(RP_REGISTRY_PLAIN, blob_path(), "Bearer alice");
  run_until(fx_ended, f);
  assert_int_equal(f->status, 200);
  assert_true(f->finished);
  assert_string_equal(f->cache, "miss");
  assert_int_equal(f->body_len, up.blob_len);
  assert_memory_equal(f->body, up.blob, up.blob_len);
  assert_string_equal(f->digest, up.blob_digest);
  fx_free(f);
  run_until(blob_cached, NULL);
  assert_int_equal(count("GET", "/blobs/"), 1);

  f = get(RP_REGISTRY_PLAIN, blob_path(), "Bearer alice");
  run_until(fx_ended, f);
  assert_int_equal(f->status, 200);
  assert_string_equal(f->cache, "hit");
  assert_memory_equal(f->body, up.blob, up.blob_len);
  assert_int_equal(count("GET", "/blobs/"), 1);
  assert_int_equal(count("HEAD", "/blobs/"), 0);
  fx_free(f);
}

/* Two clients at once: one upstream GET, the second joins the fill. */
static void test_coalesced(void **state) {
  struct fx *a, *b;
  (void)state;
  a = get(RP_REGISTRY_PLAIN, blob_path(), "Bearer alice");
  b = get(RP_REGISTRY_PLAIN, blob_path(), "Bearer alice");
  run_until(fx_ended, a);
  run_until(fx_ended, b);
  assert_string_equal(a->cache, "miss");
  assert_string_equal(b->cache, "coalesced");
  assert_int_equal(b->status, 200);
  assert_memory_equal(b->body, up.blob, up.blob_len);
  assert_int_equal(count("GET", "/blobs/"), 1);
  fx_free(a);
  fx_free(b);
}

/* A cached layer, a client the registry refuses: it gets the registry's
 * 401, never the bytes; one the registry lets in gets them from the cache. */
static void test_refused_and_revalidated(void **state) {
  struct fx *f;
  (void)state;
  f = get(RP_REGISTRY_PLAIN, blob_path(), "Bearer alice");
  run_until(fx_ended, f);
  fx_free(f);
  run_until(blob_cached, NULL);

  const char *who[] = {"", "Bearer mallory"};
  for (size_t i = 0; i < 2; i++) {
    f = get(RP_REGISTRY_PLAIN, blob_path(), who[i]);
    run_until(fx_ended, f);
    assert_int_equal(f->status, 401);
    assert_true(f->body == NULL || strstr(f->body, "layer's bytes") == NULL);
    assert_string_equal(f->cache, "pass");
    fx_free(f);
  }
  assert_int_equal(count("HEAD", "/blobs/"), 2);

  f = get(RP_REGISTRY_PLAIN, blob_path(), "Bearer carol");
  run_until(fx_ended, f);
  assert_int_equal(f->status, 200);
  assert_string_equal(f->cache, "revalidated");
  assert_memory_equal(f->body, up.blob, up.blob_len);
  assert_int_equal(count("GET", "/blobs/"), 3); /* alice's fill and the two refused */
  fx_free(f);
}

/* A tag pulled once; the registry then fails: the remembered answer (stale)
 * for the client that read it, the failure for one who never did. */
static void test_stale_when_the_registry_fails(void **state) {
  struct fx *f;
  (void)state;
  f = get(RP_REGISTRY_PLAIN, "/v2/team/app/manifests/v1", "Bearer alice");
  run_until(fx_ended, f);
  assert_int_equal(f->status, 200);
  assert_string_equal(f->cache, "miss");
  assert_string_equal(f->digest, up.manifest_digest);
  fx_free(f);
  run_until(manifest_cached, NULL);

  up.down = true;
  f = get(RP_REGISTRY_PLAIN, "/v2/team/app/manifests/v1", "Bearer alice");
  run_until(fx_ended, f);
  assert_int_equal(f->status, 200);
  assert_string_equal(f->cache, "stale");
  assert_string_equal(f->body, up.manifest);
  fx_free(f);

  f = get(RP_REGISTRY_PLAIN, "/v2/team/app/manifests/v1", "Bearer mallory");
  run_until(fx_ended, f);
  assert_int_equal(f->status, 503);
  fx_free(f);
}

/* A client that leaves mid-fill: the fill goes on, and is kept. */
static void test_client_gone_fill_kept(void **state) {
  struct fx *f;
  (void)state;
  f = get(RP_REGISTRY_PLAIN, blob_path(), "Bearer alice");
  while (f->body_len == 0 && !f->ended)
    uv_run(&loop, UV_RUN_ONCE);
  fx_free(f); /* gone */
  run_until(blob_cached, NULL);
  assert_int_equal(count("GET", "/blobs/"), 1);
}

/* By way in: plain HTTP takes only registry reads; the mirror answers /v2/
 * itself and refuses a registry it was not told to trust, asking nobody. */
static void test_by_way_in(void **state) {
  struct rp_registry_target plain = {
      .way = RP_REGISTRY_PLAIN, .host = "127.0.0.1", .port = up.port};
  struct rp_registry_target mirror = {.way = RP_REGISTRY_MIRROR};
  struct fx *f;
  (void)state;

  f = fx_new("GET", "/index.html", "");
  assert_false(rp_registry_serve(reg, &plain, &f->x));
  assert_false(f->started);
  fx_free(f);

  f = fx_new("GET", "/v2/?ns=registry.example", "");
  assert_true(rp_registry_serve(reg, &mirror, &f->x));
  run_until(fx_ended, f);
  assert_int_equal(f->status, 200);
  assert_string_equal(f->body, "{}");
  fx_free(f);

  f = fx_new("GET", "/v2/team/app/manifests/v1?ns=attacker.example", "");
  assert_true(rp_registry_serve(reg, &mirror, &f->x));
  run_until(fx_ended, f);
  assert_int_equal(f->status, 404);
  assert_non_null(strstr(f->body, "NAME_UNKNOWN"));
  fx_free(f);
  assert_int_equal(up.nlog, 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_miss_then_hit, setup, teardown),
      cmocka_unit_test_setup_teardown(test_coalesced, setup, teardown),
      cmocka_unit_test_setup_teardown(test_refused_and_revalidated, setup, teardown),
      cmocka_unit_test_setup_teardown(test_stale_when_the_registry_fails, setup, teardown),
      cmocka_unit_test_setup_teardown(test_client_gone_fill_kept, setup, teardown),
      cmocka_unit_test_setup_teardown(test_by_way_in, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
