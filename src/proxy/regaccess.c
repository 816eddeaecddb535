/* Who may receive what (SPEC §3): a cached object is served for (registry,
 * repository) only when it is known to belong there and the client's
 * credential was confirmed for that repository by an upstream 2xx within
 * access_ttl (a memo keyed by a hash of registry, repository and the
 * Authorization value), or the repository is public (publicrepo.c), or with
 * access_check off. */
#include <llhttp.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "regcache.h"
#include "regproxy/error.h"
#include "regproxy/log.h"
#include "regproxy/metrics.h"

#define MEMO_SLOTS 8192

struct memo_slot {
  unsigned char key[16]; /* sha256(registry, repository, credential) truncated */
  uint64_t when_ms;
};

struct rp__memo {
  struct memo_slot slot[MEMO_SLOTS];
};

/* The memo key: registry, repository and the credential the upstream saw
 * (the client's Authorization, or for a mirror request regproxy's own, kept
 * apart so that what regproxy's credentials may read is never confirmed for
 * a client that sent the same, e.g. none). */
void rp__reg_memo_key(const struct rp_conn *c, const char *registry, const char *repo,
                      unsigned char out[RP__MEMO_KEY_LEN]) {
  const struct rp_http_header *a = c->mirror ? NULL : rp_http_header_find(c->head, "authorization");
  unsigned char md[32];
  unsigned int mdlen = 0;
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();

  memset(out, 0, 16);
  if (ctx == NULL)
    return;
  if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1) {
    EVP_DigestUpdate(ctx, registry, strlen(registry) + 1);
    EVP_DigestUpdate(ctx, repo, strlen(repo) + 1);
    if (c->mirror) {
      EVP_DigestUpdate(ctx, "\001mirror", 7);
      if (c->mirror_authz != NULL)
        EVP_DigestUpdate(ctx, c->mirror_authz, strlen(c->mirror_authz));
    } else if (a != NULL) {
      EVP_DigestUpdate(ctx, a->value, a->value_len);
    }
    if (EVP_DigestFinal_ex(ctx, md, &mdlen) == 1)
      memcpy(out, md, 16);
  }
  EVP_MD_CTX_free(ctx);
}

static struct memo_slot *memo_find(struct rp__memo *m, const unsigned char key[16]) {
  uint32_t idx;
  memcpy(&idx, key, sizeof(idx));
  return &m->slot[idx % MEMO_SLOTS];
}

void rp__reg_memo_confirm_key(struct rp_server *srv, const unsigned char key[RP__MEMO_KEY_LEN]) {
  struct memo_slot *s;

  if (srv->memo == NULL && (srv->memo = calloc(1, sizeof(*srv->memo))) == NULL)
    return;
  s = memo_find(srv->memo, key);
  memcpy(s->key, key, 16);
  s->when_ms = uv_now(srv->loop) + 1; /* 0 marks an empty slot */
}

void rp__reg_memo_confirm(struct rp_conn *c, const char *registry, const char *repo) {
  unsigned char key[RP__MEMO_KEY_LEN];

  rp__reg_memo_key(c, registry, repo, key);
  rp__reg_memo_confirm_key(c->srv, key);
}

static bool memo_ok(struct rp_conn *c, const char *registry, const char *repo) {
  struct rp_server *srv = c->srv;
  unsigned char key[16];
  struct memo_slot *s;

  if (srv->memo == NULL)
    return false;
  rp__reg_memo_key(c, registry, repo, key);
  s = memo_find(srv->memo, key);
  /* when_ms is the confirmation time plus one (0 marks an empty slot). */
  return s->when_ms != 0 && memcmp(s->key, key, 16) == 0 &&
         uv_now(srv->loop) + 1 - s->when_ms < srv->cfg->access_ttl_ms;
}

/* May this client read this repository without asking upstream? With
 * access_check off, yes; else when the repository is public or the client's
 * credential was confirmed there within access_ttl. */
bool rp__reg_client_ok(struct rp_conn *c, const char *registry, bool offline) {
  struct rp_server *srv = c->srv;
  return !srv->cfg->access_check || rp__public_known(srv, registry, c->reg.name, offline) ||
         memo_ok(c, registry, c->reg.name);
}

bool rp__reg_head_confirms(const struct rp_conn *c, int status) {
  if (status >= 200 && status < 300)
    return true;
  /* Docker Hub answers a blob HEAD with a redirect to its CDN; over plain
   * HTTP a redirect (to https, typically) says nothing about access. */
  return status >= 300 && status < 400 && c->reg.kind == RP_REG_BLOB && !c->up_plain;
}

/* Learn in the background whether the repository is public. */
void rp__reg_probe_public(struct rp_conn *c, const char *registry) {
  char origin[320];
  if (c->reg.kind != RP_REG_MANIFEST)
    return;
  rp__mitm_origin(c, origin, sizeof(origin));
  rp__public_probe(c->srv, registry, c->reg.name, origin, c->reg.ref);
}

bool rp__reg_may_serve(struct rp_conn *c, const char *registry, const struct rp_digest *d,
                       bool offline) {
  return !c->srv->cfg->access_check || (rp_cache_in_repo(c->srv->cache, d, registry, c->reg.name) &&
                                        rp__reg_client_ok(c, registry, offline));
}
