/* The cache endpoints `regproxy cache …` talks to while this instance holds
 * the cache directory (contract §3 "One owner per cache directory",
 * docs/admin.md): list, stat, du, verify (on the thread pool, one object at
 * a time), gc and rm. Digests in paths are validated and only ever looked up
 * in the index. verify and gc stream their progress as NDJSON lines (one
 * chunk each) to a client that accepts application/x-ndjson.
 *
 * verify, gc and rm are jobs that answer once the index worker wrote their
 * removals: a job holds the request's exchange and hears through its `end`
 * that the client left, after which it never touches the exchange again. */
#include <jansson.h>
#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "regproxy/cache.h"
#include "regproxy/config.h"
#include "regproxy/error.h"
#include "regproxy/log.h"
#include "regproxy/util.h"

/* A browser page may send a cross-origin POST or DELETE without asking
 * first only when it carries no custom header; with this one it must ask
 * (CORS preflight), and nobody here answers the preflight. */
#define CLI_HEADER "x-regproxy-cli"
#define NDJSON     "application/x-ndjson"

/* One verification at a time: each one holds a thread of libuv's pool for
 * as long as it hashes, and the pool also serves the readers and fills. */
static bool verify_running;

struct admin_job {
  struct rp_cache *cache;
  struct rp_exchange *x; /* NULL once the client left or was answered */
  int status;
  json_t *body;
  bool stream; /* the head went out: lines follow, body is the last one */
  /* verify */
  bool is_verify;
  struct rp_object_info *todo;
  size_t ntodo, next;
  json_t *results;
  uint64_t verified, bad;
};

static json_t *object_json(const struct rp_object_info *info) {
  char dg[160];

  rp_digest_format(&info->digest, dg, sizeof dg);
  return json_pack("{s:s, s:I, s:s, s:I, s:b}", "digest", dg, "size", (json_int_t)info->size,
                   "media_type", info->media_type, "last_access", (json_int_t)info->last_access,
                   "manifest", info->is_manifest ? 1 : 0);
}

static bool add_object(const struct rp_object_info *info, void *data) {
  json_t *o = object_json(info);

  return o != NULL && json_array_append_new(data, o) == 0;
}

/* The exchange's end: the request is over for the front (the client left,
 * or the job's answer went out). */
static void on_end(void *data, const struct rp_exchange_summary *s) {
  struct admin_job *j = data;
  (void)s;
  j->x = NULL;
}

/* The job's last use of its exchange: it hears nothing more from it, and
 * its answer may end the request at once. */
static struct rp_exchange *job_let_go(struct admin_job *j) {
  struct rp_exchange *x = j->x;

  if (x != NULL)
    memset(&x->handler, 0, sizeof(x->handler));
  j->x = NULL;
  return x;
}

static void job_free(struct admin_job *j) {
  if (j == NULL)
    return;
  job_let_go(j);
  if (j->is_verify)
    verify_running = false;
  json_decref(j->body);
  json_decref(j->results);
  free(j->todo);
  free(j);
}

static bool wants_stream(const struct rp_http_head *h) {
  const struct rp_http_header *hd = rp_http_header_find(h, "accept");

  return hd != NULL && memmem(hd->value, hd->value_len, NDJSON, strlen(NDJSON)) != NULL;
}

/* The head of a streamed answer: 200, NDJSON of unknown length (chunked on
 * HTTP/1.1). The request stays paused after its head until the last line
 * is queued (job_answer). A client that cannot take it is cut. */
static void stream_head(struct admin_job *j) {
  static const struct rp_http_header hd[] = {
      {"Content-Type", 12, NDJSON, sizeof(NDJSON) - 1},
      {"Cache-Control", 13, "no-store", 8},
  };

  if (j->x != NULL && rp_exchange_start(j->x, 200, hd, 2, -1) != 0)
    rp_exchange_abort(j->x, NULL);
}

static void free_lines(void *arg, int status) {
  (void)status;
  free(arg);
}

/* Lines (taken; n > 0 bytes, each line ending in "\n") as one write of the
 * body, one chunk on the wire. A client that cannot take it is cut: the job
 * sees it gone at its next step. */
static void stream_lines(struct admin_job *j, char *lines, size_t n) {
  uv_buf_t buf = uv_buf_init(lines, (unsigned)n);
  struct rp_sink *s;

  if (j->x == NULL) {
    free(lines);
    return;
  }
  s = rp_exchange_body(j->x);
  if (s->write(s, &buf, 1, free_lines, lines) != 0) {
    free(lines);
    rp_exchange_abort(j->x, NULL);
  }
}

