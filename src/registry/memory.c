/* What the service answers from memory (contract §3 "Manifests", "Upstream
 * unreachable"): the tag memory, --tag-ttl, stale answers while the registry
 * is unreachable, and manifests relayed by tag without a digest, hashed on
 * the way and kept. */
#include <curl/curl.h>
#include <llhttp.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"
#include "regproxy/log.h"

/* ---- tag memory and answers from memory ---- */

void rp__remember_tag(struct rp__rq *rq, struct rp_tag_entry *e) {
  char key[RP_REG_ACCEPT_KEY_SIZE];
  const struct rp_reg_path *p = &rq->path;
  if (p->kind != RP_REG_MANIFEST || p->ref_is_digest || e->media_type[0] == '\0')
    return;
  rp_reg_accept_key(rq->head, key, sizeof(key));
  e->checked = (int64_t)time(NULL);
  rp_cache_tag_put(rq->reg->cache, rq->registry, p->name, p->ref, key, e);
}

/* What memory can answer for the request, without answering. */
static bool stale_lookup(struct rp__rq *rq, bool offline, struct rp_digest *d,
                         struct rp_object_info *info, struct rp_tag_entry *tag, bool *by_tag) {
  struct rp_registry *reg = rq->reg;
  const struct rp_reg_path *p = &rq->path;
  const struct rp_http_head *h = rq->head;
  bool head_only = h->method_id == HTTP_HEAD;

  *by_tag = false;
  if (reg->cache == NULL || (h->method_id != HTTP_GET && !head_only))
    return false;
  /* /v2/ is vouched for only for a registry pulled from before: a 200 for
   * one never reached would stop clients falling back from https to http. */
  if (p->kind == RP_REG_BASE)
    return rp_cache_knows_registry(reg->cache, rq->registry);
  if (p->kind == RP_REG_MANIFEST && !p->ref_is_digest) {
    char key[RP_REG_ACCEPT_KEY_SIZE];
    rp_reg_accept_key(h, key, sizeof(key));
    if (!rp_cache_tag_get(reg->cache, rq->registry, p->name, p->ref, key, tag) ||
        !rp_reg_accept_allows(key, tag->media_type))
      return false;
    *by_tag = true;
    *d = tag->digest;
  } else if ((p->kind == RP_REG_MANIFEST || p->kind == RP_REG_BLOB) && p->ref_is_digest) {
    if (rp_digest_parse(p->ref, strlen(p->ref), d) != 0)
      return false;
  } else {
    return false;
  }
  if (!rp_cache_has(reg->cache, d, info) || !rp__may_serve(rq, d, offline))
    /* A HEAD by tag needs only the memory, but tells the digest: only to a
     * client that may read the repository (contract §3). */
    return *by_tag && head_only && rp__client_ok(rq, offline);
  return true;
}

bool rp__can_stale(struct rp__rq *rq) {
  struct rp_digest d;
  struct rp_object_info info;
  struct rp_tag_entry tag;
  bool by_tag;

  return stale_lookup(rq, true, &d, &info, &tag, &by_tag);
}

/* --tag-ttl: a tag confirmed upstream that recently is answered from memory. */
bool rp__tag_fresh(struct rp__rq *rq) {
  struct rp_registry *reg = rq->reg;
  char key[RP_REG_ACCEPT_KEY_SIZE];
  struct rp_tag_entry e;
  int64_t age;

  if (reg->tag_ttl_ms == 0 || reg->cache == NULL)
    return false;
  rp_reg_accept_key(rq->head, key, sizeof(key));
  if (!rp_cache_tag_get(reg->cache, rq->registry, rq->path.name, rq->path.ref, key, &e) ||
      !rp_reg_accept_allows(key, e.media_type))
    return false;
  age = (int64_t)time(NULL) - e.checked;
  return age >= 0 && (uint64_t)age * 1000 < reg->tag_ttl_ms;
}

/* Answer from the tag memory and the cache alone; label is the log's cache=,
 * offline whether the registry is unreachable now. */
