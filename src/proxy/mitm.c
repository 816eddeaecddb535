/* MITM (SPEC §2 route=mitm): CONNECT to a host in `mitm` is answered at once,
 * the client's TLS is terminated with a leaf for that host, and each request
 * inside is relayed through the upstream engine with method, path, query and
 * end-to-end headers intact, bodies streamed both ways with backpressure.
 * The registry cache plugs in between the request head and the relay. */
#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "internal.h"
#include "regproxy/error.h"
#include "regproxy/log.h"
#include "regproxy/metrics.h"
#include "regproxy/tls.h"
#include "regproxy/registry.h"
#include "regproxy/rules.h"
#include "regproxy/upstream.h"

static const char established[] = "HTTP/1.1 200 Connection established\r\n\r\n";

/* ---- TLS set-up ---- */

/* The CONNECT target is the connection's identity: a ClientHello that names
 * another host fails the handshake. */
static SSL_CTX *select_ctx(void *arg, const char *host, const char *sni) {
  struct rp_conn *c = arg;
  if (sni != NULL && strcasecmp(sni, host) != 0) {
    int n = snprintf(c->log.reason, sizeof(c->log.reason), "SNI %.80s does not match CONNECT %.80s",
                     sni, host);
    (void)n;
    return NULL;
  }
  return rp_leafcache_ctx(c->srv->leaves, host);
}

static void on_handshake(struct rp_stream *s, int status, const char *reason) {
  struct rp_conn *c = s->data;
  struct rp_logline l;

  if (c->closing)
    return;
  if (status != 0) {
    rp_logline_begin(&l, RP_LOG_WARN, "tls_handshake_failed");
    rp_logline_u64(&l, "conn", c->id);
    rp_logline_str(&l, "client", c->client_addr);
    rp_logline_str(&l, "host", c->mitm_host);
    rp_logline_str(&l, "reason", c->log.reason[0] ? c->log.reason : reason);
    rp_logline_end(&l);
    rp__conn_close(c);
    return;
  }
  rp__conn_go_state(c, RP_CONN_HEAD);
  rp__conn_set_timer(c, RP_TM_IDLE, c->srv->cfg->idle_timeout_ms);
  rp__conn_resume_input(c);
}

void rp__mitm_connect(struct rp_conn *c) {
  struct rp_server *srv = c->srv;
  uv_buf_t buf = uv_buf_init((char *)established, sizeof(established) - 1);

  c->log.status = 200;
  if (srv->leaves == NULL) {
    rp__conn_respond(c, 502, "MITM is not available (no CA)", true);
    return;
  }
  if (c->in != NULL && c->in_off < c->in_len) {
    /* Clients wait for the 200 before their ClientHello. */
    rp__conn_respond(c, 400, "data sent before the tunnel was established", true);
    return;
  }
  if (rp__conn_write(c, c->client, &buf, 1, NULL, NULL) != 0) {
    rp__conn_close(c);
    return;
  }
  /* The CONNECT is one log line; every request inside gets its own. */
  rp__conn_log(c);
  c->req_active = 0;
  rp__bref_put(c->in);
  c->in = NULL;
  rp__mitm_start_tls(c, c->target.host, c->target.port, NULL, 0);
}

void rp__mitm_start_tls(struct rp_conn *c, const char *host, uint16_t port, char *preread,
                        size_t preread_len) {
  struct rp_server *srv = c->srv;
  struct rp_stream *tls;

  c->mitm = 1;
  rp_http_parser_reset(c->parser);
  snprintf(c->mitm_host, sizeof(c->mitm_host), "%s", host);
  c->mitm_port = port;
  rp__conn_go_state(c, RP_CONN_TLS);
  rp__conn_stop_client(c);
  tls = rp_tls_stream_server_preread(c->client, rp_leafcache_base_ctx(srv->leaves), c->mitm_host,
                                     select_ctx, c, on_handshake, preread, preread_len);
  if (tls == NULL) {
    rp_buf_free(preread);
    rp__conn_close(c);
    return;
  }
  rp__conn_set_client(c, tls);
  rp__conn_set_timer(c, RP_TM_HEADER, srv->cfg->header_timeout_ms);
}

