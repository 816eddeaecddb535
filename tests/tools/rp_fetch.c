/* rp_fetch: run one upstream fetch with the engine and print what happened
 * (status, headers, body length and sha256, result, peak memory). Used by
 * tests/integration/test_upstream.py only.
 *
 *   rp_fetch [--method M] [--header "N: v"]... [--upload FILE] [--proxy URL]
 *            [--proxy-user U:P] [--cacert FILE] [--connect-to H:P:A:P]...
 *            [--connect-timeout MS] [--mark N] [--follow] [--pause-every N]
 *            [--cancel-after N] [--stop-after N] [--token-for REGISTRY,SCOPE]
 *            [--token-parallel N] [--registry-auth FILE] [--anonymous]
 *            [--forbid-internal] [--allow-class CLASS]... [--policy-from-run N]
 *            [--parallel N] [--repeat N] URL
 *
 * --parallel N runs N copies of the fetch at once on the one engine, and
 * --repeat N runs each copy N times in a row (connection reuse).
 * --cancel-after N cancels from inside on_body after N bytes (0: inside
 * on_head); --stop-after N stops the loop after N bytes and destroys the
 * engine with the transfers still running.
 * --forbid-internal sets rp_fetch_req.forbid_internal, --allow-class
 * (loopback, link-local, private, unspecified, reserved) adds to its
 * internal_ok, and --policy-from-run N applies both only from run N of
 * --repeat on (a reused connection must be checked too).
 *
 * Output, one "key value" per line on stdout, for the first copy's first
 * run (or the first that failed): status, reason, peer_ip, header (one line each),
 * body_len, body_sha256, result (0 or the error code), error, error_text;
 * then for every run "xfer COPY RUN status S len N sha256 H result R"; then
 * pauses, violations (body bytes delivered while paused: must be 0),
 * upload_pauses, token_* counters, elapsed_ms, mb_per_s (all bytes of all
 * runs), vmhwm_kb, and "sanitizer address" in ASan builds (whose peak RSS is
 * not comparable). Exit 0 when every fetch succeeded, 1 when one failed, 2
 * on usage errors. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/evp.h>
#include <uv.h>

#include "regproxy/auth.h"
#include "regproxy/config.h"
#include "regproxy/error.h"
#include "regproxy/http.h"
#include "regproxy/log.h"
#include "regproxy/upstream.h"

#define MAX_HEADERS    64
#define MAX_CONNECT_TO 16
#define MAX_PARALLEL   64
#define PAUSE_MS       2

struct tool;

/* One copy of the fetch (run again for --repeat). */
struct xfer {
  struct tool *t;
  int idx, run;
  struct rp_fetch *fetch;
  uv_timer_t pause_timer, upload_timer;
  EVP_MD_CTX *sha;
  FILE *upload_fp;
  long long upload_since;
  int upload_paused;
  int status;
  long long body_len, since_pause;
  int paused, refuse_next;
  int result;
  char reason[1024];
  int cancelled;
  int report; /* print head and summary for this run */
};

struct tool {
  uv_loop_t *loop;
  struct rp_upstream *up;
  struct rp_auth *auth;

  const char *url, *method, *upload, *proxy, *proxy_user, *registry_auth;
  char *token_registry, *token_scope;
  int token_parallel, anonymous, follow, parallel, repeat;
  int forbid_internal, policy_from_run;
  unsigned internal_ok;
  long long pause_every, cancel_after, stop_after;
  struct rp_http_header headers[MAX_HEADERS + 1];
  size_t nheaders;

  struct xfer x[MAX_PARALLEL];
  int running;
  int failed;
  int summary_done;
  long long total_bytes, pauses, violations, upload_pauses;

  /* --token-for: the first, unauthenticated try and its challenge. */
  int probing;
  struct rp_auth_challenge challenge;
  int have_challenge;
  char *authorization;
  int auth_outstanding, auth_failed;

  double t0;
  int finished;
};

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static long vmhwm_kb(void) {
  char line[256];
  long kb = -1;
  FILE *fp = fopen("/proc/self/status", "r");
  if (fp == NULL)
    return -1;
  while (fgets(line, sizeof(line), fp) != NULL)
    if (strncmp(line, "VmHWM:", 6) == 0)
      kb = strtol(line + 6, NULL, 10);
  fclose(fp);
  return kb;
}

static void start_xfer(struct xfer *x);
static void xfer_done(struct xfer *x);
static void finish(struct tool *t);

static void on_pause_timer(uv_timer_t *h) {
  struct xfer *x = h->data;
  x->paused = 0;
  rp_fetch_resume(x->fetch);
}