bool rp__answer_from_memory(struct rp__rq *rq, const char *label, bool offline) {
  struct rp_digest d;
  struct rp_object_info info;
  struct rp_tag_entry tag;
  struct rp_http_header h[3];
  bool by_tag;
  char dg[140];

  memset(&info, 0, sizeof(info));
  if (rq->answered || !stale_lookup(rq, offline, &d, &info, &tag, &by_tag))
    return false;
  rp__rq_label(rq, label);
  if (rq->path.kind == RP_REG_BASE) {
    rp_http_header_init(&h[0], "Docker-Distribution-API-Version", "registry/2.0");
    rp_http_header_init(&h[1], "Content-Type", "application/json");
    rp__rq_reply(rq, 200, h, 2, "{}", 2);
    return true;
  }
  if (rq->is_head && by_tag) {
    /* A HEAD by tag: what the tag names, no body. */
    rp_digest_format(&d, dg, sizeof(dg));
    rp_http_header_init(&h[0], "Docker-Distribution-API-Version", "registry/2.0");
    rp_http_header_init(&h[1], "Content-Type", tag.media_type);
    rp_http_header_init(&h[2], "Docker-Content-Digest", dg);
    if (rp__rq_start(rq, 200, h, 3, (int64_t)tag.size) != 0)
      rp_exchange_abort(rq->x, "answer failed");
    else
      rp_exchange_finish(rq->x);
    return true;
  }
  rp__serve_or_abort(rq, &d, NULL, info.size, info.media_type, 0, -1, false);
  return true;
}

/* ---- Retry-After (RFC 9110 §10.2.3): a registry that asked to wait ---- */

#define WAIT_MAX_S 3600

void rp__wait_key(const struct rp__rq *rq, unsigned char out[16]) {
  rp__memo_key(rq, rq->registry, "", out); /* the memo's key, for no repository */
}

void rp__note_retry_after(struct rp_registry *reg, const char *registry,
                          const unsigned char key[16], int status, const struct rp_http_header *h,
                          size_t n) {
  char v[64];
  int64_t secs = -1;
  struct rp__wait *slot = NULL, *oldest = &reg->waits[0];
  uint64_t now = uv_now(reg->loop);

  if ((status != 429 && status != 503) || registry[0] == '\0')
    return;
  rp__header_copy(h, n, "retry-after", v, sizeof(v));
  if (v[0] >= '0' && v[0] <= '9') {
    secs = strtoll(v, NULL, 10);
  } else if (v[0] != '\0') {
    time_t when = curl_getdate(v, NULL);
    if (when > 0)
      secs = (int64_t)(when - time(NULL));
  }
  if (secs <= 0)
    return;
  if (secs > WAIT_MAX_S)
    secs = WAIT_MAX_S;
  for (size_t i = 0; i < RP__WAIT_SLOTS && slot == NULL; i++) {
    if (memcmp(reg->waits[i].key, key, 16) == 0)
      slot = &reg->waits[i];
    else if (reg->waits[i].until_ms < oldest->until_ms)
      oldest = &reg->waits[i];
  }
  if (slot == NULL) {
    slot = oldest;
    memcpy(slot->key, key, 16);
  }
  slot->until_ms = now + (uint64_t)secs * 1000;
  rp_log_info("registry %s asked to wait %llds (%d): answering that credential from memory "
              "until then",
              registry, (long long)secs, status);
}

static uint64_t wait_left_ms(const struct rp__rq *rq) {
  uint64_t now = uv_now(rq->reg->loop);
  unsigned char key[16];

  rp__wait_key(rq, key);
  for (size_t i = 0; i < RP__WAIT_SLOTS; i++)
    if (rq->reg->waits[i].until_ms > now && memcmp(rq->reg->waits[i].key, key, 16) == 0)
      return rq->reg->waits[i].until_ms - now;
  return 0;
}

