/* Mirror mode (SPEC §3 "Mirror mode"): origin-form `/v2/…` requests on a
 * --listen port, as dockerd's "registry-mirrors" and containerd's hosts.toml
 * send them. The registry comes from `?ns=` (containerd), else
 * mirror_default; `ns` is stripped before going upstream and echoed as
 * OCI-Namespace. regproxy answers `/v2/` itself and fetches upstream over
 * https with its own credentials: an anonymous token from the registry's
 * challenge, or what registry_auth (a docker config.json) holds for it. The
 * client's own Authorization is not forwarded: everything a mirror serves,
 * it serves to every allowed client (documented).
 *
 * Once the credential is ready, the request takes the same relay and cache
 * as an intercepted one (rp__mitm_relay): mirror and MITM share the store
 * and the tag memory of a registry. */
#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "regproxy/auth.h"
#include "regproxy/error.h"
#include "regproxy/log.h"
#include "regproxy/proxy.h"
#include "regproxy/registry.h"
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
  struct rp_conn *c;
  struct rp_fetch *ping;
  struct rp_auth_req *areq;
  int ping_status;
  struct rp_auth_challenge ping_ch;
  bool ping_have_ch;
  char registry[300]; /* canonical identity, also the auth key */
  char scope[300];    /* "repository:<name>:pull", "" for none */
};

static struct rp__mirror *mirror_of(struct rp_server *srv) {
  if (srv->mirror == NULL) {
    struct rp_auth_opts o;
    char *err = NULL;

    srv->mirror = calloc(1, sizeof(*srv->mirror));
    if (srv->mirror == NULL)
      return NULL;
    memset(&o, 0, sizeof(o));
    o.up = srv->up;
    o.docker_config = srv->cfg->registry_auth;
    if (rp_auth_create(&o, &srv->mirror->auth, &err) != 0) {
      rp_log_warn("mirror: registry credentials not usable (%s); fetching anonymously",
                  err != NULL ? err : "failed");
      free(err);
      o.docker_config = NULL;
      if (rp_auth_create(&o, &srv->mirror->auth, &err) != 0) {
        free(err);
        srv->mirror->auth = NULL;
      }
    }
  }
  return srv->mirror;
}

static struct mirror_reg *reg_slot(struct rp__mirror *m, const char *registry) {
  return &m->reg[rp_str_hash(registry) % MIRROR_REGS];
}

/* ---- the request, once its credential is settled ---- */

static void op_free(struct rp_conn *c) {
  struct rp__mirror_op *op = c->mop;
  if (op == NULL)
    return;
  c->mop = NULL;
  if (op->ping != NULL)
    rp_fetch_cancel(op->ping);
  rp_auth_cancel(op->areq);
  rp_auth_challenge_clear(&op->ping_ch);
  free(op);
}

static void go(struct rp_conn *c, const char *authorization) {
  op_free(c);
  free(c->mirror_authz);
  c->mirror_authz = authorization != NULL && authorization[0] ? strdup(authorization) : NULL;
  rp__mitm_relay(c, c->head);
  rp__conn_resume_input(c); /* the rest of the request, parked since its head */
}

static void on_token(void *data, int status, const char *authorization, const char *reason) {
  struct rp__mirror_op *op = data;
  struct rp_conn *c = op->c;

  op->areq = NULL;
  if (status != 0)
    /* No token (the token server refused, or Basic without credentials):
     * the request goes without, and the registry's answer is relayed. */
    rp_log_info("mirror: no credential for %s %s: %s", op->registry, op->scope, reason);
  go(c, status == 0 ? authorization : NULL);
}

/* Answer the registry's challenge with a token or Basic credentials. */
static void authorize(struct rp_conn *c, const struct rp_auth_challenge *ch) {
  struct rp__mirror_op *op = c->mop;
  struct rp__mirror *m = c->srv->mirror;

  if (m->auth == NULL) {
    go(c, NULL);
    return;
  }
  op->areq =
      rp_auth_get(m->auth, op->registry, op->scope[0] ? op->scope : NULL, ch, 0, on_token, op);
  if (op->areq == NULL)
    go(c, NULL);
}

