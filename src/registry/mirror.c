/* Mirror mode (contract §3 "Mirror mode"): origin-form `/v2/…` requests on a
 * --listen port, as dockerd's "registry-mirrors" and containerd's hosts.toml
 * send them. The registry comes from `?ns=` (containerd), else
 * mirror_default; `ns` is stripped before going upstream and echoed as
 * OCI-Namespace. regproxy answers `/v2/` itself and fetches upstream over
 * https with its own credentials: an anonymous token from the registry's
 * challenge, or what registry_auth (a docker config.json) holds for it. The
 * client's own Authorization is not forwarded: everything a mirror serves,
 * it serves to every allowed client (documented).
 *
 * Once the credential is ready, the request takes the same decision, cache
 * and relay as an intercepted one (rp__serve): mirror and MITM share the
 * store and the tag memory of a registry. Which Host names may reach the
 * mirror is the front's check (DNS rebinding), made before it comes here. */
#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "regproxy/auth.h"
#include "regproxy/log.h"
#include "regproxy/rules.h"

#define MIRROR_REGS     64
#define MIRROR_FRESH_MS (10 * 60 * 1000) /* how long a /v2/ challenge is trusted */

enum reg_state { REG_UNKNOWN, REG_OPEN, REG_CHALLENGE };

/* What the registry's /v2/ answered: no auth needed, or its challenge. */
struct mirror_reg {
  char key[300];
  enum reg_state state;
  struct rp_auth_challenge ch;
  uint64_t when_ms;
};

struct rp__mirror {
  struct rp_auth *auth; /* NULL when it could not be created: anonymous, no tokens */
  struct mirror_reg reg[MIRROR_REGS];
};

/* The credential being prepared for one request. */
struct rp__mirror_op {
  struct rp__rq *rq;
  struct rp_fetch *ping;
  struct rp_auth_req *areq;
  int ping_status;
  struct rp_auth_challenge ping_ch;
  bool ping_have_ch;
  char registry[300]; /* canonical identity, also the auth key */
  char scope[300];    /* "repository:<name>:pull", "" for none */
};

static struct rp__mirror *mirror_of(struct rp_registry *reg) {
  if (reg->mirror == NULL) {
    struct rp_auth_opts o;
    char *err = NULL;

    reg->mirror = calloc(1, sizeof(*reg->mirror));
    if (reg->mirror == NULL)
      return NULL;
    memset(&o, 0, sizeof(o));
    o.up = reg->up;
    o.docker_config = reg->registry_auth;
    if (rp_auth_create(&o, &reg->mirror->auth, &err) != 0) {
      rp_log_warn("mirror: registry credentials not usable (%s); fetching anonymously",
                  err != NULL ? err : "failed");
      free(err);
      o.docker_config = NULL;
      if (rp_auth_create(&o, &reg->mirror->auth, &err) != 0) {
        free(err);
        reg->mirror->auth = NULL;
      }
    }
  }
  return reg->mirror;
}

static struct mirror_reg *reg_slot(struct rp__mirror *m, const char *registry) {
  return &m->reg[rp_str_hash(registry) % MIRROR_REGS];
}

/* ---- the request, once its credential is settled ---- */

static void op_free(struct rp__rq *rq) {
  struct rp__mirror_op *op = rq->mop;
  if (op == NULL)
    return;
  rq->mop = NULL;
  if (op->ping != NULL)
    rp_fetch_cancel(op->ping);
  rp_auth_cancel(op->areq);
  rp_auth_challenge_clear(&op->ping_ch);
  free(op);
}

static void go(struct rp__rq *rq, const char *authorization) {
  op_free(rq);
  free(rq->authz);
  rq->authz = authorization != NULL && authorization[0] ? strdup(authorization) : NULL;
  rp__serve(rq);
}

static void on_token(void *data, int status, const char *authorization, const char *reason) {
  struct rp__mirror_op *op = data;
  struct rp__rq *rq = op->rq;

  op->areq = NULL;
  if (status != 0)
    /* No token (the token server refused, or Basic without credentials):
     * the request goes without, and the registry's answer is relayed. */
    rp_log_info("mirror: no credential for %s %s: %s", op->registry, op->scope, reason);
  go(rq, status == 0 ? authorization : NULL);
}

/* Answer the registry's challenge with a token or Basic credentials. */
static void authorize(struct rp__rq *rq, const struct rp_auth_challenge *ch) {
  struct rp__mirror_op *op = rq->mop;
  struct rp__mirror *m = rq->reg->mirror;

  if (m->auth == NULL) {
    go(rq, NULL);
    return;
  }
  op->areq =
      rp_auth_get(m->auth, op->registry, op->scope[0] ? op->scope : NULL, ch, 0, on_token, op);
  if (op->areq == NULL)
    go(rq, NULL);
}

