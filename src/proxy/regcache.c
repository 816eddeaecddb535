/* The registry cache inside MITM and for plain-HTTP registries (SPEC §3):
 * the entry points. Blobs and manifests requested by digest are served from
 * the content-addressed store when this client may have them (regaccess.c),
 * confirmed with an upstream HEAD when it is not known to, or fetched once
 * into it while the client reads the growing fill (regfill.c); manifests by
 * tag are checked with an upstream HEAD and served from the cache or from
 * memory (regmemory.c). Everything else, and every case the cache cannot
 * decide safely, is left to the pass-through relay. */
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

/* ---- GET manifest by tag: an upstream HEAD, the body from the cache ----
 * SPEC §3: a HEAD is free against Docker Hub's pull limit and names the
 * current digest; when that manifest is cached for this repository the body
 * comes from the cache (cache=revalidated), otherwise it is fetched by digest
 * into the cache. A registry that answers the HEAD without a digest, or with
 * anything but 200, gets the client's GET as it was. */

struct rp__headcheck {
  struct rp__headcheck *next, **pprev; /* srv->heads */
  struct rp_server *srv;
  struct rp__regreq *rq; /* NULL once the client left */
  struct rp_fetch *fetch;
  int status;
  bool have_digest;
  struct rp_digest d;
  char ctype[128];
  int64_t size;
  bool authenticated; /* which pull limit the answer's ratelimit headers name */
  char registry[300];
};

/* Unlisted and freed once its answer came, or cancelled at shutdown. */
static void head_free(struct rp__headcheck *tc) {
  *tc->pprev = tc->next;
  if (tc->next != NULL)
    tc->next->pprev = tc->pprev;
  free(tc);
}

static int tag_on_head(struct rp_fetch *f, void *data, int status, const char *reason,
                       const struct rp_http_header *h, size_t n) {
  struct rp__headcheck *tc = data;
  char dg[160];

  (void)f;
  (void)reason;
  tc->status = status;
  rp__reg_header_copy(h, n, "docker-content-digest", dg, sizeof(dg));
  tc->have_digest = dg[0] != '\0' && rp_digest_parse(dg, strlen(dg), &tc->d) == 0;
  rp__reg_header_copy(h, n, "content-type", tc->ctype, sizeof(tc->ctype));
  tc->size = rp_http_header_size(h, n, "content-length");
  rp__status_ratelimit(tc->srv, tc->registry, tc->authenticated, h, n);
  return 0;
}

static void tag_on_done(struct rp_fetch *f, void *data, int status, const char *reason) {
  struct rp__headcheck *tc = data;
  struct rp__regreq *rq = tc->rq;
  struct rp_conn *c;
  struct rp_object_info info;
  struct rp_digest d = tc->d;
  bool ok = status == 0 && tc->status == 200 && tc->have_digest;
  char path[600];

  bool unreachable = rp__reg_unreachable(status, tc->status);
  int tc_status = tc->status;
  bool have_digest = tc->have_digest;
  struct rp_tag_entry e;

  (void)f;
  (void)reason;
  memset(&e, 0, sizeof(e));
  e.digest = tc->d;
  snprintf(e.media_type, sizeof(e.media_type), "%s", tc->ctype);
  e.size = tc->size > 0 ? (uint64_t)tc->size : 0;
  head_free(tc);
  if (rq == NULL)
    return;
  rq->tc = NULL;
  c = rq->c;
  if (!ok) {
    c->rc = NULL;
    free(rq);
    if (unreachable && rp__regcache_stale(c))
      return;
    /* A registry that answers HEAD with 405 or names no digest: its GET
     * answer is hashed as it is relayed, then kept like one by digest. */
    c->grab_manifest = status == 0 && (tc_status == 405 || (tc_status == 200 && !have_digest));
    rp__mitm_pass_start(c);
    return;
  }
  rp__reg_memo_confirm(c, rq->registry, c->reg.name);
  rp__reg_remember_tag(c, rq->registry, &e);
  if (rp_cache_has(c->srv->cache, &d, &info) && info.is_manifest &&
      rp_cache_in_repo(c->srv->cache, &d, rq->registry, c->reg.name)) {
    c->log.cache = "revalidated";
    if (rp__reg_serve(c, rq, &d, NULL, info.size, info.media_type, 0, -1, false) != 0) {
      c->rc = NULL;
      free(rq);
      rp__conn_close(c);
    }
    return;
  }
  {
    char dg[140];
    rp_digest_format(&d, dg, sizeof(dg));
    snprintf(path, sizeof(path), "/v2/%s/manifests/%s", c->reg.name, dg);
  }
  {
    struct rp_fill *running = rp_fill_find(c->srv->cache, &d);
    bool busy = running != NULL || rp__reg_job_find(c->srv, &d) != NULL;
    rp_fill_unref(running);
    if (!busy) {
      if (!rp__reg_start_job(c, rq, c->head, &d, true, path)) { /* rq is gone then */
        c->rc = NULL;
        rp__mitm_pass_start(c);
      }
      return;
    }
  }
  /* Someone else is fetching it: the plain GET is simpler than joining. */
  c->rc = NULL;
  free(rq);
  rp__mitm_pass_start(c);
}

