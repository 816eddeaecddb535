/* The cache endpoints `regproxy cache …` talks to while this instance holds
 * the cache directory (SPEC §3 "One owner per cache directory",
 * docs/admin.md): list, stat, du, verify (on the thread pool, one object at
 * a time), gc and rm. Digests in paths are validated and only ever looked up
 * in the index. verify and gc stream their progress as NDJSON lines (one
 * chunk each) to a client that accepts application/x-ndjson. */
#include <jansson.h>
#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "regproxy/cache.h"
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
  struct rp_server *srv;
  struct rp_cache *cache;
  uint64_t conn_id; /* the connection is found again by id: it may be gone */
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

static struct rp_conn *job_conn(const struct admin_job *j) {
  for (struct rp_conn *c = j->srv->conns; c != NULL; c = c->next)
    if (c->id == j->conn_id)
      return c->closing ? NULL : c;
  return NULL;
}

static void job_free(struct admin_job *j) {
  if (j == NULL)
    return;
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

/* The head of a streamed answer: 200, chunked NDJSON. The request stays
 * paused after its head until the last line is queued (job_answer). */
static int stream_head(struct rp_conn *c) {
  char head[256];
  int n = snprintf(head, sizeof head,
                   "HTTP/1.1 200 OK\r\nContent-Type: " NDJSON "\r\nTransfer-Encoding: chunked\r\n"
                   "Cache-Control: no-store\r\n%s\r\n",
                   c->keep_alive ? "" : "Connection: close\r\n");

  c->log.status = 200;
  return rp__conn_write_client(c, head, (size_t)n);
}

/* Lines (each ending in "\n") as one chunk; the terminating chunk too when
 * last. */
static int stream_chunk(struct rp_conn *c, const char *lines, size_t n, bool last) {
  struct rp_sbuf b = {0};
  char *p;
  size_t len;
  uv_buf_t buf;

  if (n > 0)
    rp_sbuf_addf(&b, "%zx\r\n", n);
  rp_sbuf_add(&b, lines, n);
  rp_sbuf_adds(&b, n > 0 ? "\r\n" : "");
  if (last)
    rp_sbuf_adds(&b, "0\r\n\r\n");
  p = rp_sbuf_take(&b, &len);
  if (p == NULL)
    return RP_ENOMEM;
  buf = uv_buf_init(p, (unsigned)len);
  return rp__conn_write(c, c->client, &buf, 1, NULL, p);
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

/* One progress line (o taken) to the client of a streamed answer. A client
 * that cannot take it is closed: the job sees it gone at its next step. */
static void stream_line(struct rp_conn *c, json_t *o) {
  struct rp_sbuf b = {0};
  char *p;
  size_t n;

  if (add_line(&b, o) != 0 || (p = rp_sbuf_take(&b, &n)) == NULL) {
    rp_sbuf_free(&b);
    rp__conn_close(c);
    return;
  }
  if (stream_chunk(c, p, n, false) != 0)
    rp__conn_close(c);
  free(p);
}

/* Answer (when the client is still there), then the job is over. A streamed
 * answer ends with the body as its last line: the summary, or {"error"}. */
static void job_answer(struct admin_job *j) {
  struct rp_conn *c = job_conn(j);

  if (c != NULL && j->stream) {
    struct rp_sbuf b = {0};
    const char *err = json_string_value(json_object_get(j->body, "error"));
    char *p;
    size_t n;
    int rc;

    if (err != NULL)
      snprintf(c->log.reason, sizeof(c->log.reason), "%s", err);
    rc = add_line(&b, j->body != NULL ? j->body : json_pack("{s:s}", "error", "out of memory"));
    j->body = NULL;
    p = rc == 0 ? rp_sbuf_take(&b, &n) : NULL;
    if (p == NULL || stream_chunk(c, p, n, true) != 0) {
      rp_sbuf_free(&b);
      free(p);
      rp__conn_close(c);
      job_free(j);
      return;
    }
    free(p);
    rp__conn_go_state(c, RP_CONN_RESPOND);
    rp__conn_response_done(c);
    rp__conn_resume_input(c);
  } else if (c != NULL) {
    json_t *body = j->body;
    j->body = NULL;
    if (body == NULL)
      rp__admin_reply_error(c, 500, "", "out of memory");
    else
      rp__admin_reply_json(c, j->status, "", body, false);
    /* The request was paused after its head: finish reading it. */
    rp__conn_resume_input(c);
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

static struct admin_job *job_new(struct rp_conn *c, int status, json_t *body) {
  struct admin_job *j = calloc(1, sizeof(*j));

  if (j == NULL) {
    json_decref(body);
    return NULL;
  }
  j->srv = c->srv;
  j->cache = c->srv->cache;
  j->conn_id = c->id;
  j->status = status;
  j->body = body;
  /* No idle timeout while the work runs: it ends by itself, and the
   * connection reads nothing until it answered. */
  rp__conn_set_timer(c, RP_TM_NONE, 0);
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
    struct rp_conn *c = job_conn(j);
    /* Sent now, not kept; the size lets the client count bytes too. */
    if (json_object_set_new(r, "size", json_integer((json_int_t)j->todo[j->next - 1].size)) != 0) {
      json_decref(r);
      j->status = 500;
      j->next = j->ntodo;
    } else if (c != NULL) {
      stream_line(c, r);
    } else {
      json_decref(r);
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

  while (j->next < j->ntodo && j->status == 200 && job_conn(j) != NULL) {
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

static void cache_verify(struct rp_conn *c, struct rp_cache *cache, bool stream) {
  struct admin_job *j;
  uint64_t bytes = 0;
  size_t total;

  if (verify_running) {
    rp__admin_reply_error(c, 409, "", "a verification is already running");
    return;
  }
  j = job_new(c, 200, NULL);
  if (j == NULL) {
    rp__admin_reply_error(c, 500, "", "out of memory");
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
    rp__admin_reply_error(c, 500, "", "out of memory");
    return;
  }
  rp_log_info("cache verify: %zu object(s), one at a time on the thread pool", j->ntodo);
  if (stream) {
    for (size_t i = 0; i < j->ntodo; i++)
      bytes += j->todo[i].size;
    if (stream_head(c) != 0) {
      rp__conn_close(c);
      job_free(j);
      return;
    }
    j->stream = true;
    /* First line: what there is to do. */
    stream_line(
        c, json_pack("{s:I, s:I}", "objects", (json_int_t)j->ntodo, "bytes", (json_int_t)bytes));
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

static void cache_gc(struct rp_conn *c, struct rp_cache *cache, const char *q, size_t qlen,
                     bool stream) {
  struct rp_cache_stats st;
  uint64_t bound, freed = 0, evicted;
  struct rp_sbuf lines = {0};
  struct admin_job *j;
  json_t *body;

  if (gc_bound(q, qlen, &bound) != 0) {
    rp__admin_reply_error(c, 400, "",
                          "the only parameter is max_size=SIZE (bytes, or 512M, 20G, ...; > 0)");
    return;
  }
  rp_cache_stats(cache, &st);
  if (bound == 0)
    bound = st.max_size;
  if (stream) {
    /* First line: what there is, and the bound to trim it to. */
    if (stream_head(c) != 0) {
      rp__conn_close(c);
      return;
    }
    stream_line(c, json_pack("{s:I, s:I, s:I}", "objects", (json_int_t)st.objects, "bytes",
                             (json_int_t)st.size_bytes, "max_size", (json_int_t)bound));
  }
  /* Eviction itself is quick (the index in memory); the files go while the
   * index worker catches up (job_finish). */
  evicted = rp_cache_evict_each(cache, bound, &freed, stream ? add_evicted : NULL, &lines);
  if (stream) {
    char *p;
    size_t n;
    p = rp_sbuf_take(&lines, &n);
    if (p != NULL && n > 0 && !c->closing && stream_chunk(c, p, n, false) != 0)
      rp__conn_close(c);
    free(p);
  }
  rp_sbuf_free(&lines);
  if (stream && c->closing)
    return; /* the client went while the lines were queued */
  rp_cache_stats(cache, &st);
  rp_log_info("cache gc: evicted %llu object(s), %llu bytes (bound %llu bytes)",
              (unsigned long long)evicted, (unsigned long long)freed, (unsigned long long)bound);
  /* Files without an index row are removed when the instance starts: while
   * it runs, every file under blobs/ has its row or is being published. */
  body = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "evicted", (json_int_t)evicted,
                   "evicted_bytes", (json_int_t)freed, "stray_files", (json_int_t)0, "stray_bytes",
                   (json_int_t)0, "size_bytes", (json_int_t)st.size_bytes, "objects",
                   (json_int_t)st.objects, "max_size", (json_int_t)bound);
  j = job_new(c, 200, body);
  if (j == NULL) {
    if (stream)
      rp__conn_close(c); /* the head is out: no other answer fits */
    else
      rp__admin_reply_error(c, 500, "", "out of memory");
    return;
  }
  j->stream = stream;
  job_finish(j);
}

static void cache_rm(struct rp_conn *c, struct rp_cache *cache, const struct rp_digest *d) {
  char dg[160];
  struct admin_job *j;
  int rc = rp_cache_remove(cache, d);

  rp_digest_format(d, dg, sizeof dg);
  if (rc == RP_EINVAL) {
    rp__admin_reply_error(c, 404, "", "not in the cache");
    return;
  }
  if (rc == RP_EDENIED) {
    rp__admin_reply_error(c, 409, "", "in use (being served); not removed");
    return;
  }
  if (rc != 0) {
    rp__admin_reply_error(c, 500, "", rp_strerror(rc));
    return;
  }
  rp_log_info("cache rm: %s removed", dg);
  j = job_new(c, 200, json_pack("{s:s}", "removed", dg));
  if (j == NULL) {
    rp__admin_reply_error(c, 500, "", "out of memory");
    return;
  }
  job_finish(j);
}

static void cache_du(struct rp_conn *c, struct rp_cache *cache, bool head_only) {
  struct rp_cache_stats st;

  rp_cache_stats(cache, &st);
  rp__admin_reply_json(
      c, 200, "",
      json_pack("{s:I, s:I, s:I, s:I, s:I, s:I}", "size_bytes", (json_int_t)st.size_bytes,
                "objects", (json_int_t)st.objects, "max_size", (json_int_t)st.max_size,
                "fills_in_flight", (json_int_t)st.fills_in_flight, "evictions",
                (json_int_t)st.evictions, "digest_mismatches", (json_int_t)st.digest_mismatches),
      head_only);
}

static void cache_ls(struct rp_conn *c, struct rp_cache *cache, bool head_only) {
  json_t *arr = json_array();
  struct rp_cache_stats st;

  rp_cache_stats(cache, &st);
  if (arr != NULL)
    rp_cache_foreach(cache, add_object, arr);
  if (arr == NULL || json_array_size(arr) != st.objects) {
    json_decref(arr);
    rp__admin_reply_error(c, 500, "", "out of memory");
    return;
  }
  rp__admin_reply_json(c, 200, "", json_pack("{s:o}", "objects", arr), head_only);
}

static void cache_stat(struct rp_conn *c, struct rp_cache *cache, const struct rp_digest *d,
                       bool head_only) {
  struct rp_object_info info;

  if (!rp_cache_has(cache, d, &info)) {
    rp__admin_reply_error(c, 404, "", "not in the cache");
    return;
  }
  rp__admin_reply_json(c, 200, "", object_json(&info), head_only);
}

static bool has_cli_header(const struct rp_http_head *h) {
  const struct rp_http_header *hd = rp_http_header_find(h, CLI_HEADER);

  return hd != NULL && hd->value_len == 1 && hd->value[0] == '1';
}

/* path (without the query) starts with "/cache/". */
void rp__admin_cache(struct rp_conn *c, const struct rp_http_head *h, const char *path, size_t plen,
                     const char *query, size_t qlen) {
  static const char objects[] = "/cache/objects";
  const size_t olen = sizeof(objects) - 1;
  int m = h->method_id;
  bool head_only = m == HTTP_HEAD;
  bool read = m == HTTP_GET || head_only;
  struct rp_cache *cache = c->srv->cache;
  struct rp_digest d;

  enum { EP_LS, EP_OBJECT, EP_DU, EP_VERIFY, EP_GC } ep;
  const char *allow;

  if (plen == olen && memcmp(path, objects, olen) == 0) {
    ep = EP_LS;
    allow = "Allow: GET, HEAD\r\n";
  } else if (plen > olen + 1 && memcmp(path, objects, olen) == 0 && path[olen] == '/') {
    ep = EP_OBJECT;
    allow = "Allow: GET, HEAD, DELETE\r\n";
  } else if (plen == 9 && memcmp(path, "/cache/du", 9) == 0) {
    ep = EP_DU;
    allow = "Allow: GET, HEAD\r\n";
  } else if (plen == 13 && memcmp(path, "/cache/verify", 13) == 0) {
    ep = EP_VERIFY;
    allow = "Allow: POST\r\n";
  } else if (plen == 9 && memcmp(path, "/cache/gc", 9) == 0) {
    ep = EP_GC;
    allow = "Allow: POST\r\n";
  } else {
    rp__admin_reply_error(c, 404, "", "no such admin endpoint");
    return;
  }
  if ((ep == EP_VERIFY || ep == EP_GC) ? m != HTTP_POST
                                       : !(read || (ep == EP_OBJECT && m == HTTP_DELETE))) {
    rp__admin_reply_error(c, 405, allow, "method not allowed here");
    return;
  }
  if (!read && !has_cli_header(h)) {
    rp__admin_reply_error(c, 403, "", "changing the cache needs the header X-Regproxy-Cli: 1");
    return;
  }
  if (ep == EP_OBJECT && rp_digest_parse(path + olen + 1, plen - olen - 1, &d) != 0) {
    rp__admin_reply_error(c, 400, "",
                          "not a digest (sha256:<64 hex> or sha512:<128 hex>, lower case)");
    return;
  }
  if (cache == NULL) {
    rp__admin_reply_error(c, 503, "", "the cache is off");
    return;
  }
  switch (ep) {
  case EP_LS: cache_ls(c, cache, head_only); break;
  case EP_OBJECT:
    if (m == HTTP_DELETE)
      cache_rm(c, cache, &d);
    else
      cache_stat(c, cache, &d, head_only);
    break;
  case EP_DU: cache_du(c, cache, head_only); break;
  case EP_VERIFY: cache_verify(c, cache, wants_stream(h)); break;
  case EP_GC: cache_gc(c, cache, query, qlen, wants_stream(h)); break;
  }
}
