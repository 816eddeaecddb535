/* Serving a registry request from the content-addressed store or a running
 * fill, and the fill jobs: one upstream fetch per digest feeding one fill,
 * outliving the client that started it, resumed with Range when cut, with
 * the clients that came before its answer waiting on it (SPEC §3 "Blobs"). */
#include <jansson.h>
#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "regcache.h"
#include "regproxy/error.h"
#include "regproxy/log.h"
#include "regproxy/metrics.h"

/* ---- serving ---- */

void rp__reg_finish(struct rp__regreq *rq) {
  struct rp_conn *c = rq->c;
  c->rc = NULL;
  free(rq);
  rp_exchange_finish(rp__conn_exchange(c));
}

static void on_reader_done(struct rp_reader *r, void *data, int status) {
  struct rp__regreq *rq = data;
  struct rp_conn *c = rq->c;
  char why[128];

  (void)r;
  rq->reader = NULL;
  if (status != 0) {
    /* Never a complete wrong body: the client sees the connection cut. */
    snprintf(why, sizeof(why), "cache read failed: %s", rp_strerror(status));
    rp_exchange_abort(rp__conn_exchange(c), why);
    return;
  }
  /* Only the client that caused a fill cost upstream bytes; hits, joiners,
   * revalidated and stale answers are bytes the cache saved. */
  rp_metrics
      .bytes[1][strcmp(c->log.cache, "miss") == 0 ? RP_SRC_BYTES_UPSTREAM : RP_SRC_BYTES_CACHE] +=
      rq->length;
  rp__reg_finish(rq);
}

/* 200 (or 206 for a range) with the object's identity, then the bytes from a
 * reader on the published object (d) or the running fill (f). */
int rp__reg_serve(struct rp_conn *c, struct rp__regreq *rq, const struct rp_digest *d,
                  struct rp_fill *f, uint64_t size, const char *media_type, uint64_t off,
                  int64_t len, bool partial) {
  struct rp_exchange *x = rp__conn_exchange(c);
  struct rp_http_header h[5];
  uint64_t n = len < 0 ? size - off : (uint64_t)len;
  char dg[140], range[96];
  size_t nh = 0;
  int rc;

  rp_digest_format(d, dg, sizeof(dg));
  rp_http_header_init(&h[nh++], "Content-Type",
                      media_type != NULL && media_type[0] ? media_type
                                                          : "application/octet-stream");
  rp_http_header_init(&h[nh++], "Docker-Content-Digest", dg);
  rp_http_header_init(&h[nh++], "Accept-Ranges", "bytes");
  rp_http_header_init(&h[nh++], "Docker-Distribution-API-Version", "registry/2.0");
  if (partial) {
    snprintf(range, sizeof(range), "bytes %llu-%llu/%llu", (unsigned long long)off,
             (unsigned long long)(off + n - 1), (unsigned long long)size);
    rp_http_header_init(&h[nh++], "Content-Range", range);
  }
  rc = rp_exchange_start(x, partial ? 206 : 200, h, nh, (int64_t)n);
  if (rc != 0)
    return rc;
  if (c->req_is_head || n == 0) {
    rp__reg_finish(rq);
    return 0;
  }
  rq->length = n;
  rq->reader = rp_reader_start(c->srv->cache, f == NULL ? d : NULL, f, off, (int64_t)n,
                               rp_exchange_body(x), on_reader_done, rq);
  if (rq->reader == NULL)
    return UV_EIO;
  return 0;
}

/* "bytes=N-" or "bytes=N-M" against a known size; false for anything else
 * (multiple ranges, suffix ranges): those go upstream. */
bool rp__reg_parse_range(const struct rp_http_head *h, uint64_t size, uint64_t *off, int64_t *len,
                         bool *present) {
  const struct rp_http_header *r = rp_http_header_find(h, "range");
  uint64_t n;

  *present = r != NULL;
  *off = 0;
  *len = -1;
  if (r == NULL)
    return true;
  if (rp_http_range_parse(r->value, r->value_len, size, off, &n) != 0)
    return false;
  *len = (int64_t)n;
  return true;
}

