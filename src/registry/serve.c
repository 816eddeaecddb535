/* The decision for one registry request (contract §3), and the answers from the
 * content-addressed store or a running fill. Blobs and manifests requested
 * by digest are served from the store when this client may have them
 * (access.c), confirmed with an upstream HEAD when it is not known to
 * (check.c), or fetched once into it while the client reads the growing
 * fill (job.c); manifests by tag are checked with an upstream HEAD and
 * served from the cache or from memory (memory.c). Everything else, and
 * every case the cache cannot decide safely, goes to the relay (relay.c). */
#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "regproxy/log.h"

/* ---- answers from the store or a fill ---- */

static void on_reader_done(struct rp_reader *r, void *data, int status) {
  struct rp__rq *rq = data;
  char why[128];

  (void)r;
  rq->reader = NULL;
  if (status != 0) {
    /* Never a complete wrong body: the client sees the connection cut. */
    snprintf(why, sizeof(why), "cache read failed: %s", rp_strerror(status));
    rp_exchange_abort(rq->x, why);
    return;
  }
  /* Only the client that caused a fill cost upstream bytes; hits, joiners,
   * revalidated and stale answers are bytes the cache saved. */
  if (strcmp(rq->label, "miss") == 0)
    rq->reg->counters.bytes_from_upstream += rq->length;
  else
    rq->reg->counters.bytes_from_cache += rq->length;
  rp_exchange_finish(rq->x);
}

/* 200 (or 206 for a range) with the object's identity, then the bytes from a
 * reader on the published object (d) or the running fill (f). */
int rp__serve_object(struct rp__rq *rq, const struct rp_digest *d, struct rp_fill *f, uint64_t size,
                     const char *media_type, uint64_t off, int64_t len, bool partial) {
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
  rc = rp__rq_start(rq, partial ? 206 : 200, h, nh, (int64_t)n);
  if (rc != 0)
    return rc;
  if (rq->is_head || n == 0) {
    rp_exchange_finish(rq->x);
    return 0;
  }
  rq->length = n;
  rq->reader = rp_reader_start(rq->reg->cache, f == NULL ? d : NULL, f, off, (int64_t)n,
                               rp_exchange_body(rq->x), on_reader_done, rq);
  if (rq->reader == NULL)
    return UV_EIO;
  return 0;
}

void rp__serve_or_abort(struct rp__rq *rq, const struct rp_digest *d, struct rp_fill *f,
                        uint64_t size, const char *media_type, uint64_t off, int64_t len,
                        bool partial) {
  if (rp__serve_object(rq, d, f, size, media_type, off, len, partial) != 0)
    rp_exchange_abort(rq->x, "cache answer failed");
}

/* "bytes=N-" or "bytes=N-M" against a known size; false for anything else
 * (multiple ranges, suffix ranges): those go upstream. */
