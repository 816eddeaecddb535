/* Fill jobs: one upstream fetch per digest feeding one fill, outliving the
 * client that started it, resumed with Range when cut, with the clients
 * that came before its answer waiting on it (SPEC §3 "Blobs"). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "regproxy/log.h"

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

void rp__job_free(struct rp__filljob *job) {
  struct rp__filljob **pp = &job->reg->jobs;
  if (job->fill != NULL) {
    /* Published before its watcher ran: the confirmation still counts. */
    if (job->memo_pending && rp_fill_state(job->fill) == RP_FILL_PUBLISHED)
      rp__memo_confirm_key(job->reg, job->memo_key);
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
struct rp__filljob *rp__job_find(struct rp_registry *reg, const struct rp_digest *d) {
  struct rp__filljob *found = NULL, *j, *next;
  for (j = reg->jobs; j != NULL; j = next) {
    next = j->next;
    if (j->done && (j->fill == NULL || rp_fill_state(j->fill) != RP_FILL_RUNNING)) {
      rp__job_free(j);
      continue;
    }
    if (found == NULL && j->d.algo == d->algo && strcmp(j->d.hex, d->hex) == 0 && !j->passing)
      found = j;
  }
  return found;
}

/* The waiters of a job are served from its fill once it started, or relay
 * their own request when the upstream answer was not cacheable. */