static void with_challenge(struct rp__rq *rq) {
  struct rp__mirror_op *op = rq->mop;
  struct mirror_reg *r = reg_slot(rq->reg->mirror, op->registry);

  if (r->state == REG_CHALLENGE && strcmp(r->key, op->registry) == 0)
    authorize(rq, &r->ch);
  else
    go(rq, NULL);
}

static int on_ping_head(struct rp_fetch *f, void *data, int status, const char *reason,
                        const struct rp_http_header *h, size_t n) {
  struct rp__mirror_op *op = data;
  (void)reason;
  op->ping_status = status;
  if (status == 401)
    op->ping_have_ch = rp_auth_challenge_from_response(f, h, n, &op->ping_ch) == 0;
  return 0;
}

static void on_ping_done(struct rp_fetch *f, void *data, int status, const char *reason) {
  struct rp__mirror_op *op = data;
  struct rp__rq *rq = op->rq;
  struct mirror_reg *r = reg_slot(rq->reg->mirror, op->registry);

  (void)f;
  (void)reason;
  op->ping = NULL;
  if (status == 0 && (op->ping_status == 200 || (op->ping_status == 401 && op->ping_have_ch))) {
    rp_auth_challenge_clear(&r->ch);
    snprintf(r->key, sizeof(r->key), "%s", op->registry);
    r->when_ms = uv_now(rq->reg->loop);
    r->state = REG_OPEN;
    if (op->ping_status == 401 && rp_auth_challenge_copy(&r->ch, &op->ping_ch) == 0)
      r->state = REG_CHALLENGE;
  }
  /* Unreachable or odd: go without a credential; the relay answers from
   * memory or relays the failure. */
  with_challenge(rq);
}

static const struct rp_fetch_callbacks ping_callbacks = {
    .on_head = on_ping_head,
    .on_done = on_ping_done,
};

/* The registry's /v2/ tells whether and how to authenticate. */
static void ping(struct rp__rq *rq) {
  struct rp__mirror_op *op = rq->mop;
  struct rp_fetch_req req;
  char origin[320], url[400];

  rp__rq_origin(rq, origin, sizeof(origin));
  snprintf(url, sizeof(url), "%s/v2/", origin);
  memset(&req, 0, sizeof(req));
  req.method = "GET";
  req.url = url;
  rp__fetch_req_defaults(rq->reg, &req);
  op->ping = rp_fetch_start(rq->reg->up, &req, &ping_callbacks, op);
  if (op->ping == NULL)
    go(rq, NULL);
}

/* ---- entry points ---- */

/* host[:port] (443 when none) of an upstream into t. */
static bool parse_origin(const char *hostport, struct rp_target *t) {
  const char *why;
  char buf[300];
  const char *close = hostport[0] == '[' ? strchr(hostport, ']') : NULL;
  bool has_port = close != NULL ? close[1] == ':' : strchr(hostport, ':') != NULL;

  snprintf(buf, sizeof(buf), "%s%s", hostport, has_port ? "" : ":443");
  return rp_target_parse_authority(buf, strlen(buf), t, &why) == 0;
}

/* A registry the mirror serves (contract §3 "Who may receive what"): an HTTPS
 * registry named in mitm, or mirror_default. Anything else a client names
 * with ?ns= is refused before any upstream request. */
bool rp_registry_mirror_serves(const struct rp_hostlist *mitm, const char *mirror_default,
                               const char *registry) {
  struct rp_target t;
  char dflt[300];

  if (parse_origin(rp_reg_upstream_host(registry), &t) && mitm != NULL &&
      rp_hostlist_match(mitm, t.host, t.port))
    return true;
  rp_reg_canonical(mirror_default != NULL ? mirror_default : "", 0, dflt, sizeof(dflt));
  return dflt[0] != '\0' && strcmp(dflt, registry) == 0;
}

/* A whole answer from the mirror itself. */
static void answer(struct rp__rq *rq, int status, const char *ctype, const char *body) {
  struct rp_http_header h[2];

  rp_http_header_init(&h[0], "Content-Type", ctype);
  rp_http_header_init(&h[1], "Docker-Distribution-API-Version", "registry/2.0");
  rp__rq_reply(rq, status, h, 2, body, strlen(body));
}

/* host[:port] of an upstream into rq->host / rq->port. */
static bool set_origin(struct rp__rq *rq, const char *hostport) {
  struct rp_target t;

  if (!parse_origin(hostport, &t))
    return false;
  snprintf(rq->host, sizeof(rq->host), "%s", t.host);
  rq->port = t.port;
  return true;
}