/* ---- the relay ---- */

int rp__mitm_pass_head(struct rp_fetch *f, void *data, int status, const char *reason,
                       const struct rp_http_header *headers, size_t n) {
  struct rp_conn *c = data;
  struct rp_http_head up = {.headers = (struct rp_http_header *)headers, .nheaders = n};
  struct rp_http_header *h;
  size_t nh = 0;
  int rc;

  (void)f;
  (void)reason;
  if ((status >= 500 || status == 429) && rp__regcache_can_stale(c)) {
    c->stale_pending = 1;
    return -1; /* the answer comes from memory once the fetch is gone */
  }
  /* The end-to-end headers go to the client as they came; the length and
   * the framing are the exchange's. */
  h = malloc((n + 1) * sizeof(*h));
  if (h == NULL)
    return -1;
  for (size_t i = 0; i < n; i++)
    if (!rp_http_is_hop_by_hop(&up, &headers[i]) &&
        !rp_http_token_eq(headers[i].name, headers[i].name_len, "content-length"))
      h[nh++] = headers[i];
  if (c->mirror && status == 401)
    rp__mirror_unauthorized(c);
  c->up_head_sent = 1;
  rp__regcache_observe(c, status, headers, n);
  rc = rp_exchange_start(rp__conn_exchange(c), status, h, nh,
                         rp_http_header_size(headers, n, "content-length"));
  free(h);
  return rc == 0 ? 0 : -1;
}

static void block_written(void *arg, int status) {
  (void)status;
  rp__bref_put(arg);
}

int rp__mitm_pass_body(struct rp_fetch *f, void *data, const char *p, size_t n) {
  struct rp_conn *c = data;
  struct rp_sink *body = rp_exchange_body(rp__conn_exchange(c));

  (void)f;
  if (rp__conn_queued(c, c->client) > RP_QUEUE_HIGH) {
    c->fetch_paused = 1;
    return RP_FETCH_PAUSE; /* offered again after rp_fetch_resume */
  }
  if (c->grab != NULL)
    rp__regcache_relay_body(c, p, n);
  /* libcurl reuses its buffer after we return, so the bytes are copied, into
   * pool blocks rather than fresh allocations of varying size (which made
   * glibc's heap grow with every body relayed). */
  while (n > 0) {
    char *block = rp_buf_alloc();
    size_t take = n < RP_BUF_SIZE ? n : RP_BUF_SIZE;
    struct rp_bref *ref;
    uv_buf_t buf;

    if (block == NULL)
      return -1;
    memcpy(block, p, take);
    ref = rp__bref_new(block);
    if (ref == NULL)
      return -1;
    buf = uv_buf_init(block, (unsigned)take);
    if (body->write(body, &buf, 1, block_written, ref) != 0) {
      rp__bref_put(ref);
      return -1;
    }
    rp_metrics.bytes[1][RP_SRC_BYTES_UPSTREAM] += take;
    p += take;
    n -= take;
  }
  rp__conn_touch(c);
  return 0;
}

static ssize_t on_fetch_read(struct rp_fetch *f, void *data, char *buf, size_t n) {
  struct rp_conn *c = data;
  size_t done = 0;

  (void)f;
  while (done < n && c->up_body != NULL) {
    struct rp_body_chunk *k = c->up_body;
    size_t take = k->len < n - done ? k->len : n - done;
    memcpy(buf + done, k->p, take);
    done += take;
    k->p += take;
    k->len -= take;
    c->up_body_bytes -= take;
    if (k->len == 0) {
      c->up_body = k->next;
      if (c->up_body == NULL)
        c->up_body_tail = &c->up_body;
      rp__bref_put(k->ref);
      free(k);
    }
  }
  if (done > 0) {
    if (c->up_body_bytes <= RP_QUEUE_LOW)
      rp__conn_resume_input(c);
    return (ssize_t)done;
  }
  if (c->req_done)
    return 0; /* end of the request body */
  c->up_body_waiting = 1;
  return RP_FETCH_PAUSE;
}