void rp__job_release_waiters(struct rp__filljob *job) {
  while (job->waiters != NULL) {
    struct rp__rq *rq = job->waiters;
    job->waiters = rq->next_waiter;
    rq->waiting_on = NULL;
    if (job->fill != NULL && !job->passing && rp_fill_state(job->fill) != RP_FILL_FAILED) {
      if (rp__client_ok(rq, false) || rp__job_same_credential(job, rq)) {
        rp__rq_label(rq, "coalesced");
        rp__serve_range(rq, &job->d, job->fill, job->size, job->ctype);
      } else if (!rp__start_head(rq, &rp__confirm_callbacks, &job->d)) {
        /* Another credential than the one the upstream just accepted. */
        rp__relay(rq);
      }
    } else {
      rp__relay(rq);
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
    rp__job_free(job);
}

static void job_on_published(struct rp_fill *f, void *data) {
  struct rp__filljob *job = data;
  (void)f;
  if (job->memo_pending) {
    job->memo_pending = false;
    rp__memo_confirm_key(job->reg, job->memo_key);
  }
}

/* The client sends the very credential the upstream accepted for this job:
 * the fill's bytes are what the upstream would give it (no HEAD needed). */
bool rp__job_same_credential(const struct rp__filljob *job, const struct rp__rq *rq) {
  unsigned char key[RP__MEMO_KEY_LEN];
  if (!job->memo_pending)
    return false;
  rp__memo_key(rq, job->registry, job->repo, key);
  return memcmp(key, job->memo_key, sizeof(key)) == 0;
}

/* Not a cacheable answer (401, 404, a signed schema-1 manifest, another
 * fill of the digest started meanwhile): the relay passes it on as it is,
 * on this very transfer. */
static int job_pass(struct rp__filljob *job, struct rp_fetch *f, int status, const char *reason,
                    const struct rp_http_header *h, size_t n) {
  struct rp__rq *rq = job->rq;
  job->passing = true;
  rq->fetch = f;
  rp__job_release_waiters(job);
  return rp__relay_head(f, rq, status, reason, h, n);
}

static int job_on_head(struct rp_fetch *f, void *data, int status, const char *reason,
                       const struct rp_http_header *h, size_t n) {
  struct rp__filljob *job = data;
  struct rp__rq *rq = job->rq;
  char ctype[128];
  int64_t size = rp_http_header_size(h, n, "content-length");

  rp__header_copy(h, n, "content-type", ctype, sizeof(ctype));
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
  if (rq == NULL)
    return -1; /* the client left before any answer: nothing worth keeping */
  if (job->is_manifest)
    rp__stats_ratelimit(job->reg, job->registry, rp__stats_authenticated(rq), h, n);
  if (status != 200 || size < 0 || (job->is_manifest && strstr(ctype, "prettyjws") != NULL))
    return job_pass(job, f, status, reason, h, n);
  job->size = (uint64_t)size;
  snprintf(job->ctype, sizeof(job->ctype), "%s", ctype);
  job->fill = rp_fill_start(job->reg->cache, &job->d, size, job->is_manifest, ctype);
  if (job->fill == NULL)
    return job_pass(job, f, status, reason, h, n);
  rp_fill_set_producer(job->fill, on_fill_writable, on_fill_state, job);
  /* SPEC §3: the object belongs to the repository, and the credential is
   * confirmed there, once the bytes are verified, not at this head (which
   * may be a CDN's after a redirect). */
  rp_fill_note_repo(job->fill, job->registry, job->repo);
  rp__memo_key(rq, job->registry, job->repo, job->memo_key);
  job->memo_pending = true;
  rp_fill_on_published(job->fill, job_on_published, job);
  rp__rq_label(rq, "miss");
  job->rq = NULL; /* from here the reader serves the client; the job only fills */
  rq->job = NULL;
  rp__serve_range(rq, &job->d, job->fill, (uint64_t)size, ctype);
  rp__job_release_waiters(job);
  return 0;
}

static int job_on_body(struct rp_fetch *f, void *data, const char *p, size_t n) {
  struct rp__filljob *job = data;
  int rc;

  if (job->passing)
    return job->rq != NULL ? rp__relay_body(f, job->rq, p, n) : -1;
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
  job->reg->counters.upstream_bytes += n;
  return rc == 0 ? 0 : -1;
}

static const struct rp_fetch_callbacks job_callbacks;

static void job_on_done(struct rp_fetch *f, void *data, int status, const char *reason) {
  struct rp__filljob *job = data;

  job->fetch = NULL;
  rp__job_release_waiters(job);
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
    job->fetch = rp_fetch_start(job->reg->up, &sr->req, &job_callbacks, job);
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
     * relay finishes the client's answer (its 502 then). */
    struct rp__rq *rq = job->rq;
    rq->job = NULL;
    job->rq = NULL;
    rp__job_free(job);
    rp__relay_done(f, rq, status, reason);
    return;
  }
  rp__job_free(job);
}

static const struct rp_fetch_callbacks job_callbacks = {
    .on_head = job_on_head,
    .on_body = job_on_body,
    .on_done = job_on_done,
};

/* Fetch d from upstream into a new fill while rq reads it (cache=miss).
 * path: the upstream path (manifests by digest after a tag check), or NULL
 * for the request's. */
bool rp__job_start(struct rp__rq *rq, const struct rp_digest *dp, bool is_manifest,
                   const char *path) {
  struct rp_registry *reg = rq->reg;
  struct rp__filljob *job;
  struct rp__upreq u;

  job = calloc(1, sizeof(*job));
  if (job == NULL || rp__upreq_build(rq, "GET", true, path, &u) != 0) {
    free(job);
    return false;
  }
  job->reg = reg;
  job->rq = rq;
  job->d = *dp;
  job->next = reg->jobs;
  reg->jobs = job;
  job->is_manifest = is_manifest;
  snprintf(job->registry, sizeof(job->registry), "%s", rq->registry);
  snprintf(job->repo, sizeof(job->repo), "%s", rq->path.name);
  /* Redirects to a CDN are followed here; the digest stays the key. */
  u.req.follow_redirects = true;
  u.req.body_len = 0;
  job->saved = saved_req_copy(&u.req);
  rq->job = job;
  job->fetch = rp_fetch_start(reg->up, &u.req, &job_callbacks, job);
  rp__upreq_free(&u);
  if (job->fetch == NULL) {
    rq->job = NULL;
    rp__job_free(job);
    rp_exchange_error(rq->x, 502, "out of memory", true);
  }
  return true;
}

/* The request left. A job that caches nothing yet (no fill, or a relayed
 * answer) has no reason to go on: clients waiting for it relay their own
 * requests. A job with a fill goes on filling for whoever comes next. */
void rp__job_detach(struct rp__filljob *job) {
  if (!job->passing && job->fill != NULL)
    return;
  if (job->fetch != NULL)
    rp_fetch_cancel(job->fetch);
  job->fetch = NULL;
  job->passing = true;
  rp__job_release_waiters(job);
  rp__job_free(job);
}

void rp__job_add_finished(struct rp_registry *reg, struct rp_fill *fill, const struct rp_digest *d,
                          uint64_t size, const char *ctype, const char *registry,
                          const char *repo) {
  struct rp__filljob *job = calloc(1, sizeof(*job));
  if (job == NULL) {
    rp_fill_unref(fill);
    return;
  }
  job->reg = reg;
  job->fill = fill;
  job->d = *d;
  job->is_manifest = true;
  job->size = size;
  job->done = true;
  snprintf(job->ctype, sizeof(job->ctype), "%s", ctype);
  snprintf(job->registry, sizeof(job->registry), "%s", registry);
  snprintf(job->repo, sizeof(job->repo), "%s", repo);
  job->next = reg->jobs;
  reg->jobs = job;
}

void rp__jobs_shutdown(struct rp_registry *reg) {
  while (reg->jobs != NULL) {
    struct rp__filljob *job = reg->jobs;
    if (job->rq != NULL) {
      job->rq->job = NULL;
      if (job->rq->fetch == job->fetch)
        job->rq->fetch = NULL;
    }
    if (job->fetch != NULL)
      rp_fetch_cancel(job->fetch);
    job->fetch = NULL;
    job->rq = NULL;
    job->passing = true;
    rp__job_release_waiters(job);
    rp__job_free(job);
  }
}

void rp__jobs_json(const struct rp_registry *reg, struct json_t *arr) {
  for (const struct rp__filljob *j = reg->jobs; j != NULL; j = j->next) {
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
