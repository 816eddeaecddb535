/* Fill jobs: one upstream fetch per digest feeding one fill, outliving the
 * client that started it, resumed with Range when cut, with the clients
 * that came before its answer waiting on it (contract §3 "Blobs"). A registry
 * with upstream mirrors (a site tier) has its objects fetched from them
 * first, with no credential, falling back to the registry itself (contract §3
 * "Upstream mirrors"). */
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

/* ---- upstream mirrors ---- */

#define MIRROR_BACKOFF_MS         30000
#define MIRROR_CONNECT_TIMEOUT_MS 3000
#define MIRROR_STALL_TIMEOUT_MS   10000

void rp__upmirrors_free(struct rp_registry *reg) {
  for (size_t i = 0; i < reg->n_upmirrors; i++) {
    for (size_t k = 0; k < reg->upmirrors[i].n; k++)
      free(reg->upmirrors[i].src[k].url);
    free(reg->upmirrors[i].src);
  }
  free(reg->upmirrors);
  reg->upmirrors = NULL;
  reg->n_upmirrors = 0;
}

/* "registry=URL[,URL…]" items, checked by the configuration. */
int rp__upmirrors_set(struct rp_registry *reg, char *const *items, size_t n) {
  rp__upmirrors_free(reg);
  if (n == 0)
    return 0;
  reg->upmirrors = calloc(n, sizeof(*reg->upmirrors));
  if (reg->upmirrors == NULL)
    return UV_ENOMEM;
  for (size_t i = 0; i < n; i++) {
    struct rp__upmirrors *m = &reg->upmirrors[reg->n_upmirrors];
    const char *eq = strchr(items[i], '=');
    char name[RP__REGISTRY_LEN];
    size_t k = 1;

    if (eq == NULL || (size_t)(eq - items[i]) >= sizeof(name))
      continue;
    snprintf(name, sizeof(name), "%.*s", (int)(eq - items[i]), items[i]);
    rp_reg_canonical(name, 0, m->registry, sizeof(m->registry));
    if (m->registry[0] == '\0')
      continue;
    for (const char *p = eq + 1; *p != '\0'; p++)
      k += *p == ',';
    m->src = calloc(k, sizeof(*m->src));
    if (m->src == NULL)
      return UV_ENOMEM;
    for (const char *p = eq + 1; *p != '\0';) {
      size_t len = strcspn(p, ",");
      if (len > 0 && (m->src[m->n].url = strndup(p, len)) != NULL)
        m->n++;
      p += len + (p[len] == ',' ? 1 : 0);
    }
    reg->n_upmirrors++;
  }
  return 0;
}

static const struct rp__upmirrors *mirrors_of(const struct rp_registry *reg, const char *registry) {
  for (size_t i = 0; i < reg->n_upmirrors; i++)
    if (strcmp(reg->upmirrors[i].registry, registry) == 0)
      return &reg->upmirrors[i];
  return NULL;
}

bool rp__has_mirrors(const struct rp__rq *rq) {
  /* Plain-HTTP registries have none: their identity is no ?ns= value. */
  return rq->way != RP_REGISTRY_PLAIN && mirrors_of(rq->reg, rq->registry) != NULL;
}

static struct rp__source *source_of(struct rp_registry *reg, const char *registry,
                                    const char *url) {
  const struct rp__upmirrors *m = mirrors_of(reg, registry);
  for (size_t i = 0; m != NULL && i < m->n; i++)
    if (strcmp(m->src[i].url, url) == 0)
      return &m->src[i];
  return NULL;
}

/* A mirror failed this job: skipped by every job for a while. */
static void mirror_failed(struct rp__filljob *job, const char *url, const char *why) {
  struct rp__source *s;
  char dg[140];
  if (url == NULL)
    return;
  s = source_of(job->reg, job->registry, url);
  if (s != NULL)
    s->backoff_until = uv_now(job->reg->loop) + MIRROR_BACKOFF_MS;
  rp_digest_format(&job->d, dg, sizeof(dg));
  rp_log_warn("upstream mirror %s failed for %s/%s@%s (%s); skipped for %d s", url, job->registry,
              job->repo, dg, why, MIRROR_BACKOFF_MS / 1000);
}

static void job_sources_free(struct rp__filljob *job) {
  for (size_t i = 0; i < job->nsrc; i++)
    free(job->srcs[i]);
  free(job->srcs);
  job->srcs = NULL;
  job->nsrc = 0;
  job->on_mirror = NULL;
}

