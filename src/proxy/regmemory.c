/* What the cache answers from memory (SPEC §3 "Manifests", "Upstream
 * unreachable"): the tag memory, --tag-ttl, stale answers while the registry
 * is unreachable, and manifests relayed by tag without a digest, hashed on
 * the way and kept. */
#include <llhttp.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "regcache.h"
#include "regproxy/error.h"
#include "regproxy/log.h"
#include "regproxy/metrics.h"

/* ---- tag memory and answers from memory (SPEC §3 "Upstream unreachable") ---- */

void rp__reg_remember_tag(struct rp_conn *c, const char *registry, struct rp_tag_entry *e) {
  char key[RP_REG_ACCEPT_KEY_SIZE];
  if (c->reg.kind != RP_REG_MANIFEST || c->reg.ref_is_digest || e->media_type[0] == '\0')
    return;
  rp_reg_accept_key(c->head, key, sizeof(key));
  e->checked = (int64_t)time(NULL);
  rp_cache_tag_put(c->srv->cache, registry, c->reg.name, c->reg.ref, key, e);
}

/* What memory can answer for the current request, without answering. */
static bool stale_lookup(struct rp_conn *c, const char *registry, bool offline, struct rp_digest *d,
                         struct rp_object_info *info, struct rp_tag_entry *tag, bool *by_tag) {
  struct rp_server *srv = c->srv;
  const struct rp_http_head *h = c->head;
  bool head_only = h->method_id == HTTP_HEAD;

  *by_tag = false;
  if (srv->cache == NULL || (h->method_id != HTTP_GET && !head_only))
    return false;
  /* /v2/ is vouched for only for a registry pulled from before: a 200 for
   * one never reached would stop clients falling back from https to http. */
  if (c->reg.kind == RP_REG_BASE)
    return rp_cache_knows_registry(srv->cache, registry);
  if (c->reg.kind == RP_REG_MANIFEST && !c->reg.ref_is_digest) {
    char key[RP_REG_ACCEPT_KEY_SIZE];
    rp_reg_accept_key(h, key, sizeof(key));
    if (!rp_cache_tag_get(srv->cache, registry, c->reg.name, c->reg.ref, key, tag) ||
        !rp_reg_accept_allows(key, tag->media_type))
      return false;
    *by_tag = true;
    *d = tag->digest;
  } else if ((c->reg.kind == RP_REG_MANIFEST || c->reg.kind == RP_REG_BLOB) &&
             c->reg.ref_is_digest) {
    if (rp_digest_parse(c->reg.ref, strlen(c->reg.ref), d) != 0)
      return false;
  } else {
    return false;
  }
  if (!rp_cache_has(srv->cache, d, info) || !rp__reg_may_serve(c, registry, d, offline))
    /* A HEAD by tag needs only the memory, but tells the digest: only to a
     * client that may read the repository (SPEC §3). */
    return *by_tag && head_only && rp__reg_client_ok(c, registry, offline);
  return true;
}

bool rp__regcache_can_stale(struct rp_conn *c) {
  char registry[300];
  struct rp_digest d;
  struct rp_object_info info;
  struct rp_tag_entry tag;
  bool by_tag;

  if (!(c->mitm || c->up_plain || c->mirror) || c->head == NULL)
    return false;
  rp__mitm_registry(c, registry, sizeof(registry));
  return stale_lookup(c, registry, true, &d, &info, &tag, &by_tag);
}

bool rp__regcache_stale(struct rp_conn *c) {
  return rp__reg_answer_from_memory(c, "stale", true);
}

/* --tag-ttl: a tag confirmed upstream that recently is answered from memory. */
bool rp__reg_tag_fresh(struct rp_conn *c) {
  struct rp_server *srv = c->srv;
  char registry[300], key[RP_REG_ACCEPT_KEY_SIZE];
  struct rp_tag_entry e;
  int64_t age;

  if (srv->cfg->tag_ttl_ms == 0 || srv->cache == NULL)
    return false;
  rp__mitm_registry(c, registry, sizeof(registry));
  rp_reg_accept_key(c->head, key, sizeof(key));
  if (!rp_cache_tag_get(srv->cache, registry, c->reg.name, c->reg.ref, key, &e) ||
      !rp_reg_accept_allows(key, e.media_type))
    return false;
  age = (int64_t)time(NULL) - e.checked;
  return age >= 0 && (uint64_t)age * 1000 < srv->cfg->tag_ttl_ms;
}

/* Answer from the tag memory and the cache alone; label is the log's cache=,
 * offline whether the registry is unreachable now. */