static void on_upload_timer(uv_timer_t *h) {
  struct xfer *x = h->data;
  x->upload_paused = 0;
  rp_fetch_resume_upload(x->fetch);
}

static int on_head(struct rp_fetch *f, void *data, int status, const char *reason,
                   const struct rp_http_header *h, size_t n) {
  struct xfer *x = data;
  struct tool *t = x->t;
  x->status = status;
  if (t->probing) {
    printf("probe_status %d\n", status);
    if (status == 401 && rp_auth_challenge_from_response(f, h, n, &t->challenge) == 0)
      t->have_challenge = 1;
    return 0;
  }
  if (x->report) {
    char ip[64];
    printf("status %d\nreason %s\n", status, reason);
    if (rp_fetch_peer_ip(f, ip, sizeof(ip)) == 0)
      printf("peer_ip %s\n", ip);
    for (size_t i = 0; i < n; i++)
      printf("header %.*s: %.*s\n", (int)h[i].name_len, h[i].name, (int)h[i].value_len, h[i].value);
  }
  if (t->cancel_after == 0) {
    rp_fetch_cancel(f); /* from inside our own callback */
    x->cancelled = 1;
    xfer_done(x);
  }
  return 0;
}

static int on_body(struct rp_fetch *f, void *data, const char *p, size_t n) {
  struct xfer *x = data;
  struct tool *t = x->t;
  if (t->probing)
    return 0;
  if (x->paused)
    t->violations++;
  if (x->refuse_next) {
    x->refuse_next = 0;
    x->paused = 1;
    uv_timer_start(&x->pause_timer, on_pause_timer, PAUSE_MS, 0);
    return RP_FETCH_PAUSE; /* offered again after the resume */
  }
  EVP_DigestUpdate(x->sha, p, n);
  x->body_len += (long long)n;
  x->since_pause += (long long)n;
  t->total_bytes += (long long)n;
  if (t->stop_after > 0 && x->body_len >= t->stop_after && !t->finished) {
    /* Leave the transfer running: main destroys the engine under it. */
    printf("stopped 1\n");
    finish(t);
    return 0;
  }
  if (t->cancel_after > 0 && x->body_len >= t->cancel_after) {
    rp_fetch_cancel(f);
    x->cancelled = 1;
    xfer_done(x);
    return 0;
  }
  if (t->pause_every > 0 && x->since_pause >= t->pause_every) {
    x->since_pause = 0;
    t->pauses++;
    if (t->pauses & 1) {
      rp_fetch_pause(f); /* consumed this chunk, no more until resumed */
      x->paused = 1;
      uv_timer_start(&x->pause_timer, on_pause_timer, PAUSE_MS, 0);
    } else {
      x->refuse_next = 1;
    }
  }
  return 0;
}

static ssize_t read_body(struct rp_fetch *f, void *data, char *buf, size_t n) {
  struct xfer *x = data;
  struct tool *t = x->t;
  if (x->upload_paused)
    return RP_FETCH_PAUSE;
  if (t->pause_every > 0 && x->upload_since >= t->pause_every) {
    x->upload_since = 0;
    t->upload_pauses++;
    x->upload_paused = 1;
    uv_timer_start(&x->upload_timer, on_upload_timer, PAUSE_MS, 0);
    return RP_FETCH_PAUSE;
  }
  size_t got = fread(buf, 1, n, x->upload_fp);
  if (got == 0 && ferror(x->upload_fp))
    return -1;
  x->upload_since += (long long)got;
  return (ssize_t)got;
}

static void start_all(struct tool *t) {
  t->t0 = now_ms();
  for (int i = 0; i < t->parallel; i++)
    start_xfer(&t->x[i]);
}

static void on_auth(void *data, int status, const char *authorization, const char *reason) {
  struct tool *t = data;
  t->auth_outstanding--;
  if (status != 0) {
    printf("token_error %d %s\n", status, reason);
    t->auth_failed = 1;
  } else if (t->authorization == NULL) {
    t->authorization = strdup(authorization);
  }
  if (t->auth_outstanding > 0)
    return;
  if (t->auth_failed) {
    t->failed = 1;
    printf("result %d\nerror token request failed\n", RP_EAUTH);
    finish(t);
    return;
  }
  if (t->token_parallel > 0) {
    /* One more, after the others: must come from the cache. */
    t->token_parallel = 0;
    t->auth_outstanding = 1;
    rp_auth_get(t->auth, t->token_registry, t->token_scope, &t->challenge,
                t->anonymous ? RP_AUTH_ANONYMOUS : 0, on_auth, t);
    return;
  }
  char *cached = rp_auth_cached(t->auth, t->token_registry, t->token_scope,
                                t->anonymous ? RP_AUTH_ANONYMOUS : 0);
  printf("token_cached %s\n",
         cached != NULL && strcmp(cached, t->authorization) == 0 ? "yes" : "no");
  free(cached);
  printf("auth_scheme %.*s\n", (int)strcspn(t->authorization, " "), t->authorization);
  t->headers[t->nheaders++] =
      (struct rp_http_header){"Authorization", 13, t->authorization, strlen(t->authorization)};
  start_all(t);
}