/* o (taken) as one line of compact JSON appended to b. */
static int add_line(struct rp_sbuf *b, json_t *o) {
  char *text = o != NULL ? json_dumps(o, JSON_COMPACT) : NULL;

  json_decref(o);
  if (text == NULL)
    return RP_ENOMEM;
  rp_sbuf_adds(b, text);
  rp_sbuf_adds(b, "\n");
  free(text);
  return 0;
}

/* One progress line (o taken) to the client of a streamed answer. */
static void stream_line(struct admin_job *j, json_t *o) {
  struct rp_sbuf b = {0};
  char *p;
  size_t n;

  if (j->x == NULL) {
    json_decref(o);
    return;
  }
  if (add_line(&b, o) != 0 || (p = rp_sbuf_take(&b, &n)) == NULL) {
    rp_sbuf_free(&b);
    rp_exchange_abort(j->x, NULL);
    return;
  }
  stream_lines(j, p, n);
}

/* Answer (when the client is still there), then the job is over. A streamed
 * answer ends with the body as its last line: the summary, or {"error"}. The
 * front reads the rest of the request once the answer is out. */
static void job_answer(struct admin_job *j) {
  struct rp_exchange *x = job_let_go(j);

  if (x != NULL && j->stream) {
    struct rp_sbuf b = {0};
    const char *err = json_string_value(json_object_get(j->body, "error"));
    struct rp_sink *s;
    uv_buf_t buf;
    char *p;
    size_t n;
    int rc;

    if (err != NULL)
      rp_exchange_note(x, NULL, err, NULL);
    rc = add_line(&b, j->body != NULL ? j->body : json_pack("{s:s}", "error", "out of memory"));
    j->body = NULL;
    p = rc == 0 ? rp_sbuf_take(&b, &n) : NULL;
    rp_sbuf_free(&b);
    if (p == NULL) {
      rp_exchange_abort(x, NULL);
      job_free(j);
      return;
    }
    buf = uv_buf_init(p, (unsigned)n);
    s = rp_exchange_body(x);
    if (s->write(s, &buf, 1, free_lines, p) != 0) {
      free(p);
      rp_exchange_abort(x, NULL);
    } else {
      rp_exchange_finish(x);
    }
  } else if (x != NULL) {
    json_t *body = j->body;
    j->body = NULL;
    if (body == NULL)
      rp__admin_reply_error(x, 500, NULL, "out of memory");
    else
      rp__admin_reply_json(x, j->status, body);
  }
  job_free(j);
}

static void on_flushed(struct rp_cache *cache, int status, void *data) {
  (void)cache;
  if (status != 0)
    rp_log_warn("cache: writing the index after an admin request: %s", rp_strerror(status));
  job_answer(data);
}

/* The answer goes out once the files removed so far are gone from the disk,
 * so that the command returns when its work is done, as in direct mode. */
static void job_finish(struct admin_job *j) {
  if (rp_cache_flush(j->cache, on_flushed, j) != 0)
    job_answer(j);
}

/* A job that answers x later. The front keeps the request paused after its
 * head, with no idle timeout, until then: the work ends by itself. */
static struct admin_job *job_new(struct rp_exchange *x, struct rp_cache *cache, int status,
                                 json_t *body) {
  struct admin_job *j = calloc(1, sizeof(*j));

  if (j == NULL) {
    json_decref(body);
    return NULL;
  }
  j->cache = cache;
  j->x = x;
  j->status = status;
  j->body = body;
  x->handler = (struct rp_exchange_handler){.end = on_end, .data = j};
  return j;
}

static void verify_next(struct admin_job *j);

