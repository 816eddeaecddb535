/* The registry service: the object, the ways a request comes in
 * (rp_registry_serve), the life of one request from its exchange to its
 * `end`, and the upstream request made of it. */
#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "regproxy/http.h"
#include "regproxy/log.h"

/* ---- the service ---- */

static char *dup_or_null(const char *s) {
  return s != NULL && s[0] != '\0' ? strdup(s) : NULL;
}

int rp_registry_configure(struct rp_registry *reg, const struct rp_registry_opts *o) {
  char *parent_url = dup_or_null(o->parent_url), *parent_userinfo = dup_or_null(o->parent_userinfo),
       *registry_auth = dup_or_null(o->registry_auth),
       *mirror_default = dup_or_null(o->mirror_default);
  int rc = 0;

  /* Pointers and numbers are taken whatever happens (the caller's old mitm
   * list may be gone next); the strings only when every copy was made. */
  reg->loop = o->loop;
  reg->up = o->up;
  reg->cache = o->cache;
  reg->access_check = o->access_check;
  reg->access_ttl_ms = o->access_ttl_ms;
  reg->tag_ttl_ms = o->tag_ttl_ms;
  reg->mitm = o->mitm;
  if (rp__upmirrors_set(reg, o->upstream_mirrors, o->n_upstream_mirrors) != 0)
    rc = UV_ENOMEM;
  if ((o->parent_url != NULL && o->parent_url[0] && parent_url == NULL) ||
      (o->parent_userinfo != NULL && o->parent_userinfo[0] && parent_userinfo == NULL) ||
      (o->registry_auth != NULL && o->registry_auth[0] && registry_auth == NULL) ||
      (o->mirror_default != NULL && o->mirror_default[0] && mirror_default == NULL)) {
    free(parent_url);
    free(parent_userinfo);
    free(registry_auth);
    free(mirror_default);
    return UV_ENOMEM;
  }
  free(reg->parent_url);
  free(reg->parent_userinfo);
  free(reg->registry_auth);
  free(reg->mirror_default);
  reg->parent_url = parent_url;
  reg->parent_userinfo = parent_userinfo;
  reg->registry_auth = registry_auth;
  reg->mirror_default = mirror_default;
  return rc;
}

int rp_registry_create(const struct rp_registry_opts *o, struct rp_registry **out) {
  struct rp_registry *reg = calloc(1, sizeof(*reg));
  int rc;

  *out = NULL;
  if (reg == NULL)
    return UV_ENOMEM;
  rc = rp_registry_configure(reg, o);
  if (rc != 0) {
    free(reg);
    return rc;
  }
  *out = reg;
  return 0;
}

void rp_registry_destroy(struct rp_registry *reg) {
  if (reg == NULL)
    return;
  rp__heads_shutdown(reg);
  rp__jobs_shutdown(reg);
  rp__mirror_shutdown(reg);
  rp__public_shutdown(reg);
  rp__memo_free(reg);
  rp__stats_free(reg);
  rp__upmirrors_free(reg);
  free(reg->parent_url);
  free(reg->parent_userinfo);
  free(reg->registry_auth);
  free(reg->mirror_default);
  free(reg);
}

void rp_registry_counters(const struct rp_registry *reg, struct rp_registry_counters *out) {
  if (reg == NULL)
    memset(out, 0, sizeof(*out));
  else
    *out = reg->counters;
}

/* ---- one request ---- */

static void rq_end(void *data, const struct rp_exchange_summary *s) {
  struct rp__rq *rq = data;

  rq->x->handler.end = NULL;
  rp__stats_note(rq, s);
  rp__serve_detach(rq);
  rp__relay_detach(rq);
  rp__mirror_detach(rq);
  free(rq->up_path);
  free(rq->authz);
  free(rq);
}

static void rq_drained(void *data) {
  rp__relay_drained(data);
}

static void rq_body_ready(void *data) {
  rp__relay_body_ready(data);
}

static struct rp__rq *rq_new(struct rp_registry *reg, enum rp_registry_way way,
                             struct rp_exchange *x) {
  struct rp__rq *rq = calloc(1, sizeof(*rq));
  if (rq == NULL)
    return NULL;
  rq->reg = reg;
  rq->x = x;
  rq->head = x->head;
  rq->way = way;
  rq->label = "pass";
  rq->is_head = x->head->method_id == HTTP_HEAD;
  snprintf(rq->method, sizeof(rq->method), "%.*s", (int)x->head->method_len, x->head->method);
  rp_reg_path_parse(x->path, x->path_len, &rq->path);
  return rq;
}