void rp__job_free(struct rp__filljob *job) {
  struct rp__filljob **pp = &job->reg->jobs;
  if (job->fill != NULL) {
    /* Published before its watcher ran: the confirmation still counts. */
    if (job->memo_pending && rp_fill_state(job->fill) == RP_FILL_PUBLISHED)
      rp__memo_confirm_key(job->reg, job->memo_key);
    rp_fill_on_published(job->fill, NULL, NULL);
    rp_fill_on_settled(job->fill, NULL, NULL);
  }
  free(job->saved);
  job_sources_free(job);
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
    if (j->done && (j->fill == NULL || rp_fill_state(j->fill) != RP_FILL_RUNNING) && !j->holding) {
      if (j->fed_by != NULL && j->fill != NULL && rp_fill_state(j->fill) == RP_FILL_FAILED)
        /* Its bytes failed verification after the transfer ended. */
        mirror_failed(j, j->fed_by, "its bytes failed verification");
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
        bool published = rp_fill_state(job->fill) == RP_FILL_PUBLISHED;
        rp__rq_label(rq, "coalesced");
        rp__serve_range(rq, &job->d, published ? NULL : job->fill, job->size, job->ctype);
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
  if (job->fed_by != NULL && rp_fill_state(job->fill) == RP_FILL_FAILED)
    /* A mirror's bytes failed verification: not that mirror again soon. */
    mirror_failed(job, job->fed_by, "its bytes failed verification");
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

static void job_fetch(struct rp__filljob *job);

/* The fill a mirror fed is over: its clients are served from the verified
 * object, or the registry is asked (once) for bytes that do verify. */
static void job_mirror_settled(struct rp_fill *f, void *data) {
  struct rp__filljob *job = data;
  struct rp__rq *rq = job->rq;

  job->holding = false;
  if (rp_fill_state(f) == RP_FILL_PUBLISHED) {
    if (rq != NULL) {
      job->rq = NULL;
      rq->job = NULL;
      rp__serve_range(rq, &job->d, NULL, job->size, job->ctype);
    }
    rp__job_release_waiters(job);
    return;
  }
  if (job->fed_by != NULL)
    mirror_failed(job, job->fed_by, "its bytes failed verification");
  if (job->restarts++ == 0 && (rq != NULL || job->waiters != NULL) && job->fetch == NULL) {
    rp_fill_on_settled(job->fill, NULL, NULL);
    rp_fill_unref(job->fill);
    job->fill = NULL;
    job->done = false;
    job->fed_by = NULL;
    job->skip = 0;
    job->attempts = 0;
    job->next_src = job->nsrc; /* the registry itself */
    job_fetch(job);
    if (job->fetch != NULL)
      return;
  }
  if (rq != NULL) {
    job->rq = NULL;
    rq->job = NULL;
    rp_exchange_abort(rq->x, "no source gave bytes that verify");
  }
  rp__job_release_waiters(job);
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
  if (job->on_mirror != NULL &&
      (status != 200 || size < 0 || (job->is_manifest && strstr(ctype, "prettyjws") != NULL))) {
    /* Whatever a mirror says other than the object, the registry decides.
     * A 401/403 is about this repository (a site tier without credentials
     * for a private one), not the mirror's health: no back-off, or one
     * private pull would send every other object to the registry for 30 s. */
    char why[32];
    snprintf(why, sizeof(why), "answered %d", status);
    if (status == 401 || status == 403)
      rp_log_info("upstream mirror %s may not read %s/%s (%s); from the registry", job->on_mirror,
                  job->registry, job->repo, why);
    else
      mirror_failed(job, job->on_mirror, why);
    job->fall_back = true;
    return -1;
  }
  if (job->is_manifest && job->on_mirror == NULL)
    rp__stats_ratelimit(job->reg, job->registry, rp__stats_authenticated(rq), h, n);
  if (status != 200 || size < 0 || (job->is_manifest && strstr(ctype, "prettyjws") != NULL))
    return job_pass(job, f, status, reason, h, n);
  job->size = (uint64_t)size;
  snprintf(job->ctype, sizeof(job->ctype), "%s", ctype);
  job->fill = rp_fill_start(job->reg->cache, &job->d, size, job->is_manifest, ctype);
  if (job->fill == NULL) {
    if (job->on_mirror != NULL) {
      job->fall_back = true; /* the registry's answer is relayed instead */
      return -1;
    }
    return job_pass(job, f, status, reason, h, n);
  }
  rp_fill_set_producer(job->fill, on_fill_writable, on_fill_state, job);
  /* contract §3: the object belongs to the repository, and the credential is
   * confirmed there, once the bytes are verified, not at this head (which
   * may be a CDN's after a redirect). */
  rp_fill_note_repo(job->fill, job->registry, job->repo);
  rp__rq_label(rq, "miss");
  if (job->on_mirror != NULL) {
    /* A mirror was sent no credential: it confirms none (the client was
     * confirmed with the registry before). Its bytes reach no client before
     * they verified: a wrong answer then costs a fetch from the registry,
     * not a failed pull. */
    job->holding = true;
    rp_fill_on_settled(job->fill, job_mirror_settled, job);
    return 0;
  }
  rp__memo_key(rq, job->registry, job->repo, job->memo_key);
  job->memo_pending = true;
  rp_fill_on_published(job->fill, job_on_published, job);
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
  if (job->on_mirror != NULL)
    job->fed_by = job->on_mirror;
  rc = rp_fill_write(job->fill, p, n);
  if (rc == RP_FILL_AGAIN) {
    job->paused = true;
    return RP_FETCH_PAUSE;
  }
  job->reg->counters.upstream_bytes += n;
  return rc == 0 ? 0 : -1;
}

static const struct rp_fetch_callbacks job_callbacks;

/* The registry failed before any answer (unreachable, reset, silent): the
 * waiters asked it the same thing, so they get that failure (a 502 naming
 * it, or a stale answer) rather than each waiting for it once more. */
static void fail_waiters(struct rp__filljob *job, int status, const char *reason) {
  while (job->waiters != NULL) {
    struct rp__rq *rq = job->waiters;
    job->waiters = rq->next_waiter;
    rq->waiting_on = NULL;
    rp__relay_done(NULL, rq, status, reason);
  }
}

static void job_on_done(struct rp_fetch *f, void *data, int status, const char *reason) {
  struct rp__filljob *job = data;

  job->fetch = NULL;
  if (job->on_mirror != NULL && job->fill == NULL && (job->fall_back || status != 0)) {
    /* The mirror refused, failed or had no answer worth keeping: the next
     * source, the registry last, before anyone waiting hears of it. */
    if (!job->fall_back)
      mirror_failed(job, job->on_mirror, reason);
    job->fall_back = false;
    if (job->rq != NULL || job->waiters != NULL) {
      job_fetch(job);
      if (job->fetch != NULL)
        return;
    }
  }
  if (status != 0 && status != RP_EABORTED && job->fill == NULL && !job->passing)
    fail_waiters(job, status, reason);
  if (!job->holding)
    rp__job_release_waiters(job); /* a mirror's bytes: once they verified */
  if (status != 0 && job->on_mirror != NULL && job->fill != NULL)
    mirror_failed(job, job->on_mirror, reason); /* cut: the registry has the rest */
  job->on_mirror = NULL;
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

/* The next source that is not backed off: an upstream mirror (GET in
 * mirror-mode form, no credential, short timeouts), else the registry. */
static void job_fetch(struct rp__filljob *job) {
  struct rp_registry *reg = job->reg;

  while (job->next_src < job->nsrc) {
    char *url = job->srcs[job->next_src++];
    struct rp__source *s = source_of(reg, job->registry, url);
    struct rp_fetch_req req;
    struct rp_http_header accept[8];
    size_t na = 0;
    char dg[140], *full;

    if (s != NULL && s->backoff_until > uv_now(reg->loop))
      continue;
    rp_digest_format(&job->d, dg, sizeof(dg));
    full = rp_asprintf("%s/v2/%s/%s/%s?ns=%s", url, job->repo,
                       job->is_manifest ? "manifests" : "blobs", dg, job->registry);
    if (full == NULL)
      break;
    memset(&req, 0, sizeof(req));
    req.method = "GET";
    req.url = full;
    /* The client's Accept, for a manifest; never its credential. */
    for (size_t i = 0; i < job->saved->n && na < 8; i++)
      if (rp_http_token_eq(job->saved->h[i].name, job->saved->h[i].name_len, "accept"))
        accept[na++] = job->saved->h[i];
    req.headers = accept;
    req.nheaders = na;
    req.follow_redirects = true;
    req.connect_timeout_ms = MIRROR_CONNECT_TIMEOUT_MS;
    req.stall_timeout_ms = MIRROR_STALL_TIMEOUT_MS;
    job->on_mirror = url;
    job->fetch = rp_fetch_start(reg->up, &req, &job_callbacks, job);
    free(full);
    if (job->fetch != NULL)
      return;
  }
  job->on_mirror = NULL;
  job->fetch = rp_fetch_start(reg->up, &job->saved->req, &job_callbacks, job);
}

/* Fetch d from upstream into a new fill while rq reads it (cache=miss).
 * path: the upstream path (manifests by digest after a tag check), or NULL
 * for the request's. */
bool rp__job_start(struct rp__rq *rq, const struct rp_digest *dp, bool is_manifest,
                   const char *path) {
  struct rp_registry *reg = rq->reg;
  const struct rp__upmirrors *m = rp__has_mirrors(rq) ? mirrors_of(reg, rq->registry) : NULL;
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
  rp__upreq_free(&u);
  rq->job = job;
  if (job->saved == NULL) {
    rq->job = NULL;
    rp__job_free(job);
    rp_exchange_error(rq->x, 502, "out of memory", true);
    return true;
  }
  if (m != NULL && (job->srcs = calloc(m->n, sizeof(*job->srcs))) != NULL) {
    for (size_t i = 0; i < m->n; i++)
      if ((job->srcs[job->nsrc] = strdup(m->src[i].url)) != NULL)
        job->nsrc++;
  }
  job_fetch(job);
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