static void on_verified(struct rp_cache *cache, const struct rp_digest *d, int status, void *data) {
  struct admin_job *j = data;
  char dg[160];
  json_t *r;

  rp_digest_format(d, dg, sizeof dg);
  if (status == UV_ECANCELED || status == RP_ENOMEM) {
    /* No verdict on the object: the cache is closing, or memory ran out. */
    j->status = status == RP_ENOMEM ? 500 : 503;
    verify_next(j);
    return;
  }
  j->verified++;
  if (status == 0) {
    r = json_pack("{s:s, s:b}", "digest", dg, "ok", 1);
  } else {
    const char *why = rp_strerror(status);
    int rc = rp_cache_remove(cache, d);
    /* RP_EINVAL: evicted meanwhile, so gone as well. */
    bool removed = rc == 0 || rc == RP_EINVAL;
    const char *rm_err = NULL;
    if (rc == RP_EDENIED)
      rm_err = "in use (being served); not removed";
    else if (!removed)
      rm_err = rp_strerror(rc);
    j->bad++;
    rp_log_warn("cache verify: %s: %s; %s", dg, why, removed ? "removed" : rm_err);
    if (removed)
      r = json_pack("{s:s, s:b, s:s, s:b}", "digest", dg, "ok", 0, "error", why, "removed", 1);
    else
      r = json_pack("{s:s, s:b, s:s, s:b, s:s}", "digest", dg, "ok", 0, "error", why, "removed", 0,
                    "remove_error", rm_err);
  }
  if (r != NULL && j->stream) {
    /* Sent now, not kept; the size lets the client count bytes too. */
    if (json_object_set_new(r, "size", json_integer((json_int_t)j->todo[j->next - 1].size)) != 0) {
      json_decref(r);
      j->status = 500;
      j->next = j->ntodo;
    } else {
      stream_line(j, r);
    }
  } else if (r == NULL || json_array_append_new(j->results, r) != 0) {
    j->status = 500;
    j->next = j->ntodo; /* out of memory: stop */
  }
  verify_next(j);
}

static void verify_next(struct admin_job *j) {
  json_t *body;
  int rc;

  while (j->next < j->ntodo && j->status == 200 && j->x != NULL) {
    rc = rp_cache_verify_start(j->cache, &j->todo[j->next++].digest, on_verified, j);
    if (rc == 0)
      return;
    if (rc != RP_EINVAL) {
      j->status = 500;
      break;
    }
    /* RP_EINVAL: evicted or removed since it was listed. */
  }
  json_decref(j->body);
  if (j->status == 200 && j->stream) /* the results went out one by one */
    body = json_pack("{s:I, s:I}", "verified", (json_int_t)j->verified, "bad", (json_int_t)j->bad);
  else if (j->status == 200)
    body = json_pack("{s:O, s:I, s:I}", "results", j->results, "verified", (json_int_t)j->verified,
                     "bad", (json_int_t)j->bad);
  else
    body = json_pack("{s:s}", "error",
                     j->status == 503 ? "regproxy is stopping: verification cancelled"
                                      : "out of memory");
  j->body = body;
  job_finish(j);
}

static bool add_todo(const struct rp_object_info *info, void *data) {
  struct admin_job *j = data;

  if (j->ntodo % 256 == 0) {
    struct rp_object_info *nv = realloc(j->todo, (j->ntodo + 256) * sizeof(*nv));
    if (nv == NULL)
      return false;
    j->todo = nv;
  }
  j->todo[j->ntodo++] = *info;
  return true;
}

static void cache_verify(struct rp_exchange *x, struct rp_cache *cache, bool stream) {
  struct admin_job *j;
  uint64_t bytes = 0;
  size_t total;

  if (verify_running) {
    rp__admin_reply_error(x, 409, NULL, "a verification is already running");
    return;
  }
  j = job_new(x, cache, 200, NULL);
  if (j == NULL) {
    rp__admin_reply_error(x, 500, NULL, "out of memory");
    return;
  }
  j->is_verify = true;
  verify_running = true;
  j->results = json_array();
  rp_cache_foreach(cache, add_todo, j);
  {
    struct rp_cache_stats st;
    rp_cache_stats(cache, &st);
    total = (size_t)st.objects;
  }
  if (j->results == NULL || j->ntodo != total) {
    job_free(j);
    rp__admin_reply_error(x, 500, NULL, "out of memory");
    return;
  }
  rp_log_info("cache verify: %zu object(s), one at a time on the thread pool", j->ntodo);
  if (stream) {
    for (size_t i = 0; i < j->ntodo; i++)
      bytes += j->todo[i].size;
    stream_head(j);
    if (j->x == NULL) {
      job_free(j);
      return;
    }
    j->stream = true;
    /* First line: what there is to do. */
    stream_line(
        j, json_pack("{s:I, s:I}", "objects", (json_int_t)j->ntodo, "bytes", (json_int_t)bytes));
  }
  verify_next(j);
}