static const struct rp_fetch_callbacks tag_callbacks = {
    .on_head = tag_on_head,
    .on_done = tag_on_done,
};

/* ---- a cached object this client is not confirmed for ----
 * SPEC §3: an upstream HEAD of the same path with the client's credential
 * decides. 2xx/3xx: the object belongs to the repository and the credential
 * reads it; the body comes from the cache (cache=revalidated). Anything else
 * goes to the registry as the client's own GET, whose answer is relayed. */

static int confirm_on_head(struct rp_fetch *f, void *data, int status, const char *reason,
                           const struct rp_http_header *h, size_t n) {
  struct rp__headcheck *tc = data;
  (void)f;
  (void)reason;
  (void)h;
  (void)n;
  tc->status = status;
  return 0;
}

static void confirm_on_done(struct rp_fetch *f, void *data, int status, const char *reason) {
  struct rp__headcheck *tc = data;
  struct rp__regreq *rq = tc->rq;
  struct rp_digest d = tc->d;
  int st = tc->status;
  bool unreachable = rp__reg_unreachable(status, st);
  struct rp_object_info info;
  struct rp_conn *c;
  uint64_t off;
  int64_t len;
  bool partial;

  (void)f;
  (void)reason;
  head_free(tc);
  if (rq == NULL)
    return;
  rq->tc = NULL;
  c = rq->c;
  if (status == 0 && rp__reg_head_confirms(c, st)) {
    rp__reg_memo_confirm(c, rq->registry, c->reg.name);
    rp_cache_note_repo(c->srv->cache, &d, rq->registry, c->reg.name);
    if (rp_cache_has(c->srv->cache, &d, &info) &&
        rp__reg_parse_range(c->head, info.size, &off, &len, &partial)) {
      c->log.cache = "revalidated";
      if (rp__reg_serve(c, rq, &d, NULL, info.size, info.media_type, off, len, partial) != 0) {
        c->rc = NULL;
        free(rq);
        rp__conn_close(c);
      }
      return;
    }
    {
      /* Still being fetched (for another client): join the fill. */
      struct rp__filljob *run = rp__reg_job_find(c->srv, &d);
      if (run != NULL && run->fill != NULL && rp_fill_state(run->fill) != RP_FILL_FAILED &&
          rp__reg_parse_range(c->head, run->size, &off, &len, &partial)) {
        rp_fill_note_repo(run->fill, rq->registry, c->reg.name);
        c->log.cache = "coalesced";
        if (rp__reg_serve(c, rq, &d, run->fill, run->size, run->ctype, off, len, partial) != 0) {
          c->rc = NULL;
          free(rq);
          rp__conn_close(c);
        }
        return;
      }
    }
  }
  c->rc = NULL;
  free(rq);
  if (unreachable && rp__regcache_stale(c))
    return;
  rp__mitm_pass_start(c);
}

const struct rp_fetch_callbacks rp__reg_confirm_callbacks = {
    .on_head = confirm_on_head,
    .on_done = confirm_on_done,
};

/* An upstream HEAD of the client's path with its credentials; the answer
 * goes to cb with tc->d = d (NULL for a tag check). */
bool rp__reg_start_head(struct rp_conn *c, const struct rp_http_head *h,
                        const struct rp_fetch_callbacks *cb, const struct rp_digest *d) {
  struct rp__regreq *rq = calloc(1, sizeof(*rq));
  struct rp__headcheck *tc = calloc(1, sizeof(*tc));
  struct rp__upreq u;

  if (rq == NULL || tc == NULL || rp__upreq_build(c, h, "HEAD", true, NULL, &u) != 0) {
    free(rq);
    free(tc);
    return false;
  }
  rq->c = c;
  rp__mitm_registry(c, rq->registry, sizeof(rq->registry));
  u.req.body_len = 0;
  if (d != NULL)
    tc->d = *d;
  tc->rq = rq;
  rq->tc = tc;
  c->rc = rq;
  tc->srv = c->srv;
  snprintf(tc->registry, sizeof(tc->registry), "%s", rq->registry);
  tc->authenticated = rp__status_authenticated(c);
  tc->next = c->srv->heads;
  if (tc->next != NULL)
    tc->next->pprev = &tc->next;
  tc->pprev = &c->srv->heads;
  c->srv->heads = tc;
  rp__conn_go_state(c, RP_CONN_PASS);
  tc->fetch = rp_fetch_start(c->srv->up, &u.req, cb, tc);
  rp__upreq_free(&u);
  if (tc->fetch == NULL) {
    c->rc = NULL;
    free(rq);
    head_free(tc);
    return false;
  }
  return true;
}