/* The client's range (or the whole object) of a fill whose size the upstream
 * just told; 416 for a range that lies outside it. */
void rp__reg_serve_range(struct rp_conn *c, struct rp__regreq *rq, const struct rp_digest *d,
                         struct rp_fill *f, uint64_t size, const char *ctype) {
  uint64_t off;
  int64_t len;
  bool partial;

  if (!rp__reg_parse_range(c->head, size, &off, &len, &partial)) {
    struct rp_http_header h;
    char range[48];

    c->rc = NULL;
    free(rq);
    snprintf(range, sizeof(range), "bytes */%llu", (unsigned long long)size);
    rp_http_header_init(&h, "Content-Range", range);
    if (rp_exchange_reply(rp__conn_exchange(c), 416, &h, 1, NULL, 0) != 0)
      rp__conn_close(c);
    return;
  }
  if (rp__reg_serve(c, rq, d, f, size, ctype, off, len, partial) != 0) {
    c->rc = NULL;
    free(rq);
    rp__conn_close(c);
  }
}

/* ---- the fill job ---- */

/* A deep copy of an upstream request, so it can be sent again (with a Range)
 * after the client that caused it left; one allocation. */
struct saved_req {
  struct rp_fetch_req req;
  size_t n;
  struct rp_http_header h[];
};

static struct saved_req *saved_req_copy(const struct rp_fetch_req *r) {
  size_t n = r->nheaders,
         bytes = sizeof(struct saved_req) + (n + 1) * sizeof(struct rp_http_header);
  struct saved_req *sr;
  char *p;

  bytes += strlen(r->url) + 1 + (r->proxy ? strlen(r->proxy) + 1 : 0) +
           (r->proxy_userinfo ? strlen(r->proxy_userinfo) + 1 : 0) + 64;
  for (size_t i = 0; i < n; i++)
    bytes += r->headers[i].name_len + r->headers[i].value_len;
  sr = malloc(bytes);
  if (sr == NULL)
    return NULL;
  sr->req = *r;
  sr->n = n;
  p = (char *)&sr->h[n + 1];
  for (size_t i = 0; i < n; i++) {
    sr->h[i].name = memcpy(p, r->headers[i].name, r->headers[i].name_len);
    sr->h[i].name_len = r->headers[i].name_len;
    p += r->headers[i].name_len;
    sr->h[i].value = memcpy(p, r->headers[i].value, r->headers[i].value_len);
    sr->h[i].value_len = r->headers[i].value_len;
    p += r->headers[i].value_len;
  }
  sr->req.url = strcpy(p, r->url);
  p += strlen(r->url) + 1;
  if (r->proxy != NULL) {
    sr->req.proxy = strcpy(p, r->proxy);
    p += strlen(r->proxy) + 1;
  }
  if (r->proxy_userinfo != NULL) {
    sr->req.proxy_userinfo = strcpy(p, r->proxy_userinfo);
    p += strlen(r->proxy_userinfo) + 1;
  }
  sr->req.headers = sr->h;
  /* The last slot and 64 bytes are kept for the Range of a resumption. */
  sr->h[n].name = "Range";
  sr->h[n].name_len = 5;
  sr->h[n].value = p;
  sr->h[n].value_len = 0;
  return sr;
}

void rp__reg_job_free(struct rp__filljob *job) {
  struct rp__filljob **pp = &job->srv->jobs;
  if (job->fill != NULL) {
    /* Published before its watcher ran: the confirmation still counts. */
    if (job->memo_pending && rp_fill_state(job->fill) == RP_FILL_PUBLISHED)
      rp__reg_memo_confirm_key(job->srv, job->memo_key);
    rp_fill_on_published(job->fill, NULL, NULL);
  }
  free(job->saved);
  while (*pp != NULL && *pp != job)
    pp = &(*pp)->next;
  if (*pp == job)
    *pp = job->next;
  rp_fill_unref(job->fill);
  free(job);
}

/* A job stays listed after its transfer ended until its fill is published or
 * failed: in between (verify, fsync, rename on the thread pool) new readers
 * still join the fill. Settled jobs are swept here. */