static void probe_done(struct tool *t, int status, const char *reason) {
  t->probing = 0;
  if (status != 0 || !t->have_challenge) {
    printf("result %d\nerror probe: %s\n", status != 0 ? status : RP_EAUTH,
           status != 0 ? reason : "no 401 challenge to answer");
    t->failed = 1;
    finish(t);
    return;
  }
  printf("challenge %s realm=%s service=%s scope=%s\n",
         t->challenge.scheme == RP_AUTH_BEARER  ? "bearer"
         : t->challenge.scheme == RP_AUTH_BASIC ? "basic"
                                                : "other",
         t->challenge.realm ? t->challenge.realm : "-",
         t->challenge.service ? t->challenge.service : "-",
         t->challenge.scope ? t->challenge.scope : "-");
  int n = t->token_parallel > 0 ? t->token_parallel : 1;
  t->auth_outstanding = n;
  for (int i = 0; i < n; i++)
    if (rp_auth_get(t->auth, t->token_registry, t->token_scope, &t->challenge,
                    t->anonymous ? RP_AUTH_ANONYMOUS : 0, on_auth, t) == NULL) {
      fprintf(stderr, "rp_auth_get failed\n");
      exit(1);
    }
}

static void on_done(struct rp_fetch *f, void *data, int status, const char *reason) {
  struct xfer *x = data;
  x->fetch = NULL;
  if (x->t->probing) {
    x->t->running--;
    probe_done(x->t, status, reason);
    return;
  }
  x->result = status;
  snprintf(x->reason, sizeof(x->reason), "%s", reason);
  xfer_done(x);
}

static void start_xfer(struct xfer *x) {
  struct tool *t = x->t;
  struct rp_fetch_req req = {
      .method = t->probing ? "GET" : t->method,
      .url = t->url,
      .headers = t->headers,
      .nheaders = t->nheaders,
      .body_len = (!t->probing && t->upload != NULL) ? -1 : 0,
      .proxy = t->proxy,
      .proxy_userinfo = t->proxy_user,
      .follow_redirects = t->follow,
      .forbid_internal = t->forbid_internal && x->run >= t->policy_from_run,
      .internal_ok = t->internal_ok,
  };
  struct rp_fetch_callbacks cb = {
      .on_head = on_head,
      .on_body = on_body,
      .read_body = req.body_len != 0 ? read_body : NULL,
      .on_done = on_done,
  };
  x->status = 0;
  x->body_len = x->since_pause = x->upload_since = 0;
  x->paused = x->refuse_next = x->upload_paused = 0;
  x->result = 0;
  x->reason[0] = '\0';
  x->cancelled = 0;
  x->report = !t->probing && !t->summary_done && x->idx == 0 && x->run == 0;
  EVP_DigestInit_ex(x->sha, EVP_sha256(), NULL);
  if (req.body_len != 0) {
    if (x->upload_fp != NULL)
      fclose(x->upload_fp);
    x->upload_fp = fopen(t->upload, "rb");
    if (x->upload_fp == NULL) {
      perror(t->upload);
      exit(2);
    }
  }
  t->running++;
  x->fetch = rp_fetch_start(t->up, &req, &cb, x);
  if (x->fetch == NULL) {
    x->result = RP_EINVAL;
    snprintf(x->reason, sizeof(x->reason), "rp_fetch_start refused the request");
    xfer_done(x);
  }
}