bool rp__reg_answer_from_memory(struct rp_conn *c, const char *label, bool offline) {
  char registry[300], dg[140];
  struct rp_digest d;
  struct rp_object_info info;
  struct rp_tag_entry tag;
  struct rp__regreq *rq;
  bool by_tag;

  if (!(c->mitm || c->up_plain || c->mirror) || c->head == NULL || c->closing)
    return false;
  rp__mitm_registry(c, registry, sizeof(registry));
  memset(&info, 0, sizeof(info));
  if (!stale_lookup(c, registry, offline, &d, &info, &tag, &by_tag))
    return false;
  c->log.cache = label;
  c->log.status = 200;
  if (c->reg.kind == RP_REG_BASE || (c->head->method_id == HTTP_HEAD && by_tag)) {
    struct rp_exchange *x = rp__conn_exchange(c);
    struct rp_http_header h[3];

    rp_http_header_init(&h[0], "Docker-Distribution-API-Version", "registry/2.0");
    if (c->reg.kind == RP_REG_BASE) {
      rp_http_header_init(&h[1], "Content-Type", "application/json");
      if (rp_exchange_reply(x, 200, h, 2, "{}", 2) != 0)
        rp__conn_close(c);
      return true;
    }
    /* A HEAD by tag: what the tag names, no body. */
    rp_digest_format(&d, dg, sizeof(dg));
    rp_http_header_init(&h[1], "Content-Type", tag.media_type);
    rp_http_header_init(&h[2], "Docker-Content-Digest", dg);
    if (rp_exchange_start(x, 200, h, 3, (int64_t)tag.size) != 0) {
      rp__conn_close(c);
      return true;
    }
    rp_exchange_finish(x);
    return true;
  }
  rq = calloc(1, sizeof(*rq));
  if (rq == NULL)
    return false;
  rq->c = c;
  snprintf(rq->registry, sizeof(rq->registry), "%s", registry);
  c->rc = rq;
  rp__conn_go_state(c, RP_CONN_PASS);
  if (rp__reg_serve(c, rq, &d, NULL, info.size, info.media_type, 0, -1, false) != 0) {
    c->rc = NULL;
    free(rq);
    rp__conn_close(c);
  }
  return true;
}

/* ---- a manifest relayed by tag, kept ---- */

void rp__regcache_relay_body(struct rp_conn *c, const char *p, size_t n) {
  struct rp__grab *g = c->grab;
  if (g->failed)
    return;
  if (g->len + n > GRAB_MAX) {
    g->failed = true; /* larger than any manifest we keep */
    return;
  }
  rp_sbuf_add(&g->body, p, n);
  g->failed = g->body.oom != 0;
  g->len += n;
}

/* Keep a manifest that was relayed by tag: its digest is its sha256. */
void rp__regcache_relay_done(struct rp_conn *c, int status) {
  struct rp__grab *g = c->grab;
  struct rp_server *srv = c->srv;
  struct rp_tag_entry e;
  struct rp_fill *fill;
  struct rp__filljob *job;
  char registry[300];
  unsigned char md[32];
  size_t n = 0;
  char *body;

  if (g == NULL)
    return;
  c->grab = NULL;
  body = rp_sbuf_take(&g->body, &n);
  if (status != 0 || g->failed || body == NULL || n == 0) {
    free(body);
    free(g);
    return;
  }
  memset(&e, 0, sizeof(e));
  SHA256((const unsigned char *)body, n, md);
  e.digest.algo = 256;
  for (size_t i = 0; i < 32; i++)
    snprintf(e.digest.hex + 2 * i, 3, "%02x", md[i]);
  if (g->has_named && (g->named.algo != 256 || strcmp(g->named.hex, e.digest.hex) != 0)) {
    /* A digest header that does not match the bytes: remember nothing. */
    rp_log_warn("manifest %s: Docker-Content-Digest does not match its body; not cached",
                c->log.path);
    free(body);
    free(g);
    return;
  }
  rp__mitm_registry(c, registry, sizeof(registry));
  snprintf(e.media_type, sizeof(e.media_type), "%s", g->ctype);
  e.size = n;
  rp__reg_remember_tag(c, registry, &e);
  rp_cache_note_repo(srv->cache, &e.digest, registry, c->reg.name); /* cached already */
  fill = rp_fill_start(srv->cache, &e.digest, (int64_t)n, true, g->ctype);
  rp_fill_note_repo(fill, registry, c->reg.name);
  if (fill != NULL && rp_fill_write(fill, body, n) == 0) {
    rp_fill_finish(fill);
    /* Listed as a finished job until published (job_find sweeps it). */
    job = calloc(1, sizeof(*job));
    if (job != NULL) {
      job->srv = srv;
      job->fill = fill;
      job->d = e.digest;
      job->is_manifest = true;
      job->size = n;
      job->done = true;
      snprintf(job->ctype, sizeof(job->ctype), "%s", g->ctype);
      snprintf(job->registry, sizeof(job->registry), "%s", registry);
      snprintf(job->repo, sizeof(job->repo), "%s", c->reg.name);
      job->next = srv->jobs;
      srv->jobs = job;
      fill = NULL;
    }
  } else if (fill != NULL) {
    rp_fill_abort(fill, "write failed");
  }
  rp_fill_unref(fill);
  free(body);
  free(g);
}