struct rp__filljob *rp__reg_job_find(struct rp_server *srv, const struct rp_digest *d) {
  struct rp__filljob *found = NULL, *j, *next;
  for (j = srv->jobs; j != NULL; j = next) {
    next = j->next;
    if (j->done && (j->fill == NULL || rp_fill_state(j->fill) != RP_FILL_RUNNING)) {
      rp__reg_job_free(j);
      continue;
    }
    if (found == NULL && j->d.algo == d->algo && strcmp(j->d.hex, d->hex) == 0 && !j->passing)
      found = j;
  }
  return found;
}

/* The waiters of a job are served from its fill once it started, or relay
 * their own request when the upstream answer was not cacheable. */
void rp__reg_release_waiters(struct rp__filljob *job) {
  while (job->waiters != NULL) {
    struct rp__regreq *rq = job->waiters;
    struct rp_conn *c = rq->c;
    job->waiters = rq->next_waiter;
    rq->waiting_on = NULL;
    if (job->fill != NULL && !job->passing && rp_fill_state(job->fill) != RP_FILL_FAILED) {
      if (rp__reg_client_ok(c, job->registry, false) || rp__reg_job_same_credential(job, c)) {
        c->log.cache = "coalesced";
        rp__reg_serve_range(c, rq, &job->d, job->fill, job->size, job->ctype);
      } else {
        /* Another credential than the one the upstream just accepted. */
        c->rc = NULL;
        free(rq);
        if (!rp__reg_start_head(c, c->head, &rp__reg_confirm_callbacks, &job->d))
          rp__mitm_pass_start(c);
      }
    } else {
      c->rc = NULL;
      free(rq);
      rp__mitm_pass_start(c);
    }
  }
}

static void on_fill_writable(struct rp_fill *f, void *data) {
  struct rp__filljob *job = data;
  (void)f;
  if (job->paused && job->fetch != NULL) {
    job->paused = false;
    rp_fetch_resume(job->fetch);
  }
}

static void on_fill_state(struct rp_fill *f, void *data) {
  struct rp__filljob *job = data;
  (void)f;
  /* The cache gave the fill up: stop the upstream transfer. */
  if (job->fetch != NULL) {
    rp_fetch_cancel(job->fetch);
    job->fetch = NULL;
  }
  if (job->rq == NULL)
    rp__reg_job_free(job);
}

void rp__reg_header_copy(const struct rp_http_header *h, size_t n, const char *name, char *out,
                         size_t outsz) {
  out[0] = '\0';
  for (size_t i = 0; i < n; i++) {
    if (rp_http_token_eq(h[i].name, h[i].name_len, name)) {
      size_t k = h[i].value_len < outsz - 1 ? h[i].value_len : outsz - 1;
      memcpy(out, h[i].value, k);
      out[k] = '\0';
      return;
    }
  }
}

static void job_on_published(struct rp_fill *f, void *data) {
  struct rp__filljob *job = data;
  (void)f;
  if (job->memo_pending) {
    job->memo_pending = false;
    rp__reg_memo_confirm_key(job->srv, job->memo_key);
  }
}

/* The client sends the very credential the upstream accepted for this job:
 * the fill's bytes are what the upstream would give it (no HEAD needed). */
bool rp__reg_job_same_credential(const struct rp__filljob *job, const struct rp_conn *c) {
  unsigned char key[RP__MEMO_KEY_LEN];
  if (!job->memo_pending)
    return false;
  rp__reg_memo_key(c, job->registry, job->repo, key);
  return memcmp(key, job->memo_key, sizeof(key)) == 0;
}