/* ---- entry points ---- */

bool rp__regcache_request(struct rp_conn *c, const struct rp_http_head *h) {
  struct rp_server *srv = c->srv;
  struct rp_object_info info;
  struct rp_digest d;
  struct rp__regreq *rq;
  bool is_manifest = c->reg.kind == RP_REG_MANIFEST, partial;
  char registry[300];
  uint64_t off;
  int64_t len;

  rp__mitm_registry(c, registry, sizeof(registry));
  /* SPEC §3: whether the repository is public is asked once, on its first
   * pull, in the background. */
  if (c->reg.kind == RP_REG_MANIFEST && (h->method_id == HTTP_GET || h->method_id == HTTP_HEAD))
    rp__reg_probe_public(c, registry);
  if (c->reg.kind == RP_REG_MANIFEST && !c->reg.ref_is_digest &&
      (h->method_id == HTTP_GET || h->method_id == HTTP_HEAD) && rp__reg_tag_fresh(c) &&
      rp__reg_answer_from_memory(c, "hit", false))
    return true;
  if (srv->cache != NULL && c->reg.kind == RP_REG_MANIFEST && !c->reg.ref_is_digest &&
      h->method_id == HTTP_GET && rp_http_header_find(h, "range") == NULL)
    return rp__reg_start_head(c, h, &tag_callbacks, NULL);
  if (srv->cache == NULL || !c->reg.ref_is_digest ||
      (c->reg.kind != RP_REG_BLOB && c->reg.kind != RP_REG_MANIFEST) ||
      (h->method_id != HTTP_GET && h->method_id != HTTP_HEAD) ||
      rp_digest_parse(c->reg.ref, strlen(c->reg.ref), &d) != 0)
    return false;
  /* SPEC §3: HEAD on a blob goes upstream (push relies on a truthful HEAD). */
  if (h->method_id == HTTP_HEAD && !is_manifest)
    return false;
  rq = calloc(1, sizeof(*rq));
  if (rq == NULL)
    return false;
  rq->c = c;
  snprintf(rq->registry, sizeof(rq->registry), "%s", registry);

  if (rp_cache_has(srv->cache, &d, &info) && info.is_manifest == is_manifest &&
      rp__reg_may_serve(c, rq->registry, &d, false)) {
    if (!rp__reg_parse_range(h, info.size, &off, &len, &partial)) {
      free(rq);
      return false;
    }
    c->rc = rq;
    c->log.cache = "hit";
    rp__conn_go_state(c, RP_CONN_PASS);
    if (rp__reg_serve(c, rq, &d, NULL, info.size, info.media_type, off, len, partial) != 0) {
      c->rc = NULL;
      free(rq);
      rp__conn_close(c);
    }
    return true;
  }
  if (rp_cache_has(srv->cache, &d, &info) && info.is_manifest == is_manifest &&
      h->method_id == HTTP_GET) {
    free(rq);
    return rp__reg_start_head(c, h, &rp__reg_confirm_callbacks, &d);
  }
  /* Single-flight: the same object being fetched for the same repository by
   * a confirmed client. Join it (now, or when its fill starts). */
  {
    struct rp__filljob *run = rp__reg_job_find(srv, &d);
    if (run != NULL && strcmp(run->repo, c->reg.name) == 0 &&
        strcmp(run->registry, rq->registry) == 0 && h->method_id == HTTP_GET) {
      if (run->fill == NULL) {
        /* Before the upstream answered: wait for it. The size (for a range)
         * and this client's access are checked when the waiter is released. */
        c->rc = rq;
        rp__conn_go_state(c, RP_CONN_PASS);
        rq->waiting_on = run;
        rq->next_waiter = run->waiters;
        run->waiters = rq;
        return true;
      }
      if (rp_fill_state(run->fill) == RP_FILL_FAILED ||
          !rp__reg_parse_range(h, run->size, &off, &len, &partial)) {
        free(rq);
        return false;
      }
      if (!rp__reg_client_ok(c, rq->registry, false) && !rp__reg_job_same_credential(run, c)) {
        free(rq);
        return rp__reg_start_head(c, h, &rp__reg_confirm_callbacks, &d);
      }
      c->rc = rq;
      rp__conn_go_state(c, RP_CONN_PASS);
      c->log.cache = "coalesced";
      if (rp__reg_serve(c, rq, &d, run->fill, run->size, run->ctype, off, len, partial) != 0) {
        c->rc = NULL;
        free(rq);
        rp__conn_close(c);
      }
      return true;
    }
  }
  /* Not servable from the cache. A fill already running, or an object
   * cached but not yet confirmed for this client: upstream decides. A range
   * of an object nobody fetches yet starts the whole fill and is served from
   * it (a resumed pull then leaves the object cached). */
  if (rp_cache_has(srv->cache, &d, NULL) || h->method_id == HTTP_HEAD) {
    free(rq);
    return false;
  }
  {
    struct rp_fill *running = rp_fill_find(srv->cache, &d);
    if (running != NULL) {
      rp_fill_unref(running);
      free(rq);
      return false;
    }
  }
  return rp__reg_start_job(c, rq, h, &d, is_manifest, NULL);
}

