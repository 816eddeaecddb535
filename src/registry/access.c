/* Who may receive what (contract §3): a cached object is served for (registry,
 * repository) only when it is known to belong there and the client's
 * credential was confirmed for that repository by an upstream 2xx within
 * access_ttl (a memo keyed by a hash of registry, repository and the
 * Authorization value), or the repository is public (public.c), or with
 * access_check off. Every such decision of the service is made here. */
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define MEMO_SLOTS 8192

struct memo_slot {
  unsigned char key[RP__MEMO_KEY_LEN]; /* sha256(registry, repository, credential) truncated */
  uint64_t when_ms;
};

struct rp__memo {
  struct memo_slot slot[MEMO_SLOTS];
};

/* The memo key: registry, repository and the credential the upstream saw
 * (the client's Authorization, or for a mirror request regproxy's own, kept
 * apart so that what regproxy's credentials may read is never confirmed for
 * a client that sent the same, e.g. none). */
void rp__memo_key(const struct rp__rq *rq, const char *registry, const char *repo,
                  unsigned char out[RP__MEMO_KEY_LEN]) {
  bool mirror = rq->way == RP_REGISTRY_MIRROR;
  const struct rp_http_header *a = mirror ? NULL : rp_http_header_find(rq->head, "authorization");
  unsigned char md[32];
  unsigned int mdlen = 0;
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();

  memset(out, 0, RP__MEMO_KEY_LEN);
  if (ctx == NULL)
    return;
  if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1) {
    EVP_DigestUpdate(ctx, registry, strlen(registry) + 1);
    EVP_DigestUpdate(ctx, repo, strlen(repo) + 1);
    if (mirror) {
      EVP_DigestUpdate(ctx, "\001mirror", 7);
      if (rq->authz != NULL)
        EVP_DigestUpdate(ctx, rq->authz, strlen(rq->authz));
    } else if (a != NULL) {
      EVP_DigestUpdate(ctx, a->value, a->value_len);
    }
    if (EVP_DigestFinal_ex(ctx, md, &mdlen) == 1)
      memcpy(out, md, RP__MEMO_KEY_LEN);
  }
  EVP_MD_CTX_free(ctx);
}

static struct memo_slot *memo_find(struct rp__memo *m, const unsigned char key[RP__MEMO_KEY_LEN]) {
  uint32_t idx;
  memcpy(&idx, key, sizeof(idx));
  return &m->slot[idx % MEMO_SLOTS];
}

void rp__memo_confirm_key(struct rp_registry *reg, const unsigned char key[RP__MEMO_KEY_LEN]) {
  struct memo_slot *s;

  if (reg->memo == NULL && (reg->memo = calloc(1, sizeof(*reg->memo))) == NULL)
    return;
  s = memo_find(reg->memo, key);
  memcpy(s->key, key, RP__MEMO_KEY_LEN);
  s->when_ms = uv_now(reg->loop) + 1; /* 0 marks an empty slot */
}

void rp__memo_confirm(struct rp__rq *rq) {
  unsigned char key[RP__MEMO_KEY_LEN];

  rp__memo_key(rq, rq->registry, rq->path.name, key);
  rp__memo_confirm_key(rq->reg, key);
}

void rp__memo_free(struct rp_registry *reg) {
  free(reg->memo);
  reg->memo = NULL;
}

static bool memo_ok(struct rp__rq *rq) {
  struct rp_registry *reg = rq->reg;
  unsigned char key[RP__MEMO_KEY_LEN];
  struct memo_slot *s;

  if (reg->memo == NULL)
    return false;
  rp__memo_key(rq, rq->registry, rq->path.name, key);
  s = memo_find(reg->memo, key);
  /* when_ms is the confirmation time plus one (0 marks an empty slot). */
  return s->when_ms != 0 && memcmp(s->key, key, RP__MEMO_KEY_LEN) == 0 &&
         uv_now(reg->loop) + 1 - s->when_ms < reg->access_ttl_ms;
}

/* May this client read its repository without asking upstream? With
 * access_check off, yes; else when the repository is public or the client's
 * credential was confirmed there within access_ttl. */
bool rp__client_ok(struct rp__rq *rq, bool offline) {
  struct rp_registry *reg = rq->reg;
  return !reg->access_check || rp__public_known(reg, rq->registry, rq->path.name, offline) ||
         memo_ok(rq);
}

bool rp__head_confirms(const struct rp__rq *rq, int status) {
  if (status >= 200 && status < 300)
    return true;
  /* Docker Hub answers a blob HEAD with a redirect to its CDN; over plain
   * HTTP a redirect (to https, typically) says nothing about access. */
  return status >= 300 && status < 400 && rq->path.kind == RP_REG_BLOB &&
         rq->way != RP_REGISTRY_PLAIN;
}

/* Learn in the background whether the repository is public. */
void rp__probe_public(struct rp__rq *rq) {
  char origin[320];
  if (rq->path.kind != RP_REG_MANIFEST)
    return;
  rp__rq_origin(rq, origin, sizeof(origin));
  rp__public_probe(rq->reg, rq->registry, rq->path.name, origin, rq->path.ref);
}

bool rp__may_serve(struct rp__rq *rq, const struct rp_digest *d, bool offline) {
  struct rp_registry *reg = rq->reg;
  return !reg->access_check || (rp_cache_in_repo(reg->cache, d, rq->registry, rq->path.name) &&
                                rp__client_ok(rq, offline));
}