static int job_on_head(struct rp_fetch *f, void *data, int status, const char *reason,
                       const struct rp_http_header *h, size_t n) {
  struct rp__filljob *job = data;
  struct rp__regreq *rq = job->rq;
  struct rp_conn *c = rq != NULL ? rq->c : NULL;
  char ctype[128];
  int64_t size = rp_http_header_size(h, n, "content-length");

  rp__reg_header_copy(h, n, "content-type", ctype, sizeof(ctype));
  if (job->fill != NULL) {
    /* A resumption: 206 continues where the fill stands; a registry that
     * ignores Range answers 200 from the start, which we skip up to there. */
    if (status == 206)
      return 0;
    if (status == 200) {
      job->skip = rp_fill_received(job->fill);
      return 0;
    }
    return -1;
  }
  if (c == NULL)
    return -1; /* the client left before any answer: nothing worth keeping */
  if (job->is_manifest)
    rp__status_ratelimit(c->srv, job->registry, rp__status_authenticated(c), h, n);
  if (status != 200 || size < 0 || (job->is_manifest && strstr(ctype, "prettyjws") != NULL)) {
    /* Not a cacheable answer (401, 404, a signed schema-1 manifest…): the
     * pass-through relays it as it is. */
    job->passing = true;
    c->fetch = f;
    rp__reg_release_waiters(job);
    return rp__mitm_pass_head(f, c, status, reason, h, n);
  }
  job->size = (uint64_t)size;
  snprintf(job->ctype, sizeof(job->ctype), "%s", ctype);
  job->fill = rp_fill_start(c->srv->cache, &job->d, size, job->is_manifest, ctype);
  if (job->fill == NULL) {
    /* Another fill for this digest started meanwhile: relay this one plainly. */
    job->passing = true;
    c->fetch = f;
    rp__reg_release_waiters(job);
    return rp__mitm_pass_head(f, c, status, reason, h, n);
  }
  rp_fill_set_producer(job->fill, on_fill_writable, on_fill_state, job);
  /* SPEC §3: the object belongs to the repository, and the credential is
   * confirmed there, once the bytes are verified, not at this head (which
   * may be a CDN's after a redirect). */
  rp_fill_note_repo(job->fill, job->registry, job->repo);
  rp__reg_memo_key(c, job->registry, job->repo, job->memo_key);
  job->memo_pending = true;
  rp_fill_on_published(job->fill, job_on_published, job);
  c->log.cache = "miss";
  job->rq = NULL; /* from here the reader serves the client; the job only fills */
  rq->job = NULL;
  rp__reg_serve_range(c, rq, &job->d, job->fill, (uint64_t)size, ctype);
  rp__reg_release_waiters(job);
  return 0;
}

static int job_on_body(struct rp_fetch *f, void *data, const char *p, size_t n) {
  struct rp__filljob *job = data;
  int rc;

  if (job->passing)
    return job->rq != NULL ? rp__mitm_pass_body(f, job->rq->c, p, n) : -1;
  if (job->skip > 0) {
    size_t drop = job->skip < n ? (size_t)job->skip : n;
    job->skip -= drop;
    p += drop;
    n -= drop;
    if (n == 0)
      return 0;
  }
  rc = rp_fill_write(job->fill, p, n);
  if (rc == RP_FILL_AGAIN) {
    job->paused = true;
    return RP_FETCH_PAUSE;
  }
  rp_metrics.upstream_bytes += n;
  return rc == 0 ? 0 : -1;
}

static const struct rp_fetch_callbacks job_callbacks;

/* The upstream failed before any answer (unreachable, reset, silent): the
 * waiters asked it the same thing, so they get that failure (a 502 naming
 * it, or a stale answer) rather than each waiting for it once more. */
static void fail_waiters(struct rp__filljob *job, int status, const char *reason) {
  while (job->waiters != NULL) {
    struct rp__regreq *rq = job->waiters;
    struct rp_conn *c = rq->c;
    job->waiters = rq->next_waiter;
    rq->waiting_on = NULL;
    c->rc = NULL;
    free(rq);
    rp__mitm_pass_done(NULL, c, status, reason);
  }
}