void rp__mitm_pass_done(struct rp_fetch *f, void *data, int status, const char *reason) {
  struct rp_conn *c = data;

  (void)f;
  c->fetch = NULL;
  if (c->closing)
    return;
  rp__regcache_relay_done(c, status);
  if (c->stale_pending) {
    c->stale_pending = 0;
    if (!rp__regcache_stale(c))
      rp__conn_respond(c, 502, "upstream failing and nothing remembered", true);
    return;
  }
  if (status != 0) {
    rp_metrics_upstream_error("upstream");
    if (c->log.reason[0] == '\0')
      snprintf(c->log.reason, sizeof(c->log.reason), "%s", reason);
    /* Unreachable (refused, reset, DNS, timeout) may be answered from memory;
     * a certificate that does not verify may not. */
    if (c->up_head_sent) {
      rp__conn_close(c); /* a cut body, never a wrong one */
    } else if (status == RP_EUPSTREAM_HANDSHAKE && c->mitm) {
      /* The origin does not speak TLS (or refused the handshake): the client
       * sees its connection fail, as it would have through a tunnel, rather
       * than an answer. (dockerd then falls back to http:// for an insecure
       * registry; a 502 inside TLS made it give up.) */
      c->log.status = 502;
      rp__conn_close(c);
    } else if (status == RP_EUPSTREAM_TLS || status == RP_EUPSTREAM_HANDSHAKE ||
               !rp__regcache_stale(c))
      rp__conn_respond(c, 502, reason, true);
    return;
  }
  rp_exchange_finish(rp__conn_exchange(c));
}

static const struct rp_fetch_callbacks fetch_callbacks = {
    .on_head = rp__mitm_pass_head,
    .on_body = rp__mitm_pass_body,
    .read_body = on_fetch_read,
    .on_done = rp__mitm_pass_done,
};

static const struct rp_fetch_callbacks fetch_callbacks_nobody = {
    .on_head = rp__mitm_pass_head,
    .on_body = rp__mitm_pass_body,
    .read_body = NULL,
    .on_done = rp__mitm_pass_done,
};

void rp__upreq_free(struct rp__upreq *u) {
  free(u->headers);
  free(u->url);
  u->headers = NULL;
  u->url = NULL;
}

int rp__upreq_build(struct rp_conn *c, const struct rp_http_head *h, const char *method,
                    bool drop_range, const char *path, struct rp__upreq *u) {
  struct rp_server *srv = c->srv;
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
    if (c->mirror && rp_http_token_eq(hd->name, hd->name_len, "authorization"))
      continue; /* a mirror fetches with its own credential (mirror.c) */
    if (rp_http_is_hop_by_hop(h, hd) || rp_http_token_eq(hd->name, hd->name_len, "host") ||
        rp_http_token_eq(hd->name, hd->name_len, "expect") ||
        (drop_range && (rp_http_token_eq(hd->name, hd->name_len, "range") ||
                        rp_http_token_eq(hd->name, hd->name_len, "if-range"))))
      continue;
    u->headers[nh++] = *hd;
  }
  if (c->mirror && c->mirror_authz != NULL) {
    u->headers[nh].name = "Authorization";
    u->headers[nh].name_len = 13;
    u->headers[nh].value = c->mirror_authz;
    u->headers[nh].value_len = strlen(c->mirror_authz);
    nh++;
  }
  if (c->up_plain) {
    /* Forwarded plain HTTP carries Via, as in forward.c (inside MITM the
     * client talks to the origin, as far as it knows). */
    static const char via[] = "Via", via_value[] = "1.1 regproxy";
    u->headers[nh].name = via;
    u->headers[nh].name_len = sizeof(via) - 1;
    u->headers[nh].value = via_value;
    u->headers[nh].value_len = sizeof(via_value) - 1;
    nh++;
  }
  if (path == NULL)
    path = c->up_path; /* NULL too: the client's own */
  rp__mitm_origin(c, origin, sizeof(origin));
  ulen = strlen(origin) + (path != NULL ? strlen(path) : c->target.path_len) + 16;
  u->url = malloc(ulen);
  if (u->url == NULL) {
    rp__upreq_free(u);
    return UV_ENOMEM;
  }
  if (path != NULL)
    snprintf(u->url, ulen, "%s%s", origin, path);
  else
    snprintf(u->url, ulen, "%s%s%.*s", origin, c->target.path_needs_slash ? "/" : "",
             (int)c->target.path_len, c->target.path);
  req->method = method;
  req->url = u->url;
  req->headers = u->headers;
  req->nheaders = nh;
  req->body_len = h->chunked ? -1 : (h->content_length > 0 ? h->content_length : 0);
  if (srv->parent.host[0] != '\0') {
    req->proxy = srv->parent.url;
    req->proxy_userinfo = srv->cfg->parent_proxy_userinfo;
  } else if (c->dst_ip[0] != '\0') {
    /* Transparent: the original destination, verified for the SNI name. */
    snprintf(req->connect_ip, sizeof(req->connect_ip), "%s", c->dst_ip);
    req->connect_port = c->dst_port;
  }
  return 0;
}