static void with_challenge(struct rp_conn *c) {
  struct rp__mirror_op *op = c->mop;
  struct mirror_reg *r = reg_slot(c->srv->mirror, op->registry);

  if (r->state == REG_CHALLENGE && strcmp(r->key, op->registry) == 0)
    authorize(c, &r->ch);
  else
    go(c, NULL);
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
  struct rp_conn *c = op->c;
  struct mirror_reg *r = reg_slot(c->srv->mirror, op->registry);

  (void)f;
  (void)reason;
  op->ping = NULL;
  if (status == 0 && (op->ping_status == 200 || (op->ping_status == 401 && op->ping_have_ch))) {
    rp_auth_challenge_clear(&r->ch);
    snprintf(r->key, sizeof(r->key), "%s", op->registry);
    r->when_ms = uv_now(c->srv->loop);
    r->state = REG_OPEN;
    if (op->ping_status == 401 && rp_auth_challenge_copy(&r->ch, &op->ping_ch) == 0)
      r->state = REG_CHALLENGE;
  }
  /* Unreachable or odd: go without a credential; the relay answers from
   * memory or relays the failure. */
  with_challenge(c);
}

static const struct rp_fetch_callbacks ping_callbacks = {
    .on_head = on_ping_head,
    .on_done = on_ping_done,
};