static void job_on_done(struct rp_fetch *f, void *data, int status, const char *reason) {
  struct rp__filljob *job = data;

  job->fetch = NULL;
  if (status != 0 && status != RP_EABORTED && job->fill == NULL && !job->passing)
    fail_waiters(job, status, reason);
  rp__reg_release_waiters(job);
  if (status != 0 && job->fill != NULL && !job->passing && job->saved != NULL &&
      job->attempts < 3 && rp_fill_state(job->fill) == RP_FILL_RUNNING) {
    /* Upstream cut mid-fill: ask the registry URL again (a CDN URL may have
     * expired) for the rest, with the same credentials. */
    struct saved_req *sr = job->saved;
    char *range = (char *)sr->h[sr->n].value;
    job->attempts++;
    sr->h[sr->n].value_len =
        (size_t)snprintf(range, 64, "bytes=%llu-", (unsigned long long)rp_fill_received(job->fill));
    sr->req.nheaders = sr->n + 1;
    rp_log_info("fill %s: upstream cut (%s), resuming at byte %s (attempt %u of 3)", job->d.hex,
                reason, range + 6, job->attempts);
    job->fetch = rp_fetch_start(job->srv->up, &sr->req, &job_callbacks, job);
    if (job->fetch != NULL)
      return;
  }
  if (job->fill != NULL && !job->passing) {
    job->done = true;
    if (status == 0) {
      rp_fill_finish(job->fill);
      return; /* listed until published: job_find sweeps it */
    }
    rp_fill_abort(job->fill, reason);
  } else if (job->rq != NULL) {
    /* A relayed answer ended, or the fetch failed before any head: the
     * pass-through finishes the client's response (its 502 then). */
    struct rp_conn *c = job->rq->c;
    job->rq->job = NULL;
    c->rc = NULL;
    free(job->rq);
    rp__mitm_pass_done(f, c, status, reason);
  }
  rp__reg_job_free(job);
}

static const struct rp_fetch_callbacks job_callbacks = {
    .on_head = job_on_head,
    .on_body = job_on_body,
    .on_done = job_on_done,
};

/* Fetch d from upstream into a new fill while c reads it (cache=miss).
 * path: the upstream path (manifests by digest after a tag check), or NULL
 * for the client's. false (rq freed) when the request should pass instead. */
bool rp__reg_start_job(struct rp_conn *c, struct rp__regreq *rq, const struct rp_http_head *h,
                       const struct rp_digest *dp, bool is_manifest, const char *path) {
  struct rp_server *srv = c->srv;
  struct rp__filljob *job;
  struct rp__upreq u;
  struct rp_digest d = *dp;

  job = calloc(1, sizeof(*job));
  if (job == NULL || rp__upreq_build(c, h, "GET", true, path, &u) != 0) {
    free(job);
    free(rq);
    return false;
  }
  job->srv = srv;
  job->rq = rq;
  job->d = d;
  job->next = srv->jobs;
  srv->jobs = job;
  job->is_manifest = is_manifest;
  snprintf(job->registry, sizeof(job->registry), "%s", rq->registry);
  snprintf(job->repo, sizeof(job->repo), "%s", c->reg.name);
  /* Redirects to a CDN are followed here; the digest stays the key. */
  u.req.follow_redirects = true;
  u.req.body_len = 0;
  job->saved = saved_req_copy(&u.req);
  rq->job = job;
  c->rc = rq;
  rp__conn_go_state(c, RP_CONN_PASS);
  job->fetch = rp_fetch_start(srv->up, &u.req, &job_callbacks, job);
  rp__upreq_free(&u);
  if (job->fetch == NULL) {
    c->rc = NULL;
    free(rq);
    rp__reg_job_free(job);
    rp__conn_respond(c, 502, "out of memory", true);
  }
  return true;
}

/* ---- the status page ---- */

void rp__regcache_fills_json(struct rp_server *srv, struct json_t *arr) {
  for (struct rp__filljob *j = srv->jobs; j != NULL; j = j->next) {
    char dg[140];
    if (j->fill == NULL || j->passing || rp_fill_state(j->fill) != RP_FILL_RUNNING)
      continue;
    rp_digest_format(&j->d, dg, sizeof(dg));
    json_array_append_new(
        arr, json_pack("{s:s, s:s, s:s, s:I, s:I, s:i}", "digest", dg, "registry", j->registry,
                       "repository", j->repo, "received", (json_int_t)rp_fill_received(j->fill),
                       "size", (json_int_t)j->size, "readers", (int)rp_fill_readers(j->fill)));
  }
}