bool rp__wait_answer(struct rp__rq *rq) {
  static const char body[] =
      "{\"errors\":[{\"code\":\"TOOMANYREQUESTS\",\"message\":"
      "\"the registry asked to wait (Retry-After); regproxy waits with it\"}]}";
  uint64_t left = wait_left_ms(rq);
  struct rp_http_header h[3];
  char secs[24];
  int m = rq->head->method_id;

  if (left == 0)
    return false;
  if (rp__answer_from_memory(rq, "stale", true))
    return true;
  if ((m != HTTP_GET && m != HTTP_HEAD) ||
      (rq->path.kind != RP_REG_MANIFEST && rq->path.kind != RP_REG_BLOB))
    return false;
  snprintf(secs, sizeof(secs), "%llu", (unsigned long long)((left + 999) / 1000));
  rp_http_header_init(&h[0], "Content-Type", "application/json");
  rp_http_header_init(&h[1], "Retry-After", secs);
  rp_http_header_init(&h[2], "Docker-Distribution-API-Version", "registry/2.0");
  rp__rq_reason(rq, "the registry asked to wait (Retry-After)");
  rp__rq_reply(rq, 429, h, 3, body, sizeof(body) - 1);
  return true;
}

/* ---- an upstream answer relayed: what it tells ---- */

void rp__observe(struct rp__rq *rq, int status, const struct rp_http_header *h, size_t n) {
  struct rp_registry *reg = rq->reg;
  const struct rp_reg_path *p = &rq->path;
  struct rp_tag_entry e;
  char dg[160];
  int64_t size;

  if (status < 200 || status > 299 || (p->kind != RP_REG_MANIFEST && p->kind != RP_REG_BLOB))
    return;
  rp__memo_confirm(rq);
  if (p->kind == RP_REG_MANIFEST)
    rp__stats_ratelimit(reg, rq->registry, rp__stats_authenticated(rq), h, n);
  /* A manifest by tag: remember what the tag names, for answers from memory. */
  memset(&e, 0, sizeof(e));
  rp__header_copy(h, n, "docker-content-digest", dg, sizeof(dg));
  rp__header_copy(h, n, "content-type", e.media_type, sizeof(e.media_type));
  size = rp_http_header_size(h, n, "content-length");
  if (reg->cache != NULL && dg[0] != '\0' && size > 0 &&
      rp_digest_parse(dg, strlen(dg), &e.digest) == 0) {
    e.size = (uint64_t)size;
    rp__remember_tag(rq, &e);
  }
  if (rq->grab_manifest && status == 200 && !rq->is_head && reg->cache != NULL &&
      size <= GRAB_MAX && strstr(e.media_type, "prettyjws") == NULL) {
    rq->grab = calloc(1, sizeof(*rq->grab));
    if (rq->grab != NULL) {
      snprintf(rq->grab->ctype, sizeof(rq->grab->ctype), "%s", e.media_type);
      if (dg[0] != '\0' && rp_digest_parse(dg, strlen(dg), &rq->grab->named) == 0)
        rq->grab->has_named = true;
    }
  }
}

/* ---- a manifest relayed by tag, kept ---- */

void rp__grab_body(struct rp__rq *rq, const char *p, size_t n) {
  struct rp__grab *g = rq->grab;
  if (g == NULL || g->failed)
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
void rp__grab_done(struct rp__rq *rq, int status) {
  struct rp__grab *g = rq->grab;
  struct rp_registry *reg = rq->reg;
  struct rp_tag_entry e;
  struct rp_fill *fill;
  unsigned char md[32];
  size_t n = 0;
  char *body;

  if (g == NULL)
    return;
  rq->grab = NULL;
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
    rp_log_warn("manifest %s/%s:%s: Docker-Content-Digest does not match its body; not cached",
                rq->registry, rq->path.name, rq->path.ref);
    free(body);
    free(g);
    return;
  }
  snprintf(e.media_type, sizeof(e.media_type), "%s", g->ctype);
  e.size = n;
  rp__remember_tag(rq, &e);
  rp_cache_note_repo(reg->cache, &e.digest, rq->registry, rq->path.name); /* cached already */
  fill = rp_fill_start(reg->cache, &e.digest, (int64_t)n, true, g->ctype);
  rp_fill_note_repo(fill, rq->registry, rq->path.name);
  if (fill != NULL && rp_fill_write(fill, body, n) == 0) {
    rp_fill_finish(fill);
    /* Listed as a finished job until published (job_find sweeps it). */
    rp__job_add_finished(reg, fill, &e.digest, n, g->ctype, rq->registry, rq->path.name);
  } else if (fill != NULL) {
    rp_fill_abort(fill, "write failed");
    rp_fill_unref(fill);
  }
  free(body);
  free(g);
}