/* "max_size=SIZE" (the only parameter): 0 when absent, -1 when malformed. */
static int gc_bound(const char *q, size_t n, uint64_t *out) {
  char v[32];

  *out = 0;
  if (n == 0)
    return 0;
  if (n <= 9 || n - 9 >= sizeof(v) || memcmp(q, "max_size=", 9) != 0)
    return -1;
  memcpy(v, q + 9, n - 9);
  v[n - 9] = '\0';
  if (rp_config_parse_size(v, out) != 0 || *out == 0)
    return -1;
  return 0;
}

/* A streamed gc's line per evicted object, gathered into one chunk. */
static bool add_evicted(const struct rp_object_info *info, void *data) {
  char dg[160];

  rp_digest_format(&info->digest, dg, sizeof dg);
  return add_line(data, json_pack("{s:s, s:I}", "evicted", dg, "size", (json_int_t)info->size)) ==
         0;
}

static void cache_gc(struct rp_exchange *x, struct rp_cache *cache, const char *q, size_t qlen,
                     bool stream) {
  struct rp_cache_stats st;
  uint64_t bound, freed = 0, evicted;
  struct rp_sbuf lines = {0};
  struct admin_job *j;

  if (gc_bound(q, qlen, &bound) != 0) {
    rp__admin_reply_error(x, 400, NULL,
                          "the only parameter is max_size=SIZE (bytes, or 512M, 20G, ...; > 0)");
    return;
  }
  j = job_new(x, cache, 200, NULL);
  if (j == NULL) {
    rp__admin_reply_error(x, 500, NULL, "out of memory");
    return;
  }
  rp_cache_stats(cache, &st);
  if (bound == 0)
    bound = st.max_size;
  if (stream) {
    /* First line: what there is, and the bound to trim it to. */
    stream_head(j);
    if (j->x == NULL) {
      job_free(j);
      return;
    }
    j->stream = true;
    stream_line(j, json_pack("{s:I, s:I, s:I}", "objects", (json_int_t)st.objects, "bytes",
                             (json_int_t)st.size_bytes, "max_size", (json_int_t)bound));
  }
  /* Eviction itself is quick (the index in memory); the files go while the
   * index worker catches up (job_finish). */
  evicted = rp_cache_evict_each(cache, bound, &freed, stream ? add_evicted : NULL, &lines);
  if (stream) {
    size_t n;
    char *p = rp_sbuf_take(&lines, &n);
    if (p != NULL && n > 0)
      stream_lines(j, p, n);
    else
      free(p);
  }
  rp_sbuf_free(&lines);
  if (stream && j->x == NULL) {
    job_free(j); /* the client went while the lines were queued */
    return;
  }
  rp_cache_stats(cache, &st);
  rp_log_info("cache gc: evicted %llu object(s), %llu bytes (bound %llu bytes)",
              (unsigned long long)evicted, (unsigned long long)freed, (unsigned long long)bound);
  /* Files without an index row are removed when the instance starts: while
   * it runs, every file under blobs/ has its row or is being published. */
  j->body = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "evicted", (json_int_t)evicted,
                      "evicted_bytes", (json_int_t)freed, "stray_files", (json_int_t)0,
                      "stray_bytes", (json_int_t)0, "size_bytes", (json_int_t)st.size_bytes,
                      "objects", (json_int_t)st.objects, "max_size", (json_int_t)bound);
  job_finish(j);
}

static void cache_rm(struct rp_exchange *x, struct rp_cache *cache, const struct rp_digest *d) {
  char dg[160];
  struct admin_job *j;
  int rc = rp_cache_remove(cache, d);

  rp_digest_format(d, dg, sizeof dg);
  if (rc == RP_EINVAL) {
    rp__admin_reply_error(x, 404, NULL, "not in the cache");
    return;
  }
  if (rc == RP_EDENIED) {
    rp__admin_reply_error(x, 409, NULL, "in use (being served); not removed");
    return;
  }
  if (rc != 0) {
    rp__admin_reply_error(x, 500, NULL, rp_strerror(rc));
    return;
  }
  rp_log_info("cache rm: %s removed", dg);
  j = job_new(x, cache, 200, json_pack("{s:s}", "removed", dg));
  if (j == NULL) {
    rp__admin_reply_error(x, 500, NULL, "out of memory");
    return;
  }
  job_finish(j);
}