static void xfer_done(struct xfer *x) {
  struct tool *t = x->t;
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;
  char hex[2 * EVP_MAX_MD_SIZE + 1];
  t->running--;
  uv_timer_stop(&x->pause_timer);
  uv_timer_stop(&x->upload_timer);
  EVP_DigestFinal_ex(x->sha, md, &mdlen);
  for (unsigned i = 0; i < mdlen; i++)
    snprintf(hex + 2 * i, 3, "%02x", md[i]);
  hex[2 * mdlen] = '\0';
  if (x->result != 0)
    t->failed = 1;
  if (x->report || (x->result != 0 && !t->summary_done)) {
    t->summary_done = 1;
    printf("body_len %lld\nbody_sha256 %s\nresult %d\n", x->body_len, hex, x->result);
    if (x->result != 0)
      printf("error %s\nerror_text %s\n", x->reason, rp_strerror(x->result));
    if (x->cancelled)
      printf("cancelled 1\n");
  }
  printf("xfer %d %d status %d len %lld sha256 %s result %d\n", x->idx, x->run, x->status,
         x->body_len, hex, x->result);
  if (!x->cancelled && x->result == 0 && ++x->run < t->repeat) {
    start_xfer(x);
    return;
  }
  if (t->running == 0)
    finish(t);
}

static void finish(struct tool *t) {
  double ms = now_ms() - t->t0;
  if (t->finished)
    return;
  t->finished = 1;
  printf("pauses %lld\nviolations %lld\nupload_pauses %lld\n", t->pauses, t->violations,
         t->upload_pauses);
  if (t->auth != NULL) {
    struct rp_auth_stats st;
    rp_auth_get_stats(t->auth, &st);
    printf("token_fetches %llu\ntoken_cache_hits %llu\ntoken_coalesced %llu\n",
           (unsigned long long)st.token_fetches, (unsigned long long)st.cache_hits,
           (unsigned long long)st.coalesced);
  }
  printf("elapsed_ms %.1f\nmb_per_s %.1f\n", ms,
         ms > 0 ? (double)t->total_bytes / (1024.0 * 1024.0) / (ms / 1e3) : 0.0);
  printf("vmhwm_kb %ld\n", vmhwm_kb());
#if defined(__SANITIZE_ADDRESS__)
  printf("sanitizer address\n");
#endif
  fflush(stdout);
  /* The auth client may go from inside a callback; the engine only after
   * the loop stopped (main). */
  rp_auth_destroy(t->auth);
  t->auth = NULL;
  uv_stop(t->loop);
}

static void usage(void) {
  fprintf(stderr,
          "usage: rp_fetch [--method M] [--header 'N: v'] [--upload FILE] [--proxy URL] "
          "[--proxy-user U:P] [--cacert FILE] [--connect-to H:P:A:P] "
          "[--connect-timeout MS] [--mark N] [--follow] [--pause-every N] "
          "[--cancel-after N] [--stop-after N] [--token-for REGISTRY,SCOPE] [--token-parallel N] "
          "[--registry-auth FILE] [--anonymous] [--forbid-internal] [--allow-class CLASS] "
          "[--policy-from-run N] [--parallel N] [--repeat N] URL\n");
  exit(2);
}