void rp__regcache_observe(struct rp_conn *c, int status, const struct rp_http_header *h, size_t n) {
  char registry[300], dg[160];
  struct rp_tag_entry e;
  int64_t size;

  if (status < 200 || status > 299 || c->head == NULL ||
      (c->reg.kind != RP_REG_MANIFEST && c->reg.kind != RP_REG_BLOB))
    return;
  rp__mitm_registry(c, registry, sizeof(registry));
  rp__reg_memo_confirm(c, registry, c->reg.name);
  if (c->reg.kind == RP_REG_MANIFEST)
    rp__status_ratelimit(c->srv, registry, rp__status_authenticated(c), h, n);
  /* A manifest by tag: remember what the tag names, for answers from memory. */
  memset(&e, 0, sizeof(e));
  rp__reg_header_copy(h, n, "docker-content-digest", dg, sizeof(dg));
  rp__reg_header_copy(h, n, "content-type", e.media_type, sizeof(e.media_type));
  size = rp_http_header_size(h, n, "content-length");
  if (c->srv->cache != NULL && dg[0] != '\0' && size > 0 &&
      rp_digest_parse(dg, strlen(dg), &e.digest) == 0) {
    e.size = (uint64_t)size;
    rp__reg_remember_tag(c, registry, &e);
  }
  if (c->grab_manifest && status == 200 && !c->req_is_head && c->srv->cache != NULL &&
      size <= GRAB_MAX && strstr(e.media_type, "prettyjws") == NULL) {
    c->grab = calloc(1, sizeof(*c->grab));
    if (c->grab != NULL) {
      snprintf(c->grab->ctype, sizeof(c->grab->ctype), "%s", e.media_type);
      if (dg[0] != '\0' && rp_digest_parse(dg, strlen(dg), &c->grab->named) == 0)
        c->grab->has_named = true;
    }
  }
}

void rp__regcache_destroy(struct rp_conn *c) {
  struct rp__regreq *rq = c->rc;
  if (c->grab != NULL)
    rp__regcache_relay_done(c, RP_EABORTED);
  if (rq == NULL)
    return;
  c->rc = NULL;
  rp_reader_cancel(rq->reader);
  if (rq->tc != NULL) {
    /* The HEAD finishes on its own (it is small); it just has nobody to tell. */
    rq->tc->rq = NULL;
  }
  if (rq->waiting_on != NULL) {
    struct rp__regreq **pp = &rq->waiting_on->waiters;
    while (*pp != NULL && *pp != rq)
      pp = &(*pp)->next_waiter;
    if (*pp == rq)
      *pp = rq->next_waiter;
  }
  if (rq->job != NULL) {
    struct rp__filljob *job = rq->job;
    job->rq = NULL;
    if (job->passing || job->fill == NULL) {
      /* Nothing is being cached yet: the transfer has no reason to go on;
       * clients waiting for it relay their own requests. */
      if (job->fetch != NULL) {
        /* A passing job's transfer is also the connection's (job_on_head):
         * forget it there before it is freed, or rp__mitm_destroy cancels
         * it a second time. */
        if (c->fetch == job->fetch)
          c->fetch = NULL;
        rp_fetch_cancel(job->fetch);
      }
      job->fetch = NULL;
      job->passing = true;
      rp__reg_release_waiters(job);
      rp__reg_job_free(job);
    }
  }
  free(rq);
}

void rp__regcache_shutdown(struct rp_server *srv) {
  while (srv->heads != NULL) {
    struct rp__headcheck *tc = srv->heads;
    rp_fetch_cancel(tc->fetch);
    if (tc->rq != NULL)
      tc->rq->tc = NULL;
    head_free(tc);
  }
  while (srv->jobs != NULL) {
    struct rp__filljob *job = srv->jobs;
    if (job->fetch != NULL)
      rp_fetch_cancel(job->fetch);
    job->fetch = NULL;
    if (job->rq != NULL)
      job->rq->job = NULL;
    job->rq = NULL;
    job->passing = true;
    rp__reg_release_waiters(job);
    rp__reg_job_free(job);
  }
  free(srv->memo);
  srv->memo = NULL;
}