static void rq_take(struct rp__rq *rq) {
  struct rp_exchange *x = rq->x;
  x->handler.drained = rq_drained;
  x->handler.body_ready = rq_body_ready;
  x->handler.end = rq_end;
  x->handler.data = rq;
  rp_exchange_note(x, rq->label, NULL, NULL);
}

/* The registry's identity (contract §3): plain HTTP and HTTPS never share tag
 * memory or repository knowledge; blob bytes are shared by digest anyway. */
static void rq_identity(struct rp__rq *rq) {
  size_t n = 0;
  if (rq->way == RP_REGISTRY_PLAIN) {
    memcpy(rq->registry, "http://", 7);
    n = 7;
  }
  rp_reg_canonical(rq->host, rq->port, rq->registry + n, sizeof(rq->registry) - n);
  if (rq->registry[n] == '\0')
    rq->registry[0] = '\0';
  /* Transparent plain HTTP: Host alone proves nothing, so the original
   * destination is part of the key (contract §3). */
  if (rq->way == RP_REGISTRY_PLAIN && rq->connect_ip[0] != '\0' && rq->registry[0] != '\0') {
    n = strlen(rq->registry);
    snprintf(rq->registry + n, sizeof(rq->registry) - n, "@%s:%u", rq->connect_ip,
             rq->connect_port);
  }
}

bool rp_registry_serve(struct rp_registry *reg, const struct rp_registry_target *t,
                       struct rp_exchange *x) {
  struct rp__rq *rq;

  if (t->way == RP_REGISTRY_PLAIN) {
    struct rp_reg_path p;
    /* Without the upstream engine (stopping) the front forwards it. */
    if (reg->up == NULL)
      return false;
    rp_reg_path_parse(x->path, x->path_len, &p);
    if (p.kind != RP_REG_BASE && p.kind != RP_REG_MANIFEST && p.kind != RP_REG_BLOB)
      return false; /* uploads, tag lists…: the front's byte relay */
  }
  rq = rq_new(reg, t->way, x);
  if (rq == NULL) {
    rp_exchange_error(x, 502, "out of memory", true);
    return true;
  }
  rq_take(rq);
  if (t->way == RP_REGISTRY_MIRROR) {
    rp__mirror_serve(rq);
    return true;
  }
  snprintf(rq->host, sizeof(rq->host), "%s", t->host);
  rq->port = t->port;
  if (t->connect_ip != NULL) { /* transparent mode (issue 9) */
    snprintf(rq->connect_ip, sizeof(rq->connect_ip), "%s", t->connect_ip);
    rq->connect_port = t->connect_port;
  }
  rq_identity(rq);
  rp__serve(rq);
  return true;
}

/* ---- the answer ---- */

/* The answer's fields, with those the way in adds: contract §3 "Mirror
 * mode", the namespace asked for is echoed. *all is h itself or malloc'd. */
static int rq_fields(const struct rp__rq *rq, const struct rp_http_header *h, size_t n,
                     struct rp_http_header **all, size_t *nall) {
  *all = (struct rp_http_header *)h;
  *nall = n;
  if (rq->way != RP_REGISTRY_MIRROR || rq->ns[0] == '\0')
    return 0;
  *all = malloc((n + 1) * sizeof(**all));
  if (*all == NULL)
    return UV_ENOMEM;
  if (n > 0)
    memcpy(*all, h, n * sizeof(**all));
  rp_http_header_init(&(*all)[n], "OCI-Namespace", rq->ns);
  *nall = n + 1;
  return 0;
}

int rp__rq_start(struct rp__rq *rq, int status, const struct rp_http_header *h, size_t n,
                 int64_t length) {
  struct rp_http_header *all;
  size_t nall;
  int rc;

  rq->answered = true;
  if (rq_fields(rq, h, n, &all, &nall) != 0)
    return UV_ENOMEM;
  rc = rp_exchange_start(rq->x, status, all, nall, length);
  if (all != h)
    free(all);
  return rc;
}

void rp__rq_reply(struct rp__rq *rq, int status, const struct rp_http_header *h, size_t n,
                  const char *body, size_t len) {
  struct rp_http_header *all;
  char *copy = NULL;
  size_t nall;

  rq->answered = true;
  if (len > 0 && (copy = malloc(len)) != NULL)
    memcpy(copy, body, len);
  if ((len > 0 && copy == NULL) || rq_fields(rq, h, n, &all, &nall) != 0) {
    free(copy);
    rp_exchange_abort(rq->x, "out of memory");
    return;
  }
  rp_exchange_answer(rq->x, status, all, nall, copy, len);
  if (all != h)
    free(all);
}

void rp__rq_label(struct rp__rq *rq, const char *cache) {
  rq->label = cache;
  rp_exchange_note(rq->x, cache, NULL, NULL);
}