void rp__mitm_origin(const struct rp_conn *c, char *buf, size_t bufsz) {
  struct rp_target t = {0};
  char hostport[300];
  snprintf(t.host, sizeof(t.host), "%s", c->mitm_host);
  t.host_is_ip6 = strchr(c->mitm_host, ':') != NULL;
  t.port = c->mitm_port;
  rp_target_hostport(&t, c->mitm_port != (c->up_plain ? 80 : 443), hostport, sizeof(hostport));
  snprintf(buf, bufsz, "%s://%s", c->up_plain ? "http" : "https", hostport);
}

void rp__mitm_extra_headers(const struct rp_conn *c, struct rp_sbuf *b) {
  if (c->up_plain)
    rp_sbuf_adds(b, "Via: 1.1 regproxy\r\n");
  if (c->mirror && c->mirror_ns[0] != '\0')
    rp_sbuf_addf(b, "OCI-Namespace: %s\r\n", c->mirror_ns);
}

void rp__mitm_registry(const struct rp_conn *c, char *buf, size_t bufsz) {
  /* SPEC §3: plain HTTP and HTTPS never share tag memory or repository
   * knowledge; blob bytes are shared by digest anyway. */
  size_t n = 0;
  if (c->up_plain && bufsz > 7) {
    memcpy(buf, "http://", 7);
    n = 7;
  }
  rp_reg_canonical(c->mitm_host, c->mitm_port, buf + n, bufsz - n);
  if (buf[n] == '\0')
    buf[0] = '\0';
  /* Transparent plain HTTP: Host alone proves nothing, so the original
   * destination is part of the key (SPEC §3). */
  if (c->up_plain && c->dst_ip[0] != '\0' && buf[0] != '\0')
    snprintf(buf + strlen(buf), bufsz - strlen(buf), "@%s:%u", c->dst_ip, c->dst_port);
}

void rp__mitm_request(struct rp_conn *c, const struct rp_http_head *h) {
  struct rp_target host;

  c->log.route = "mitm";
  c->log.cache = "pass";
  c->up_plain = 0;
  snprintf(c->log.host, sizeof(c->log.host), "%s", c->mitm_host);
  c->log.port = c->mitm_port;
  /* SPEC §2: the CONNECT target is the connection's identity. A Host
   * without a port names https' 443. */
  if (!rp__conn_request_host(c, h, 443, &host))
    return;
  if (strcmp(host.host, c->mitm_host) != 0 || host.port != c->mitm_port) {
    rp__conn_respond(c, 421, "Host does not match the CONNECT target", false);
    return;
  }
  if (c->target.form != RP_TARGET_ORIGIN) {
    rp__conn_respond(c, 400, "requests inside a tunnel use origin-form targets", true);
    return;
  }
  rp_reg_path_parse(c->target.path, c->target.path_len, &c->reg);
  rp__mitm_relay(c, h);
}