bool rp__parse_range(const struct rp_http_head *h, uint64_t size, uint64_t *off, int64_t *len,
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
void rp__serve_range(struct rp__rq *rq, const struct rp_digest *d, struct rp_fill *f, uint64_t size,
                     const char *ctype) {
  uint64_t off;
  int64_t len;
  bool partial;

  if (!rp__parse_range(rq->head, size, &off, &len, &partial)) {
    struct rp_http_header h;
    char range[48];

    snprintf(range, sizeof(range), "bytes */%llu", (unsigned long long)size);
    rp_http_header_init(&h, "Content-Range", range);
    rp__rq_reply(rq, 416, &h, 1, NULL, 0);
    return;
  }
  rp__serve_or_abort(rq, d, f, size, ctype, off, len, partial);
}

void rp__serve_detach(struct rp__rq *rq) {
  rp_reader_cancel(rq->reader);
  rq->reader = NULL;
  if (rq->tc != NULL) {
    /* The HEAD finishes on its own (it is small); it just has nobody to tell. */
    rq->tc->rq = NULL;
    rq->tc = NULL;
  }
  if (rq->waiting_on != NULL) {
    struct rp__rq **pp = &rq->waiting_on->waiters;
    while (*pp != NULL && *pp != rq)
      pp = &(*pp)->next_waiter;
    if (*pp == rq)
      *pp = rq->next_waiter;
    rq->waiting_on = NULL;
  }
  if (rq->job != NULL) {
    struct rp__filljob *job = rq->job;
    rq->job = NULL;
    job->rq = NULL;
    /* A passing job's transfer is also the relay's: it is the job's to end. */
    if (rq->fetch == job->fetch)
      rq->fetch = NULL;
    rp__job_detach(job);
  }
}

/* ---- the decision ---- */

/* true: answered, or being answered; false: the relay takes it. */
static bool decide(struct rp__rq *rq) {
  struct rp_registry *reg = rq->reg;
  const struct rp_http_head *h = rq->head;
  const struct rp_reg_path *p = &rq->path;
  bool is_manifest = p->kind == RP_REG_MANIFEST, partial;
  bool get = h->method_id == HTTP_GET, head = h->method_id == HTTP_HEAD;
  struct rp_object_info info;
  struct rp__filljob *run;
  struct rp_digest d;
  uint64_t off;
  int64_t len;

  /* contract §3: whether the repository is public is asked once, on its first
   * pull, in the background. */
  if (is_manifest && (get || head))
    rp__probe_public(rq);
  if (is_manifest && !p->ref_is_digest && (get || head) && rp__tag_fresh(rq) &&
      rp__answer_from_memory(rq, "hit", false))
    return true;
  if (reg->cache != NULL && is_manifest && !p->ref_is_digest && get &&
      rp_http_header_find(h, "range") == NULL)
    return rp__wait_answer(rq) || rp__start_head(rq, &rp__tag_callbacks, NULL);
  if (reg->cache == NULL || !p->ref_is_digest || (p->kind != RP_REG_BLOB && !is_manifest) ||
      !(get || head) || rp_digest_parse(p->ref, strlen(p->ref), &d) != 0)
    return false;
  /* contract §3: HEAD on a blob goes upstream (push relies on a truthful HEAD). */
  if (head && !is_manifest)
    return false;

  if (rp_cache_has(reg->cache, &d, &info) && info.is_manifest == is_manifest &&
      rp__may_serve(rq, &d, false)) {
    if (!rp__parse_range(h, info.size, &off, &len, &partial))
      return false;
    rp__rq_label(rq, "hit");
    rp__serve_or_abort(rq, &d, NULL, info.size, info.media_type, off, len, partial);
    return true;
  }
  if (rp_cache_has(reg->cache, &d, &info) && info.is_manifest == is_manifest && get)
    return rp__wait_answer(rq) || rp__start_head(rq, &rp__confirm_callbacks, &d);
  /* Single-flight: the same object being fetched for the same repository by
   * a confirmed client. Join it (now, or when its fill starts). */
  run = rp__job_find(reg, &d);
  if (run != NULL && strcmp(run->repo, p->name) == 0 && strcmp(run->registry, rq->registry) == 0 &&
      get) {
    if (run->fill == NULL || run->holding) {
      /* Before the upstream answered (or a mirror's bytes verified): wait for
       * it. The size (for a range) and this client's access are checked when
       * the waiter is released. */
      rq->waiting_on = run;
      rq->next_waiter = run->waiters;
      run->waiters = rq;
      return true;
    }
    if (rp_fill_state(run->fill) == RP_FILL_FAILED ||
        !rp__parse_range(h, run->size, &off, &len, &partial))
      return false;
    if (!rp__client_ok(rq, false) && !rp__job_same_credential(run, rq))
      return rp__wait_answer(rq) || rp__start_head(rq, &rp__confirm_callbacks, &d);
    rp__rq_label(rq, "coalesced");
    rp__serve_or_abort(rq, &d, run->fill, run->size, run->ctype, off, len, partial);
    return true;
  }
  /* Not servable from the cache. A fill already running, or an object
   * cached but not yet confirmed for this client: upstream decides. A range
   * of an object nobody fetches yet starts the whole fill and is served from
   * it (a resumed pull then leaves the object cached). */
  if (rp_cache_has(reg->cache, &d, NULL) || head)
    return false;
  {
    struct rp_fill *running = rp_fill_find(reg->cache, &d);
    if (running != NULL) {
      rp_fill_unref(running);
      return false;
    }
  }
  /* A registry that asked to wait (Retry-After) is not asked before then. */
  if (rp__wait_answer(rq))
    return true;
  /* contract §3 "Upstream mirrors": a mirror gets no credential, so the
   * registry confirms this client's first (a HEAD, free of pull limits). */
  if (rp__has_mirrors(rq) && reg->access_check && !rp__client_ok(rq, false))
    return rp__start_head(rq, &rp__premirror_callbacks, &d);
  return rp__job_start(rq, &d, is_manifest, NULL);
}

void rp__serve(struct rp__rq *rq) {
  if (!decide(rq) && !rp__wait_answer(rq))
    rp__relay(rq);
}
