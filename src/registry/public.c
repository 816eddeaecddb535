/* Is a repository public? (contract §3 "Who may receive what".) regproxy asks
 * the registry itself, with no credentials or with an anonymous token from
 * its own auth client: a manifest HEAD answered 2xx with a digest or a
 * manifest media type makes the repository public, and cached objects known
 * in it may be served to any allowed client. Probes run in the background on
 * the first pull of a repository and never delay a request. The answer is
 * kept in the cache index with its time: refreshed after an hour while the
 * registry answers, and used whatever its age while it does not (offline
 * pulls after a restart). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"
#include "regproxy/auth.h"
#include "regproxy/log.h"

#define PUB_FRESH_S 3600 /* an answer older than this is asked again */
#define PROBES_MAX  32   /* probes at once; more wait for a later pull */

enum pub_state { PUB_PUBLIC, PUB_PRIVATE };

struct rp__public {
  struct rp_auth *auth;
  struct probe *probes; /* running: one per repository, for shutdown */
  unsigned nprobes;
};

struct probe {
  struct probe *next;
  struct rp_registry *reg;
  char key[560]; /* "registry\nrepository" */
  char url[1200];
  char authz[4096];
  struct rp_fetch *fetch;
  struct rp_auth_req *areq;
  struct rp_auth_challenge ch;
  bool have_challenge;
  int status;
  bool manifest; /* the answer named a digest or a manifest media type */
  int stage;     /* 0: without credentials, 1: with an anonymous token */
};

static const char *const accept_types =
    "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.docker.distribution.manifest.v2+json";

static void make_key(char *key, size_t n, const char *registry, const char *repo) {
  snprintf(key, n, "%s\n%s", registry, repo);
}

bool rp__public_known(struct rp_registry *reg, const char *registry, const char *repo,
                      bool offline) {
  bool is_public;
  int64_t checked, age;

  if (reg->cache == NULL || !rp_cache_public_get(reg->cache, registry, repo, &is_public, &checked))
    return false;
  age = (int64_t)time(NULL) - checked;
  return is_public && (offline || (age >= 0 && age < PUB_FRESH_S));
}

static void probe_free(struct probe *pr) {
  struct probe **pp = &pr->reg->pub->probes;
  while (*pp != NULL && *pp != pr)
    pp = &(*pp)->next;
  if (*pp == pr) {
    *pp = pr->next;
    pr->reg->pub->nprobes--;
  }
  rp_auth_challenge_clear(&pr->ch);
  free(pr);
}

static void probe_result(struct probe *pr, enum pub_state st) {
  const char *nl = strchr(pr->key, '\n');
  char registry[300];
  size_t rl =
      (size_t)(nl - pr->key) < sizeof(registry) - 1 ? (size_t)(nl - pr->key) : sizeof(registry) - 1;

  memcpy(registry, pr->key, rl);
  registry[rl] = '\0';
  rp_cache_public_put(pr->reg->cache, registry, nl + 1, st == PUB_PUBLIC, (int64_t)time(NULL));
  rp_log_info("repository %s/%s is %s", registry, nl + 1,
              st == PUB_PUBLIC ? "public" : "not public");
  probe_free(pr);
}

/* A manifest answer, not any 2xx (a captive portal, a catch-all page). */
static bool is_manifest_answer(const struct rp_http_header *h, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (rp_http_token_eq(h[i].name, h[i].name_len, "docker-content-digest") && h[i].value_len > 0)
      return true;
    if (rp_http_token_eq(h[i].name, h[i].name_len, "content-type") &&
        rp_reg_is_manifest_type(h[i].value, h[i].value_len))
      return true;
  }
  return false;
}

static void probe_head(struct probe *pr);

static int on_probe_head(struct rp_fetch *f, void *data, int status, const char *reason,
                         const struct rp_http_header *h, size_t n) {
  struct probe *pr = data;
  (void)reason;
  pr->status = status;
  pr->manifest = status >= 200 && status < 300 && is_manifest_answer(h, n);
  if (status == 401 && pr->stage == 0)
    pr->have_challenge = rp_auth_challenge_from_response(f, h, n, &pr->ch) == 0;
  return 0;
}

static void on_token(void *data, int status, const char *authorization, const char *reason) {
  struct probe *pr = data;
  (void)reason;
  pr->areq = NULL;
  if (status != 0 || authorization == NULL || strlen(authorization) + 16 > sizeof(pr->authz)) {
    probe_result(pr, PUB_PRIVATE);
    return;
  }
  snprintf(pr->authz, sizeof(pr->authz), "%s", authorization);
  pr->stage = 1;
  probe_head(pr);
}