bool rp__mitm_plain_request(struct rp_conn *c, const struct rp_http_head *h) {
  struct rp_server *srv = c->srv;

  /* route.c found a plain-HTTP registry (route=http); without the
   * upstream engine (stopping) it is forwarded like any other host. */
  if (srv->up == NULL)
    return false;
  rp_reg_path_parse(c->target.path, c->target.path_len, &c->reg);
  if (c->reg.kind != RP_REG_BASE && c->reg.kind != RP_REG_MANIFEST && c->reg.kind != RP_REG_BLOB)
    return false; /* uploads, tag lists…: the byte relay */
  c->log.cache = "pass";
  c->up_plain = 1;
  snprintf(c->mitm_host, sizeof(c->mitm_host), "%s", c->target.host);
  c->mitm_port = c->target.port;
  rp__mitm_relay(c, h);
  return true;
}

/* Free the request body queued for libcurl and not taken. */
static void body_drop(struct rp_conn *c) {
  while (c->up_body != NULL) {
    struct rp_body_chunk *k = c->up_body;
    c->up_body = k->next;
    rp__bref_put(k->ref);
    free(k);
  }
  c->up_body_tail = &c->up_body;
  c->up_body_bytes = 0;
}

void rp__mitm_relay(struct rp_conn *c, const struct rp_http_head *h) {
  c->req_is_head = h->method_id == HTTP_HEAD;
  c->grab_manifest = 0;
  c->up_head_sent = 0;
  c->fetch_paused = 0;
  c->up_body_waiting = 0;
  /* A body of the previous request that its answer left unread (the cache
   * answered it) goes now: dropping the pointers leaked it and its block. */
  body_drop(c);
  if (rp__regcache_request(c, h))
    return; /* the registry cache answers it */
  rp__mitm_pass_start(c);
}

void rp__mitm_pass_start(struct rp_conn *c) {
  const struct rp_http_head *h = c->head;
  struct rp__upreq u;

  if (rp__upreq_build(c, h, c->log.method, false, NULL, &u) != 0) {
    rp__conn_respond(c, 502, "out of memory", true);
    return;
  }
  rp__conn_go_state(c, RP_CONN_PASS);
  c->fetch = rp_fetch_start(c->srv->up, &u.req,
                            u.req.body_len != 0 ? &fetch_callbacks : &fetch_callbacks_nobody, c);
  rp__upreq_free(&u);
  if (c->fetch == NULL)
    rp__conn_respond(c, 502, "out of memory", true);
}

bool rp__mitm_body_full(const struct rp_conn *c) {
  return c->up_body_bytes >= RP_QUEUE_HIGH;
}

int rp__mitm_body(struct rp_conn *c, const char *at, size_t len) {
  struct rp_body_chunk *k = malloc(sizeof(*k));
  if (k == NULL)
    return -1;
  k->next = NULL;
  k->ref = c->in;
  c->in->refs++;
  k->p = at;
  k->len = len;
  *c->up_body_tail = k;
  c->up_body_tail = &k->next;
  c->up_body_bytes += len;
  if (c->up_body_waiting && c->fetch != NULL) {
    c->up_body_waiting = 0;
    rp_fetch_resume_upload(c->fetch);
  }
  return 0;
}

void rp__mitm_request_done(struct rp_conn *c) {
  if (c->up_body_waiting && c->fetch != NULL) {
    c->up_body_waiting = 0;
    rp_fetch_resume_upload(c->fetch);
  }
}

void rp__mitm_client_drained(struct rp_conn *c) {
  if (c->fetch_paused && c->fetch != NULL && rp__conn_queued(c, c->client) <= RP_QUEUE_LOW) {
    c->fetch_paused = 0;
    rp_fetch_resume(c->fetch);
  }
}

void rp__mitm_destroy(struct rp_conn *c) {
  if (c->fetch != NULL)
    rp_fetch_cancel(c->fetch);
  c->fetch = NULL;
  body_drop(c);
}