int main(int argc, char **argv) {
  static struct tool t;
  struct rp_upstream_opts uo = {.connect_timeout_ms = 10000};
  struct rp_connect_to ct[MAX_CONNECT_TO];
  size_t nct = 0;
  int rc;

  t.method = "GET";
  t.cancel_after = -1;
  t.parallel = 1;
  t.repeat = 1;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define OPT(name) (strcmp(a, name) == 0 && (v != NULL || (usage(), 0)) && (i++, 1))
    if (OPT("--method")) {
      t.method = v;
    } else if (OPT("--header")) {
      const char *colon = strchr(v, ':');
      if (colon == NULL || t.nheaders == MAX_HEADERS)
        usage();
      const char *val = colon + 1;
      while (*val == ' ')
        val++;
      t.headers[t.nheaders++] = (struct rp_http_header){v, (size_t)(colon - v), val, strlen(val)};
    } else if (OPT("--upload")) {
      t.upload = v;
    } else if (OPT("--proxy")) {
      t.proxy = v;
    } else if (OPT("--proxy-user")) {
      t.proxy_user = v;
    } else if (OPT("--cacert")) {
      uo.ca_file = v;
    } else if (OPT("--connect-to")) {
      if (nct == MAX_CONNECT_TO || rp_config_parse_connect_to(v, &ct[nct]) != 0) {
        fprintf(stderr, "bad --connect-to %s\n", v);
        exit(2);
      }
      nct++;
    } else if (OPT("--connect-timeout")) {
      uo.connect_timeout_ms = strtoull(v, NULL, 10);
    } else if (OPT("--mark")) {
      uo.mark = (uint32_t)strtoul(v, NULL, 0);
    } else if (OPT("--pause-every")) {
      t.pause_every = strtoll(v, NULL, 10);
    } else if (OPT("--cancel-after")) {
      t.cancel_after = strtoll(v, NULL, 10);
    } else if (OPT("--stop-after")) {
      t.stop_after = strtoll(v, NULL, 10);
    } else if (OPT("--token-for")) {
      const char *comma = strchr(v, ',');
      if (comma == NULL)
        usage();
      t.token_registry = strndup(v, (size_t)(comma - v));
      t.token_scope = strdup(comma + 1);
    } else if (OPT("--token-parallel")) {
      t.token_parallel = atoi(v);
    } else if (OPT("--registry-auth")) {
      t.registry_auth = v;
    } else if (OPT("--parallel")) {
      t.parallel = atoi(v);
      if (t.parallel < 1 || t.parallel > MAX_PARALLEL)
        usage();
    } else if (OPT("--repeat")) {
      t.repeat = atoi(v);
      if (t.repeat < 1)
        usage();
    } else if (OPT("--allow-class")) {
      int c = 1;
      while (c < RP_ADDR_CLASS_LAST && strcmp(v, rp_upstream_addr_class_name(c)) != 0)
        c++;
      if (c == RP_ADDR_CLASS_LAST)
        usage();
      t.internal_ok |= 1u << c;
    } else if (OPT("--policy-from-run")) {
      t.policy_from_run = atoi(v);
    } else if (strcmp(a, "--forbid-internal") == 0) {
      t.forbid_internal = 1;
    } else if (strcmp(a, "--anonymous") == 0) {
      t.anonymous = 1;
    } else if (strcmp(a, "--follow") == 0) {
      t.follow = 1;
    } else if (a[0] == '-') {
      usage();
    } else if (t.url == NULL) {
      t.url = a;
    } else {
      usage();
    }
#undef OPT
  }
  if (t.url == NULL)
    usage();
  rp_log_setup(getenv("RP_FETCH_DEBUG") ? RP_LOG_DEBUG : RP_LOG_WARN, RP_LOG_LOGFMT);

  t.loop = uv_default_loop();
  uo.connect_to = ct;
  uo.n_connect_to = nct;
  rc = rp_upstream_create(t.loop, &uo, &t.up);
  if (rc != 0) {
    fprintf(stderr, "rp_upstream_create: %s\n", rp_strerror(rc));
    return 2;
  }
  for (int i = 0; i < t.parallel; i++) {
    struct xfer *x = &t.x[i];
    x->t = &t;
    x->idx = i;
    x->sha = EVP_MD_CTX_new();
    if (x->sha == NULL)
      return 1;
    uv_timer_init(t.loop, &x->pause_timer);
    uv_timer_init(t.loop, &x->upload_timer);
    x->pause_timer.data = x->upload_timer.data = x;
  }

  if (t.token_registry != NULL) {
    struct rp_auth_opts ao = {.up = t.up, .docker_config = t.registry_auth};
    char *err = NULL;
    rc = rp_auth_create(&ao, &t.auth, &err);
    if (rc != 0) {
      fprintf(stderr, "rp_auth_create: %s\n", err != NULL ? err : rp_strerror(rc));
      free(err);
      return 2;
    }
    t.probing = 1;
    start_xfer(&t.x[0]);
  } else {
    start_all(&t);
  }
  uv_run(t.loop, UV_RUN_DEFAULT);
  if (!t.finished) {
    printf("result %d\nerror loop ended without an answer\n", RP_EINVAL);
    t.failed = 1;
    finish(&t);
  }
  rp_upstream_destroy(t.up);
  for (int i = 0; i < t.parallel; i++) {
    uv_close((uv_handle_t *)&t.x[i].pause_timer, NULL);
    uv_close((uv_handle_t *)&t.x[i].upload_timer, NULL);
  }
  uv_run(t.loop, UV_RUN_DEFAULT);
  rc = uv_loop_close(t.loop);
  if (rc != 0)
    fprintf(stderr, "uv_loop_close: %s (handles left open)\n", uv_strerror(rc));
  for (int i = 0; i < t.parallel; i++) {
    if (t.x[i].upload_fp != NULL)
      fclose(t.x[i].upload_fp);
    EVP_MD_CTX_free(t.x[i].sha);
  }
  rp_auth_challenge_clear(&t.challenge);
  free(t.authorization);
  free(t.token_registry);
  free(t.token_scope);
  for (size_t i = 0; i < nct; i++) {
    free(ct[i].host);
    free(ct[i].to_addr);
  }
  return !t.failed && rc == 0 ? 0 : 1;
}
