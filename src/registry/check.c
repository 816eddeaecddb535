/* The upstream HEADs the service asks with the client's credential: the tag
 * check of a GET by tag, and the access confirmation of a cached object the
 * client is not known to may read (contract §3). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "regproxy/log.h"

/* Unlisted and freed once its answer came, or cancelled at shutdown. */
static void head_free(struct rp__headcheck *tc) {
  *tc->pprev = tc->next;
  if (tc->next != NULL)
    tc->next->pprev = tc->pprev;
  free(tc);
}

/* The HEAD is over for rq: it is no longer waiting on it. */
static struct rp__rq *head_done(struct rp__headcheck *tc) {
  struct rp__rq *rq = tc->rq;
  head_free(tc);
  if (rq != NULL)
    rq->tc = NULL;
  return rq;
}

/* ---- GET manifest by tag: an upstream HEAD, the body from the cache ----
 * contract §3: a HEAD is free against Docker Hub's pull limit and names the
 * current digest; when that manifest is cached for this repository the body
 * comes from the cache (cache=revalidated), otherwise it is fetched by digest
 * into the cache. A registry that answers the HEAD without a digest, or with
 * anything but 200, gets the client's GET as it was. */

static int tag_on_head(struct rp_fetch *f, void *data, int status, const char *reason,
                       const struct rp_http_header *h, size_t n) {
  struct rp__headcheck *tc = data;
  char dg[160];

  (void)f;
  (void)reason;
  tc->status = status;
  rp__header_copy(h, n, "docker-content-digest", dg, sizeof(dg));
  tc->have_digest = dg[0] != '\0' && rp_digest_parse(dg, strlen(dg), &tc->d) == 0;
  rp__header_copy(h, n, "content-type", tc->ctype, sizeof(tc->ctype));
  tc->size = rp_http_header_size(h, n, "content-length");
  rp__stats_ratelimit(tc->reg, tc->registry, tc->authenticated, h, n);
  rp__note_retry_after(tc->reg, tc->registry, tc->wait_key, status, h, n);
  return 0;
}

static void tag_on_done(struct rp_fetch *f, void *data, int status, const char *reason) {
  struct rp__headcheck *tc = data;
  struct rp_object_info info;
  struct rp_digest d = tc->d;
  bool ok = status == 0 && tc->status == 200 && tc->have_digest;
  bool unreachable = rp__reg_unreachable(status, tc->status);
  int tc_status = tc->status;
  bool have_digest = tc->have_digest;
  struct rp_tag_entry e;
  struct rp_registry *reg;
  struct rp__rq *rq;
  char path[600], dg[140];

  (void)f;
  (void)reason;
  memset(&e, 0, sizeof(e));
  e.digest = tc->d;
  snprintf(e.media_type, sizeof(e.media_type), "%s", tc->ctype);
  e.size = tc->size > 0 ? (uint64_t)tc->size : 0;
  rq = head_done(tc);
  if (rq == NULL)
    return;
  reg = rq->reg;
  if (!ok) {
    if (unreachable && rp__answer_from_memory(rq, "stale", true))
      return;
    /* A registry that answers HEAD with 405 or names no digest: its GET
     * answer is hashed as it is relayed, then kept like one by digest. */
    rq->grab_manifest = status == 0 && (tc_status == 405 || (tc_status == 200 && !have_digest));
    rp__relay(rq);
    return;
  }
  rp__memo_confirm(rq);
  rp__remember_tag(rq, &e);
  if (rp_cache_has(reg->cache, &d, &info) && info.is_manifest &&
      rp_cache_in_repo(reg->cache, &d, rq->registry, rq->path.name)) {
    rp__rq_label(rq, "revalidated");
    rp__serve_or_abort(rq, &d, NULL, info.size, info.media_type, 0, -1, false);
    return;
  }
  rp_digest_format(&d, dg, sizeof(dg));
  snprintf(path, sizeof(path), "/v2/%s/manifests/%s", rq->path.name, dg);
  {
    struct rp_fill *running = rp_fill_find(reg->cache, &d);
    bool busy = running != NULL || rp__job_find(reg, &d) != NULL;
    rp_fill_unref(running);
    if (!busy && rp__job_start(rq, &d, true, path))
      return;
  }
  /* Someone else is fetching it: the plain GET is simpler than joining. */
  rp__relay(rq);
}

const struct rp_fetch_callbacks rp__tag_callbacks = {
    .on_head = tag_on_head,
    .on_done = tag_on_done,
};

/* ---- a cached object this client is not confirmed for ----
 * contract §3: an upstream HEAD of the same path with the client's credential
 * decides. 2xx/3xx: the object belongs to the repository and the credential
 * reads it; the body comes from the cache (cache=revalidated). Anything else
 * goes to the registry as the client's own GET, whose answer is relayed. */