void rp__rq_reason(struct rp__rq *rq, const char *reason) {
  rp_exchange_note(rq->x, NULL, reason, NULL);
}

/* ---- the upstream request ---- */

void rp__fetch_req_defaults(const struct rp_registry *reg, struct rp_fetch_req *req) {
  if (reg->parent_url != NULL) {
    req->proxy = reg->parent_url;
    req->proxy_userinfo = reg->parent_userinfo;
  }
}

void rp__rq_origin(const struct rp__rq *rq, char *buf, size_t bufsz) {
  struct rp_target t = {0};
  bool plain = rq->way == RP_REGISTRY_PLAIN;
  char hostport[300];

  snprintf(t.host, sizeof(t.host), "%s", rq->host);
  t.host_is_ip6 = strchr(rq->host, ':') != NULL;
  t.port = rq->port;
  rp_target_hostport(&t, rq->port != (plain ? 80 : 443), hostport, sizeof(hostport));
  snprintf(buf, bufsz, "%s://%s", plain ? "http" : "https", hostport);
}

void rp__upreq_free(struct rp__upreq *u) {
  free(u->headers);
  free(u->url);
  u->headers = NULL;
  u->url = NULL;
}

int rp__upreq_build(struct rp__rq *rq, const char *method, bool drop_range, const char *path,
                    struct rp__upreq *u) {
  const struct rp_http_head *h = rq->head;
  bool mirror = rq->way == RP_REGISTRY_MIRROR;
  struct rp_fetch_req *req = &u->req;
  size_t nh = 0, ulen;
  char origin[320];

  memset(u, 0, sizeof(*u));
  /* End-to-end headers go up as they came; Host is the URL's. */
  u->headers = malloc((h->nheaders + 3) * sizeof(*u->headers));
  if (u->headers == NULL)
    return UV_ENOMEM;
  for (size_t i = 0; i < h->nheaders; i++) {
    const struct rp_http_header *hd = &h->headers[i];
    if (mirror && rp_http_token_eq(hd->name, hd->name_len, "authorization"))
      continue; /* a mirror fetches with its own credential (mirror.c) */
    if (rp_http_is_hop_by_hop(h, hd) || rp_http_token_eq(hd->name, hd->name_len, "host") ||
        rp_http_token_eq(hd->name, hd->name_len, "expect") ||
        (drop_range && (rp_http_token_eq(hd->name, hd->name_len, "range") ||
                        rp_http_token_eq(hd->name, hd->name_len, "if-range"))))
      continue;
    u->headers[nh++] = *hd;
  }
  if (mirror && rq->authz != NULL)
    rp_http_header_init(&u->headers[nh++], "Authorization", rq->authz);
  if (rq->way == RP_REGISTRY_PLAIN)
    /* Forwarded plain HTTP carries Via, as the front's forwarding does
     * (inside MITM the client talks to the origin, as far as it knows). */
    rp_http_header_init(&u->headers[nh++], "Via", "1.1 regproxy");
  if (path == NULL)
    path = rq->up_path; /* NULL too: the client's own */
  rp__rq_origin(rq, origin, sizeof(origin));
  ulen = strlen(origin) + (path != NULL ? strlen(path) : rq->x->path_len) + 16;
  u->url = malloc(ulen);
  if (u->url == NULL) {
    rp__upreq_free(u);
    return UV_ENOMEM;
  }
  if (path != NULL)
    snprintf(u->url, ulen, "%s%s", origin, path);
  else
    snprintf(u->url, ulen, "%s%.*s", origin, (int)rq->x->path_len, rq->x->path);
  req->method = method;
  req->url = u->url;
  req->headers = u->headers;
  req->nheaders = nh;
  req->body_len = h->chunked ? -1 : (h->content_length > 0 ? h->content_length : 0);
  rp__fetch_req_defaults(rq->reg, req);
  if (req->proxy == NULL && rq->connect_ip[0] != '\0') {
    /* Transparent: the original destination, verified for the name. */
    snprintf(req->connect_ip, sizeof(req->connect_ip), "%s", rq->connect_ip);
    req->connect_port = rq->connect_port;
  }
  return 0;
}

void rp__header_copy(const struct rp_http_header *h, size_t n, const char *name, char *out,
                     size_t outsz) {
  out[0] = '\0';
  for (size_t i = 0; i < n; i++) {
    if (rp_http_token_eq(h[i].name, h[i].name_len, name)) {
      size_t k = h[i].value_len < outsz - 1 ? h[i].value_len : outsz - 1;
      memcpy(out, h[i].value, k);
      out[k] = '\0';
      return;
    }
  }
}