/* The client's path and query without ns= (the upstream never sees it). */
static char *strip_ns(const char *p, size_t n) {
  const char *q = memchr(p, '?', n);
  char *out = malloc(n + 1), *o;
  size_t plen;

  if (out == NULL)
    return NULL;
  if (q == NULL) {
    memcpy(out, p, n);
    out[n] = '\0';
    return out;
  }
  plen = (size_t)(q - p);
  memcpy(out, p, plen);
  o = out + plen;
  for (const char *s = q + 1, *end = p + n; s < end;) {
    const char *amp = memchr(s, '&', (size_t)(end - s));
    size_t k = amp != NULL ? (size_t)(amp - s) : (size_t)(end - s);
    if (!(k >= 3 && memcmp(s, "ns=", 3) == 0) && k > 0) {
      char sep = o == out + plen ? '?' : '&';
      *o++ = sep;
      memcpy(o, s, k);
      o += k;
    }
    s += k + (amp != NULL ? 1 : 0);
  }
  *o = '\0';
  return out;
}

void rp__mirror_serve(struct rp__rq *rq) {
  struct rp_registry *reg = rq->reg;
  const struct rp_reg_path *p = &rq->path;
  struct rp__mirror *m;
  struct rp__mirror_op *op;
  struct mirror_reg *r;
  char registry[RP__REGISTRY_LEN];
  char *cached;

  if (rq->head->method_id != HTTP_GET && rq->head->method_id != HTTP_HEAD) {
    static const char why[] = "a mirror only reads (GET, HEAD)\n";
    struct rp_http_header h[2];
    rp_http_header_init(&h[0], "Content-Type", "text/plain; charset=utf-8");
    rp_http_header_init(&h[1], "Allow", "GET, HEAD");
    rp__rq_reason(rq, "a mirror only reads (GET, HEAD)");
    rp__rq_reply(rq, 405, h, 2, why, sizeof(why) - 1);
    return;
  }
  rp_reg_canonical(p->ns[0] ? p->ns : (reg->mirror_default ? reg->mirror_default : ""), 0, registry,
                   sizeof(registry));
  if (registry[0] == '\0' || !set_origin(rq, rp_reg_upstream_host(registry))) {
    rp_exchange_error(rq->x, 400, "no usable registry (?ns= or mirror_default)", false);
    return;
  }
  rp_exchange_note(rq->x, NULL, NULL, registry);
  rp_reg_canonical(rq->host, rq->port, rq->registry, sizeof(rq->registry));
  if (p->ns[0] != '\0')
    snprintf(rq->ns, sizeof(rq->ns), "%s", p->ns);
  if (!rp_registry_mirror_serves(reg->mitm, reg->mirror_default, registry)) {
    /* contract §3: only registries regproxy trusts, and no request to any other. */
    rp__rq_reason(rq, "registry not served by this mirror");
    answer(rq, 404, "application/json",
           "{\"errors\":[{\"code\":\"NAME_UNKNOWN\",\"message\":\"registry not served by "
           "this mirror (not in mitm or mirror_default)\"}]}");
    return;
  }
  if (p->kind == RP_REG_BASE) {
    /* contract §3: the mirror answers /v2/ itself (clients then pull without a token). */
    rp__rq_label(rq, "-");
    answer(rq, 200, "application/json", "{}");
    return;
  }
  rq->up_path = strip_ns(rq->x->path, rq->x->path_len);
  m = mirror_of(reg);
  op = calloc(1, sizeof(*op));
  if (m == NULL || op == NULL || rq->up_path == NULL) {
    free(op);
    rp_exchange_error(rq->x, 502, "out of memory", true);
    return;
  }
  op->rq = rq;
  snprintf(op->registry, sizeof(op->registry), "%s", registry);
  if (p->name[0] != '\0')
    snprintf(op->scope, sizeof(op->scope), "repository:%s:pull", p->name);
  rq->mop = op;
  /* A token still fresh from an earlier request: no round trip. */
  cached = m->auth != NULL ? rp_auth_cached(m->auth, registry, op->scope, 0) : NULL;
  if (cached != NULL) {
    go(rq, cached);
    free(cached);
    return;
  }
  r = reg_slot(m, registry);
  if (strcmp(r->key, registry) == 0 && r->state != REG_UNKNOWN &&
      uv_now(reg->loop) - r->when_ms < MIRROR_FRESH_MS) {
    with_challenge(rq);
    return;
  }
  ping(rq);
}

void rp__mirror_unauthorized(struct rp__rq *rq) {
  struct rp__mirror *m = rq->reg->mirror;
  char scope[300];

  if (m == NULL || m->auth == NULL || rq->path.name[0] == '\0')
    return;
  snprintf(scope, sizeof(scope), "repository:%s:pull", rq->path.name);
  rp_auth_invalidate(m->auth, rq->registry, scope, 0);
}

void rp__mirror_detach(struct rp__rq *rq) {
  op_free(rq);
}

void rp__mirror_shutdown(struct rp_registry *reg) {
  if (reg->mirror == NULL)
    return;
  for (size_t i = 0; i < MIRROR_REGS; i++)
    rp_auth_challenge_clear(&reg->mirror->reg[i].ch);
  rp_auth_destroy(reg->mirror->auth);
  free(reg->mirror);
  reg->mirror = NULL;
}