static void on_probe_done(struct rp_fetch *f, void *data, int status, const char *reason) {
  struct probe *pr = data;
  char scope[600];
  const char *nl;

  (void)f;
  (void)reason;
  pr->fetch = NULL;
  if (status != 0 || pr->status >= 500 || pr->status == 429) {
    /* Unreachable or failing: no answer either way; ask again later. */
    probe_free(pr);
    return;
  }
  if (pr->manifest) {
    probe_result(pr, PUB_PUBLIC);
    return;
  }
  if (pr->stage == 0 && pr->status == 401 && pr->have_challenge && pr->reg->pub->auth != NULL) {
    nl = strchr(pr->key, '\n');
    snprintf(scope, sizeof(scope), "repository:%s:pull", nl + 1);
    {
      char registry[300];
      size_t rl = (size_t)(nl - pr->key) < sizeof(registry) - 1 ? (size_t)(nl - pr->key)
                                                                : sizeof(registry) - 1;
      memcpy(registry, pr->key, rl);
      registry[rl] = '\0';
      pr->areq = rp_auth_get(pr->reg->pub->auth, registry, scope, &pr->ch, RP_AUTH_ANONYMOUS,
                             on_token, pr);
    }
    if (pr->areq == NULL)
      probe_result(pr, PUB_PRIVATE);
    return;
  }
  probe_result(pr, PUB_PRIVATE);
}

static const struct rp_fetch_callbacks probe_callbacks = {
    .on_head = on_probe_head,
    .on_done = on_probe_done,
};

static void probe_head(struct probe *pr) {
  struct rp_registry *reg = pr->reg;
  struct rp_http_header hd[2];
  struct rp_fetch_req req;

  memset(&req, 0, sizeof(req));
  hd[0].name = "Accept";
  hd[0].name_len = 6;
  hd[0].value = accept_types;
  hd[0].value_len = strlen(accept_types);
  req.nheaders = 1;
  if (pr->stage == 1) {
    hd[1].name = "Authorization";
    hd[1].name_len = 13;
    hd[1].value = pr->authz;
    hd[1].value_len = strlen(pr->authz);
    req.nheaders = 2;
  }
  req.method = "HEAD";
  req.url = pr->url;
  req.headers = hd;
  rp__fetch_req_defaults(reg, &req);
  pr->status = 0;
  pr->fetch = rp_fetch_start(reg->up, &req, &probe_callbacks, pr);
  if (pr->fetch == NULL)
    probe_free(pr);
}

void rp__public_probe(struct rp_registry *reg, const char *registry, const char *repo,
                      const char *origin, const char *ref) {
  struct probe *pr;
  char key[560];

  if (reg->up == NULL || reg->cache == NULL)
    return;
  if (reg->pub == NULL) {
    struct rp_auth_opts o;
    char *err = NULL;
    reg->pub = calloc(1, sizeof(*reg->pub));
    if (reg->pub == NULL)
      return;
    memset(&o, 0, sizeof(o));
    o.up = reg->up;
    if (rp_auth_create(&o, &reg->pub->auth, &err) != 0) {
      rp_log_warn("registry auth client: %s", err != NULL ? err : "failed");
      free(err);
      reg->pub->auth = NULL;
    }
  }
  {
    bool is_public;
    int64_t checked, age;
    if (rp_cache_public_get(reg->cache, registry, repo, &is_public, &checked) &&
        (age = (int64_t)time(NULL) - checked) >= 0 && age < PUB_FRESH_S)
      return; /* known, and recent enough */
  }
  make_key(key, sizeof(key), registry, repo);
  for (pr = reg->pub->probes; pr != NULL; pr = pr->next)
    if (strcmp(pr->key, key) == 0)
      return; /* being asked */
  if (reg->pub->nprobes >= PROBES_MAX)
    return;
  pr = calloc(1, sizeof(*pr));
  if (pr == NULL)
    return;
  pr->reg = reg;
  snprintf(pr->key, sizeof(pr->key), "%s", key);
  snprintf(pr->url, sizeof(pr->url), "%s/v2/%s/manifests/%s", origin, repo, ref);
  pr->next = reg->pub->probes;
  reg->pub->probes = pr;
  reg->pub->nprobes++;
  probe_head(pr);
}

void rp__public_shutdown(struct rp_registry *reg) {
  if (reg->pub == NULL)
    return;
  while (reg->pub->probes != NULL) {
    struct probe *pr = reg->pub->probes;
    if (pr->fetch != NULL)
      rp_fetch_cancel(pr->fetch);
    reg->pub->probes = pr->next;
    rp_auth_challenge_clear(&pr->ch);
    free(pr);
  }
  rp_auth_destroy(reg->pub->auth);
  free(reg->pub);
  reg->pub = NULL;
}