static void cache_du(struct rp_exchange *x, struct rp_cache *cache) {
  struct rp_cache_stats st;

  rp_cache_stats(cache, &st);
  rp__admin_reply_json(
      x, 200,
      json_pack("{s:I, s:I, s:I, s:I, s:I, s:I}", "size_bytes", (json_int_t)st.size_bytes,
                "objects", (json_int_t)st.objects, "max_size", (json_int_t)st.max_size,
                "fills_in_flight", (json_int_t)st.fills_in_flight, "evictions",
                (json_int_t)st.evictions, "digest_mismatches", (json_int_t)st.digest_mismatches));
}

static void cache_ls(struct rp_exchange *x, struct rp_cache *cache) {
  json_t *arr = json_array();
  struct rp_cache_stats st;

  rp_cache_stats(cache, &st);
  if (arr != NULL)
    rp_cache_foreach(cache, add_object, arr);
  if (arr == NULL || json_array_size(arr) != st.objects) {
    json_decref(arr);
    rp__admin_reply_error(x, 500, NULL, "out of memory");
    return;
  }
  rp__admin_reply_json(x, 200, json_pack("{s:o}", "objects", arr));
}

static void cache_stat(struct rp_exchange *x, struct rp_cache *cache, const struct rp_digest *d) {
  struct rp_object_info info;

  if (!rp_cache_has(cache, d, &info)) {
    rp__admin_reply_error(x, 404, NULL, "not in the cache");
    return;
  }
  rp__admin_reply_json(x, 200, object_json(&info));
}

static bool has_cli_header(const struct rp_http_head *h) {
  const struct rp_http_header *hd = rp_http_header_find(h, CLI_HEADER);

  return hd != NULL && hd->value_len == 1 && hd->value[0] == '1';
}

/* path (without the query) starts with "/cache/". */
void rp__admin_cache(struct rp_exchange *x, struct rp_cache *cache, const char *path, size_t plen,
                     const char *query, size_t qlen) {
  static const char objects[] = "/cache/objects";
  const size_t olen = sizeof(objects) - 1;
  const struct rp_http_head *h = x->head;
  int m = h->method_id;
  bool read = m == HTTP_GET || m == HTTP_HEAD;
  struct rp_digest d;

  enum { EP_LS, EP_OBJECT, EP_DU, EP_VERIFY, EP_GC } ep;
  const char *allow;

  if (plen == olen && memcmp(path, objects, olen) == 0) {
    ep = EP_LS;
    allow = "GET, HEAD";
  } else if (plen > olen + 1 && memcmp(path, objects, olen) == 0 && path[olen] == '/') {
    ep = EP_OBJECT;
    allow = "GET, HEAD, DELETE";
  } else if (plen == 9 && memcmp(path, "/cache/du", 9) == 0) {
    ep = EP_DU;
    allow = "GET, HEAD";
  } else if (plen == 13 && memcmp(path, "/cache/verify", 13) == 0) {
    ep = EP_VERIFY;
    allow = "POST";
  } else if (plen == 9 && memcmp(path, "/cache/gc", 9) == 0) {
    ep = EP_GC;
    allow = "POST";
  } else {
    rp__admin_reply_error(x, 404, NULL, "no such admin endpoint");
    return;
  }
  if ((ep == EP_VERIFY || ep == EP_GC) ? m != HTTP_POST
                                       : !(read || (ep == EP_OBJECT && m == HTTP_DELETE))) {
    rp__admin_reply_error(x, 405, allow, "method not allowed here");
    return;
  }
  if (!read && !has_cli_header(h)) {
    rp__admin_reply_error(x, 403, NULL, "changing the cache needs the header X-Regproxy-Cli: 1");
    return;
  }
  if (ep == EP_OBJECT && rp_digest_parse(path + olen + 1, plen - olen - 1, &d) != 0) {
    rp__admin_reply_error(x, 400, NULL,
                          "not a digest (sha256:<64 hex> or sha512:<128 hex>, lower case)");
    return;
  }
  if (cache == NULL) {
    rp__admin_reply_error(x, 503, NULL, "the cache is off");
    return;
  }
  switch (ep) {
  case EP_LS: cache_ls(x, cache); break;
  case EP_OBJECT:
    if (m == HTTP_DELETE)
      cache_rm(x, cache, &d);
    else
      cache_stat(x, cache, &d);
    break;
  case EP_DU: cache_du(x, cache); break;
  case EP_VERIFY: cache_verify(x, cache, wants_stream(h)); break;
  case EP_GC: cache_gc(x, cache, query, qlen, wants_stream(h)); break;
  }
}
