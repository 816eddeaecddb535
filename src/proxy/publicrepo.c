/* Is a repository public? (SPEC §3 "Who may receive what".) regproxy asks
 * the registry itself, with no credentials or with an anonymous token from
 * its own auth client: a manifest HEAD that succeeds makes the repository
 * public, and cached objects known in it may be served to any allowed
 * client. Answers are remembered for an hour; probes run in the background
 * and never delay a request. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "regproxy/auth.h"
#include "regproxy/log.h"

#define PUB_SLOTS    1024
#define PUB_FRESH_MS (60 * 60 * 1000)

enum pub_state { PUB_UNKNOWN, PUB_PROBING, PUB_PUBLIC, PUB_PRIVATE };

struct pub_entry {
  char key[560]; /* "registry\nrepository" */
  enum pub_state state;
  uint64_t when_ms;
};

struct rp__public {
  struct pub_entry e[PUB_SLOTS];
  struct rp_auth *auth;
  struct probe *probes; /* running, for shutdown */
};

struct probe {
  struct probe *next;
  struct rp_server *srv;
  struct pub_entry *entry;
  char key[560];
  char url[1200];
  char authz[4096];
  struct rp_fetch *fetch;
  struct rp_auth_req *areq;
  struct rp_auth_challenge ch;
  bool have_challenge;
  int status;
  int stage; /* 0: without credentials, 1: with an anonymous token */
};

static const char *const accept_types =
    "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.docker.distribution.manifest.v2+json";

static struct pub_entry *slot(struct rp__public *p, const char *key) {
  return &p->e[rp__str_hash(key) % PUB_SLOTS];
}

static void make_key(char *key, size_t n, const char *registry, const char *repo) {
  snprintf(key, n, "%s\n%s", registry, repo);
}

bool rp__public_known(struct rp_server *srv, const char *registry, const char *repo) {
  char key[560];
  struct pub_entry *e;
  if (srv->pub == NULL)
    return false;
  make_key(key, sizeof(key), registry, repo);
  e = slot(srv->pub, key);
  return e->state == PUB_PUBLIC && strcmp(e->key, key) == 0 &&
         uv_now(srv->loop) - e->when_ms < PUB_FRESH_MS;
}

static void probe_free(struct probe *pr) {
  struct probe **pp = &pr->srv->pub->probes;
  while (*pp != NULL && *pp != pr)
    pp = &(*pp)->next;
  if (*pp == pr)
    *pp = pr->next;
  rp_auth_challenge_clear(&pr->ch);
  free(pr);
}

static void probe_result(struct probe *pr, enum pub_state st) {
  struct pub_entry *e = pr->entry;
  if (strcmp(e->key, pr->key) == 0) {
    e->state = st;
    e->when_ms = uv_now(pr->srv->loop);
  }
  if (rp_log_enabled(RP_LOG_INFO)) {
    const char *nl = strchr(pr->key, '\n');
    rp_log_info("repository %.*s/%s is %s", (int)(nl - pr->key), pr->key, nl + 1,
                st == PUB_PUBLIC ? "public" : "not public");
  }
  probe_free(pr);
}

static void probe_head(struct probe *pr);

static int on_probe_head(struct rp_fetch *f, void *data, int status, const char *reason,
                         const struct rp_http_header *h, size_t n) {
  struct probe *pr = data;
  (void)reason;
  pr->status = status;
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
  if (status != 0) {
    /* Unreachable: no answer either way; ask again later. */
    if (strcmp(pr->entry->key, pr->key) == 0)
      pr->entry->state = PUB_UNKNOWN;
    probe_free(pr);
    return;
  }
  if (pr->status >= 200 && pr->status < 300) {
    probe_result(pr, PUB_PUBLIC);
    return;
  }
  if (pr->stage == 0 && pr->status == 401 && pr->have_challenge && pr->srv->pub->auth != NULL) {
    nl = strchr(pr->key, '\n');
    snprintf(scope, sizeof(scope), "repository:%s:pull", nl + 1);
    {
      char registry[300];
      size_t rl = (size_t)(nl - pr->key) < sizeof(registry) - 1 ? (size_t)(nl - pr->key)
                                                                : sizeof(registry) - 1;
      memcpy(registry, pr->key, rl);
      registry[rl] = '\0';
      pr->areq = rp_auth_get(pr->srv->pub->auth, registry, scope, &pr->ch, RP_AUTH_ANONYMOUS,
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
  struct rp_server *srv = pr->srv;
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
  if (srv->parent.host[0] != '\0') {
    req.proxy = srv->parent.url;
    req.proxy_userinfo = srv->cfg->parent_proxy_userinfo;
  }
  pr->status = 0;
  pr->fetch = rp_fetch_start(srv->up, &req, &probe_callbacks, pr);
  if (pr->fetch == NULL) {
    if (strcmp(pr->entry->key, pr->key) == 0)
      pr->entry->state = PUB_UNKNOWN;
    probe_free(pr);
  }
}

void rp__public_probe(struct rp_server *srv, const char *registry, const char *repo,
                      const char *origin, const char *ref) {
  struct probe *pr;
  struct pub_entry *e;
  char key[560];

  if (srv->up == NULL)
    return;
  if (srv->pub == NULL) {
    struct rp_auth_opts o;
    char *err = NULL;
    srv->pub = calloc(1, sizeof(*srv->pub));
    if (srv->pub == NULL)
      return;
    memset(&o, 0, sizeof(o));
    o.up = srv->up;
    if (rp_auth_create(&o, &srv->pub->auth, &err) != 0) {
      rp_log_warn("registry auth client: %s", err != NULL ? err : "failed");
      free(err);
      srv->pub->auth = NULL;
    }
  }
  make_key(key, sizeof(key), registry, repo);
  e = slot(srv->pub, key);
  if (strcmp(e->key, key) == 0 &&
      (e->state == PUB_PROBING ||
       (e->state != PUB_UNKNOWN && uv_now(srv->loop) - e->when_ms < PUB_FRESH_MS)))
    return;
  pr = calloc(1, sizeof(*pr));
  if (pr == NULL)
    return;
  snprintf(e->key, sizeof(e->key), "%s", key);
  e->state = PUB_PROBING;
  pr->srv = srv;
  pr->entry = e;
  snprintf(pr->key, sizeof(pr->key), "%s", key);
  snprintf(pr->url, sizeof(pr->url), "%s/v2/%s/manifests/%s", origin, repo, ref);
  pr->next = srv->pub->probes;
  srv->pub->probes = pr;
  probe_head(pr);
}

void rp__public_shutdown(struct rp_server *srv) {
  if (srv->pub == NULL)
    return;
  while (srv->pub->probes != NULL) {
    struct probe *pr = srv->pub->probes;
    if (pr->fetch != NULL)
      rp_fetch_cancel(pr->fetch);
    srv->pub->probes = pr->next;
    rp_auth_challenge_clear(&pr->ch);
    free(pr);
  }
  rp_auth_destroy(srv->pub->auth);
  free(srv->pub);
  srv->pub = NULL;
}