/* The registry's /v2/ tells whether and how to authenticate. */
static void ping(struct rp_conn *c) {
  struct rp__mirror_op *op = c->mop;
  struct rp_server *srv = c->srv;
  struct rp_fetch_req req;
  char origin[320], url[400];

  rp__mitm_origin(c, origin, sizeof(origin));
  snprintf(url, sizeof(url), "%s/v2/", origin);
  memset(&req, 0, sizeof(req));
  req.method = "GET";
  req.url = url;
  if (srv->parent.host[0] != '\0') {
    req.proxy = srv->parent.url;
    req.proxy_userinfo = srv->cfg->parent_proxy_userinfo;
  }
  op->ping = rp_fetch_start(srv->up, &req, &ping_callbacks, op);
  if (op->ping == NULL)
    go(c, NULL);
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

/* A registry the mirror serves (SPEC §3 "Who may receive what"): an HTTPS
 * registry named in mitm, or mirror_default. Anything else a client names
 * with ?ns= is refused before any upstream request. */
bool rp_mirror_serves(const struct rp_config *cfg, const char *registry) {
  struct rp_target t;
  char dflt[300];

  if (parse_origin(rp_reg_upstream_host(registry), &t) &&
      rp_hostlist_match(cfg->mitm_list, t.host, t.port))
    return true;
  rp_reg_canonical(cfg->mirror_default, 0, dflt, sizeof(dflt));
  return dflt[0] != '\0' && strcmp(dflt, registry) == 0;
}

/* A whole answer from the mirror itself. */
static void answer(struct rp_conn *c, int status, const char *ctype, const char *body) {
  struct rp_http_header h[2];

  rp_http_header_init(&h[0], "Content-Type", ctype);
  rp_http_header_init(&h[1], "Docker-Distribution-API-Version", "registry/2.0");
  if (rp_exchange_reply(rp__conn_exchange(c), status, h, 2, body, strlen(body)) != 0)
    rp__conn_close(c);
}

/* host[:port] of an upstream into c->mitm_host / c->mitm_port. */
static bool set_origin(struct rp_conn *c, const char *hostport) {
  struct rp_target t;

  if (!parse_origin(hostport, &t))
    return false;
  snprintf(c->mitm_host, sizeof(c->mitm_host), "%s", t.host);
  c->mitm_port = t.port;
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

void rp__mirror_request(struct rp_conn *c, const struct rp_http_head *h) {
  struct rp_server *srv = c->srv;
  struct rp__mirror *m;
  struct rp__mirror_op *op;
  struct mirror_reg *r;
  char registry[300];
  char *cached;

  c->log.via = "mirror";
  c->log.route = "mirror";
  c->log.cache = "pass";
  if (!rp__admin_host_allowed(srv->cfg, h)) {
    rp__conn_respond(c, 421,
                     "mirror requests need Host: localhost, an IP address or a "
                     "server_names entry",
                     false);
    return;
  }
  rp_reg_path_parse(c->target.path, c->target.path_len, &c->reg);
  if (h->method_id != HTTP_GET && h->method_id != HTTP_HEAD) {
    rp__conn_respond_with(c, 405, "a mirror only reads (GET, HEAD)", "Allow: GET, HEAD\r\n", false);
    return;
  }
  rp_reg_canonical(c->reg.ns[0] ? c->reg.ns : srv->cfg->mirror_default, 0, registry,
                   sizeof(registry));
  if (registry[0] == '\0' || !set_origin(c, rp_reg_upstream_host(registry))) {
    rp__conn_respond(c, 400, "no usable registry (?ns= or mirror_default)", false);
    return;
  }
  snprintf(c->log.host, sizeof(c->log.host), "%s", registry);
  c->mirror = 1;
  c->up_plain = 0;
  if (c->reg.ns[0] != '\0')
    snprintf(c->mirror_ns, sizeof(c->mirror_ns), "%s", c->reg.ns);
  if (!rp_mirror_serves(srv->cfg, registry)) {
    /* SPEC §3: only registries regproxy trusts, and no request to any other. */
    snprintf(c->log.reason, sizeof(c->log.reason), "registry not served by this mirror");
    answer(c, 404, "application/json",
           "{\"errors\":[{\"code\":\"NAME_UNKNOWN\",\"message\":\"registry not served by "
           "this mirror (not in mitm or mirror_default)\"}]}");
    return;
  }
  if (c->reg.kind == RP_REG_BASE) {
    /* SPEC §3: the mirror answers /v2/ itself (clients then pull without a token). */
    c->log.cache = "-";
    answer(c, 200, "application/json", "{}");
    return;
  }
  free(c->up_path);
  c->up_path = strip_ns(c->target.path, c->target.path_len);
  m = mirror_of(srv);
  op = calloc(1, sizeof(*op));
  if (m == NULL || op == NULL || c->up_path == NULL) {
    free(op);
    rp__conn_respond(c, 502, "out of memory", true);
    return;
  }
  op->c = c;
  snprintf(op->registry, sizeof(op->registry), "%s", registry);
  if (c->reg.name[0] != '\0')
    snprintf(op->scope, sizeof(op->scope), "repository:%s:pull", c->reg.name);
  c->mop = op;
  /* The state stays HEAD, so nothing after the head is parsed until the relay
   * takes the request (go): a body that comes along waits for the relay's
   * queue (in PASS it was queued before the queue existed, a NULL dereference). */
  /* A token still fresh from an earlier request: no round trip. */
  cached = m->auth != NULL ? rp_auth_cached(m->auth, registry, op->scope, 0) : NULL;
  if (cached != NULL) {
    go(c, cached);
    free(cached);
    return;
  }
  r = reg_slot(m, registry);
  if (strcmp(r->key, registry) == 0 && r->state != REG_UNKNOWN &&
      uv_now(srv->loop) - r->when_ms < MIRROR_FRESH_MS) {
    with_challenge(c);
    return;
  }
  ping(c);
}

void rp__mirror_unauthorized(struct rp_conn *c) {
  struct rp__mirror *m = c->srv->mirror;
  char registry[300], scope[300];

  if (m == NULL || m->auth == NULL || c->reg.name[0] == '\0')
    return;
  rp__mitm_registry(c, registry, sizeof(registry));
  snprintf(scope, sizeof(scope), "repository:%s:pull", c->reg.name);
  rp_auth_invalidate(m->auth, registry, scope, 0);
}

void rp__mirror_request_end(struct rp_conn *c) {
  op_free(c);
  free(c->mirror_authz);
  c->mirror_authz = NULL;
  free(c->up_path);
  c->up_path = NULL;
  c->mirror = 0;
  c->mirror_ns[0] = '\0';
}

void rp__mirror_shutdown(struct rp_server *srv) {
  if (srv->mirror == NULL)
    return;
  for (size_t i = 0; i < MIRROR_REGS; i++)
    rp_auth_challenge_clear(&srv->mirror->reg[i].ch);
  rp_auth_destroy(srv->mirror->auth);
  free(srv->mirror);
  srv->mirror = NULL;
}