static int confirm_on_head(struct rp_fetch *f, void *data, int status, const char *reason,
                           const struct rp_http_header *h, size_t n) {
  struct rp__headcheck *tc = data;
  (void)f;
  (void)reason;
  tc->status = status;
  rp__note_retry_after(tc->reg, tc->registry, tc->wait_key, status, h, n);
  return 0;
}

static void confirm_on_done(struct rp_fetch *f, void *data, int status, const char *reason) {
  struct rp__headcheck *tc = data;
  struct rp_digest d = tc->d;
  int st = tc->status;
  bool unreachable = rp__reg_unreachable(status, st);
  struct rp_object_info info;
  struct rp_registry *reg;
  struct rp__rq *rq;
  uint64_t off;
  int64_t len;
  bool partial;

  (void)f;
  (void)reason;
  rq = head_done(tc);
  if (rq == NULL)
    return;
  reg = rq->reg;
  if (status == 0 && rp__head_confirms(rq, st)) {
    struct rp__filljob *run;

    rp__memo_confirm(rq);
    rp_cache_note_repo(reg->cache, &d, rq->registry, rq->path.name);
    if (rp_cache_has(reg->cache, &d, &info) &&
        rp__parse_range(rq->head, info.size, &off, &len, &partial)) {
      rp__rq_label(rq, "revalidated");
      rp__serve_or_abort(rq, &d, NULL, info.size, info.media_type, off, len, partial);
      return;
    }
    /* Still being fetched (for another client): join the fill. */
    run = rp__job_find(reg, &d);
    if (run != NULL && run->fill != NULL && !run->holding &&
        rp_fill_state(run->fill) != RP_FILL_FAILED &&
        rp__parse_range(rq->head, run->size, &off, &len, &partial)) {
      rp_fill_note_repo(run->fill, rq->registry, rq->path.name);
      rp__rq_label(rq, "coalesced");
      rp__serve_or_abort(rq, &d, run->fill, run->size, run->ctype, off, len, partial);
      return;
    }
  }
  if (unreachable && rp__answer_from_memory(rq, "stale", true))
    return;
  rp__relay(rq);
}

const struct rp_fetch_callbacks rp__confirm_callbacks = {
    .on_head = confirm_on_head,
    .on_done = confirm_on_done,
};

/* ---- before a fetch from an upstream mirror ----
 * The registry itself says whether this credential may read the object;
 * then the bytes come from the mirror (job.c), or the client's own GET goes
 * to the registry, whose refusal it gets. */

static void premirror_on_done(struct rp_fetch *f, void *data, int status, const char *reason) {
  struct rp__headcheck *tc = data;
  struct rp_digest d = tc->d;
  int st = tc->status;
  bool unreachable = rp__reg_unreachable(status, st);
  struct rp__rq *rq;

  (void)f;
  (void)reason;
  rq = head_done(tc);
  if (rq == NULL)
    return;
  if (status == 0 && rp__head_confirms(rq, st)) {
    rp__memo_confirm(rq);
    if (rp__job_start(rq, &d, rq->path.kind == RP_REG_MANIFEST, NULL))
      return;
  } else if (unreachable && rp__answer_from_memory(rq, "stale", true)) {
    return;
  }
  rp__relay(rq);
}

const struct rp_fetch_callbacks rp__premirror_callbacks = {
    .on_head = confirm_on_head,
    .on_done = premirror_on_done,
};

/* An upstream HEAD of the request's path with its credentials; the answer
 * goes to cb with tc->d = d (NULL for a tag check). */
bool rp__start_head(struct rp__rq *rq, const struct rp_fetch_callbacks *cb,
                    const struct rp_digest *d) {
  struct rp_registry *reg = rq->reg;
  struct rp__headcheck *tc = calloc(1, sizeof(*tc));
  struct rp__upreq u;

  if (tc == NULL || rp__upreq_build(rq, "HEAD", true, NULL, &u) != 0) {
    free(tc);
    return false;
  }
  u.req.body_len = 0;
  if (d != NULL)
    tc->d = *d;
  tc->rq = rq;
  tc->reg = reg;
  snprintf(tc->registry, sizeof(tc->registry), "%s", rq->registry);
  tc->authenticated = rp__stats_authenticated(rq);
  rp__wait_key(rq, tc->wait_key);
  tc->next = reg->heads;
  if (tc->next != NULL)
    tc->next->pprev = &tc->next;
  tc->pprev = &reg->heads;
  reg->heads = tc;
  tc->fetch = rp_fetch_start(reg->up, &u.req, cb, tc);
  rp__upreq_free(&u);
  if (tc->fetch == NULL) {
    head_free(tc);
    return false;
  }
  rq->tc = tc;
  return true;
}

void rp__heads_shutdown(struct rp_registry *reg) {
  while (reg->heads != NULL) {
    struct rp__headcheck *tc = reg->heads;
    rp_fetch_cancel(tc->fetch);
    if (tc->rq != NULL)
      tc->rq->tc = NULL;
    head_free(tc);
  }
}
