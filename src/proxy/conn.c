/* One client connection: reads request heads, routes each request, and
 * owns the streams, timer and parser. Its state changes only through
 * rp__conn_go_state(). */
#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "regproxy/admin.h"
#include "regproxy/error.h"
#include "regproxy/log.h"
#include "regproxy/metrics.h"
#include "regproxy/rules.h"

static const char *const state_names[RP_CONN_STATE_LAST] = {
    "head", "dial", "tunnel", "forward", "respond", "tls", "pass", "peek", "local", "closing"};

struct rp_bref *rp__bref_new(char *block) {
  struct rp_bref *r = malloc(sizeof(*r));
  if (r == NULL) {
    rp_buf_free(block);
    return NULL;
  }
  r->block = block;
  r->refs = 1;
  return r;
}

void rp__bref_put(struct rp_bref *r) {
  if (r == NULL || --r->refs > 0)
    return;
  rp_buf_free(r->block);
  free(r);
}

void rp__conn_go_state(struct rp_conn *c, enum rp_conn_state s) {
  if (c->state == s)
    return;
  if (rp_log_enabled(RP_LOG_DEBUG)) {
    struct rp_logline l;
    rp_logline_begin(&l, RP_LOG_DEBUG, "state");
    rp_logline_u64(&l, "conn", c->id);
    rp_logline_str(&l, "from", state_names[c->state]);
    rp_logline_str(&l, "to", state_names[s]);
    rp_logline_end(&l);
  }
  c->state = s;
}

/* ---- lifetime ---- */

static void conn_maybe_free(struct rp_conn *c) {
  struct rp_server *srv = c->srv;
  if (c->handles_open > 0)
    return;
  if (c->prev != NULL)
    c->prev->next = c->next;
  else
    srv->conns = c->next;
  if (c->next != NULL)
    c->next->prev = c->prev;
  srv->nconns--;
  rp_metrics.connections_active--;
  free(c);
  rp__server_conn_gone(srv);
}

static void on_client_close(struct rp_stream *s) {
  struct rp_conn *c = s->data;
  c->handles_open--;
  conn_maybe_free(c);
}

static void on_upstream_close(struct rp_stream *s) {
  struct rp_conn *c = s->data;
  c->handles_open--;
  conn_maybe_free(c);
}

static void on_timer_close(uv_handle_t *h) {
  struct rp_conn *c = h->data;
  c->handles_open--;
  conn_maybe_free(c);
}

void rp__conn_set_upstream(struct rp_conn *c, struct rp_stream *s) {
  c->upstream = s;
  s->data = c;
  c->handles_open++;
  if (c->transparent)
    rp_tcp_stream_sockname(s, &c->up_local); /* the loop check looks for it */
  c->up_eof = 0;
  c->up_paused = 0;
  c->up_shut = 0;
}

void rp__conn_close_upstream(struct rp_conn *c) {
  if (c->upstream == NULL)
    return;
  rp_stream_close(c->upstream, on_upstream_close);
  c->upstream = NULL;
  c->up_key[0] = '\0';
  rp_http_parser_destroy(c->uparser);
  c->uparser = NULL;
}

void rp__conn_close(struct rp_conn *c) {
  if (c->closing)
    return;
  c->closing = 1;
  if (c->state == RP_CONN_TUNNEL)
    rp_metrics.tunnels_active--;
  if (c->req_active)
    rp__conn_log(c);
  rp__conn_go_state(c, RP_CONN_CLOSING);
  rp_dial_cancel(c->dial);
  c->dial = NULL;
  rp__forward_destroy(c);
  rp__tunnel_destroy(c);
  rp__exchange_end(c);
  rp__proxyauth_detach(c);
  rp_http_parser_destroy(c->parser);
  c->parser = NULL;
  rp__bref_put(c->in);
  c->in = NULL;
  rp__conn_close_upstream(c);
  rp_stream_close(c->client, on_client_close);
  uv_close((uv_handle_t *)&c->timer, on_timer_close);
}

static void on_client_shutdown(struct rp_stream *s, int status) {
  rp__conn_close(s->data);
}

void rp__conn_close_after_flush(struct rp_conn *c) {
  if (c->closing)
    return;
  rp__conn_stop_client(c);
  rp__conn_go_state(c, RP_CONN_CLOSING);
  if (rp_stream_shutdown(c->client, on_client_shutdown) != 0)
    rp__conn_close(c);
}

/* ---- timers ---- */

void rp__conn_touch(struct rp_conn *c) {
  c->last_active = uv_now(c->srv->loop);
}

static void on_timer(uv_timer_t *t);

/* A local answer to a request whose head never completed (parse error,
 * header timeout): it is logged and closes the connection like any other. */
static void begin_headless_request(struct rp_conn *c) {
  if (c->req_active)
    return;
  memset(&c->log, 0, sizeof(c->log));
  c->log.start_ns = uv_hrtime();
  c->log.via = c->via;
  c->req_active = 1;
  c->req_done = 1;
}

void rp__conn_set_timer(struct rp_conn *c, enum rp_timer_mode mode, uint64_t ms) {
  c->tmode = mode;
  c->timer_ms = ms;
  c->pass_waited = 0;
  rp__conn_touch(c);
  if (mode == RP_TM_NONE || ms == 0)
    uv_timer_stop(&c->timer);
  else
    uv_timer_start(&c->timer, on_timer, ms, 0);
}

static void on_timer(uv_timer_t *t) {
  struct rp_conn *c = t->data;
  uint64_t idle = uv_now(c->srv->loop) - c->last_active;

  /* Activity only stamps last_active; the timer re-arms itself for the rest
   * of the period, so busy connections never touch the timer heap per read. */
  if (c->tmode != RP_TM_HEADER && idle < c->timer_ms) {
    uv_timer_start(&c->timer, on_timer, c->timer_ms - idle, 0);
    return;
  }
  switch (c->state) {
  case RP_CONN_HEAD:
    if (c->parser != NULL && rp_http_parser_in_head(c->parser)) {
      begin_headless_request(c);
      rp__conn_respond(c, 408, "request head not received in time", true);
    } else {
      rp__conn_close(c);
    }
    break;
  case RP_CONN_FORWARD:
    if (!c->up_head_sent) {
      rp_metrics_upstream_error("timeout");
      rp__conn_respond(c, 504, "upstream did not answer in time", true);
      rp__conn_close_upstream(c);
    } else {
      snprintf(c->log.reason, sizeof(c->log.reason), "idle timeout");
      rp__conn_close(c);
    }
    break;
  case RP_CONN_TUNNEL:
    snprintf(c->log.reason, sizeof(c->log.reason), "tunnel idle timeout");
    rp__conn_close(c);
    break;
  case RP_CONN_PEEK: rp__transparent_peek_timeout(c); break;
  case RP_CONN_PASS:
    /* Still waiting for the upstream's answer: the upstream engine gives a
     * silent upstream up after the same time and answers the client (502,
     * or from memory); closing now would leave it an empty reply. This timer
     * only backs the engine up. */
    if (!c->x_started && !c->pass_waited) {
      c->pass_waited = 1;
      uv_timer_start(&c->timer, on_timer, c->timer_ms, 0);
      break;
    }
    rp__conn_close(c);
    break;
  default: rp__conn_close(c); break;
  }
}

/* ---- writing ---- */

struct conn_write {
  struct rp_conn *c; /* not s->data: a TLS layer may have taken the stream over */
  struct rp_bref *ref;
  char *owned;
  size_t bytes;
  size_t *inflight;                    /* the counter the bytes were added to */
  void (*done)(void *arg, int status); /* the writer's own completion, or NULL */
  void *done_arg;
};

size_t rp__conn_queued(const struct rp_conn *c, const struct rp_stream *s) {
  size_t inflight = s == c->client ? c->client_inflight : c->up_inflight;
  size_t q = rp_stream_write_queue_size(s);
  return inflight > q ? inflight : q;
}

static void conn_drained(struct rp_conn *c, struct rp_stream *s) {
  switch (c->state) {
  case RP_CONN_TUNNEL: rp__tunnel_drained(c, s); break;
  case RP_CONN_FORWARD:
    if (s == c->client)
      rp__forward_client_drained(c);
    else if (rp__conn_queued(c, s) <= RP_QUEUE_LOW)
      rp__conn_resume_input(c);
    break;
  case RP_CONN_PASS:
  case RP_CONN_LOCAL:
    if (s == c->client)
      rp__exchange_client_drained(c);
    break;
  default: break;
  }
}

static void on_conn_write(struct rp_stream *s, int status, void *arg) {
  struct conn_write *w = arg;
  struct rp_conn *c = w->c;
  *w->inflight -= w->bytes;
  if (w->done != NULL)
    w->done(w->done_arg, status);
  rp__bref_put(w->ref);
  free(w->owned);
  free(w);
  if (c->closing)
    return;
  if (status != 0) {
    if (c->log.reason[0] == '\0')
      snprintf(c->log.reason, sizeof(c->log.reason), "write to %s failed: %s",
               s == c->client ? "client" : "upstream", uv_strerror(status));
    rp__conn_close(c);
    return;
  }
  /* Bytes leaving count as activity: a slow reader of a long response is
   * not idle. */
  rp__conn_touch(c);
  conn_drained(c, s);
}

static int conn_write(struct rp_conn *c, struct rp_stream *s, const uv_buf_t *bufs, unsigned n,
                      struct rp_bref *ref, char *owned, void (*done)(void *arg, int status),
                      void *done_arg) {
  struct conn_write *w = malloc(sizeof(*w));
  int rc;

  if (w == NULL) {
    free(owned);
    return UV_ENOMEM;
  }
  w->done = done;
  w->done_arg = done_arg;
  if (ref != NULL)
    ref->refs++;
  w->c = c;
  w->bytes = 0;
  for (unsigned i = 0; i < n; i++)
    w->bytes += bufs[i].len;
  if (s == c->client && c->req_active)
    c->log.bytes_out += w->bytes;
  w->ref = ref;
  w->owned = owned;
  rc = rp_stream_write(s, bufs, n, on_conn_write, w);
  if (rc == 0) {
    /* Bytes count as queued until their write completes: libuv reports an
     * empty queue once the kernel took them, but our buffers are only
     * released in the callback, a loop iteration later. */
    w->inflight = s == c->client ? &c->client_inflight : &c->up_inflight;
    *w->inflight += w->bytes;
  } else {
    rp__bref_put(ref);
    free(owned);
    free(w);
  }
  return rc;
}

int rp__conn_write(struct rp_conn *c, struct rp_stream *s, const uv_buf_t *bufs, unsigned n,
                   struct rp_bref *ref, char *owned) {
  return conn_write(c, s, bufs, n, ref, owned, NULL, NULL);
}

int rp__conn_write_notify(struct rp_conn *c, const uv_buf_t *bufs, unsigned n,
                          void (*done)(void *arg, int status), void *arg) {
  return conn_write(c, c->client, bufs, n, NULL, NULL, done, arg);
}

int rp__conn_write_client(struct rp_conn *c, const char *p, size_t n) {
  char *copy = malloc(n);
  uv_buf_t buf;
  if (copy == NULL)
    return UV_ENOMEM;
  memcpy(copy, p, n);
  buf = uv_buf_init(copy, (unsigned)n);
  return rp__conn_write(c, c->client, &buf, 1, NULL, copy);
}

void rp__conn_respond(struct rp_conn *c, int status, const char *reason, bool close_after) {
  rp__conn_respond_with(c, status, reason, "", close_after);
}

bool rp__conn_request_host(struct rp_conn *c, const struct rp_http_head *h, uint16_t default_port,
                           struct rp_target *host) {
  const char *why = NULL;
  char reason[96];

  if (rp_http_request_host(h, default_port, host, &why) == 0)
    return true;
  /* The head was read whole, so the connection can go on. */
  snprintf(reason, sizeof(reason), "bad Host header: %s", why);
  rp__conn_respond(c, 400, reason, false);
  return false;
}

void rp__conn_respond_with(struct rp_conn *c, int status, const char *reason, const char *extra,
                           bool close_after) {
  struct rp_sbuf b = {0};
  char *p;
  size_t n;
  uv_buf_t buf;

  if (c->closing)
    return;
  if (close_after)
    c->keep_alive = 0;
  c->log.status = status;
  if (c->log.reason[0] == '\0' && status >= 400)
    snprintf(c->log.reason, sizeof(c->log.reason), "%s", reason);
  rp_sbuf_addf(&b,
               "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
               "Content-Length: %zu\r\n%s%s\r\n%s\n",
               status, rp_http_reason(status), strlen(reason) + 1, extra,
               c->keep_alive ? "" : "Connection: close\r\n", reason);
  p = rp_sbuf_take(&b, &n);
  if (p == NULL) {
    rp__conn_close(c);
    return;
  }
  buf = uv_buf_init(p, (unsigned)n);
  if (rp__conn_write(c, c->client, &buf, 1, NULL, p) != 0) {
    rp__conn_close(c);
    return;
  }
  rp__conn_go_state(c, RP_CONN_RESPOND);
  rp__conn_response_done(c);
}

/* ---- logging ---- */

void rp__conn_log(struct rp_conn *c) {
  struct rp_logline l;
  struct rp_reqlog *r = &c->log;
  double ms = (double)(uv_hrtime() - r->start_ns) / 1e6;

  if (r->start_ns == 0)
    return;
  rp_logline_begin(&l, r->status >= 500 || r->status == 0 ? RP_LOG_WARN : RP_LOG_INFO, NULL);
  rp_logline_u64(&l, "conn", c->id);
  rp_logline_str(&l, "client", c->client_addr);
  rp_logline_str(&l, "via", r->via != NULL ? r->via : "proxy");
  if (c->dst_ip[0] != '\0') {
    char dst[80];
    snprintf(dst, sizeof(dst), strchr(c->dst_ip, ':') ? "[%s]:%u" : "%s:%u", c->dst_ip,
             c->dst_port);
    rp_logline_str(&l, "dst", dst);
  }
  rp_logline_str(&l, "route", r->route != NULL ? r->route : "-");
  rp_logline_str(&l, "host", r->host[0] ? r->host : "-");
  if (r->port != 0)
    rp_logline_u64(&l, "port", r->port);
  rp_logline_str(&l, "method", r->method[0] ? r->method : "-");
  rp_logline_str(&l, "path", r->path[0] ? r->path : "-");
  rp_logline_u64(&l, "status", (uint64_t)r->status);
  rp_logline_u64(&l, "bytes_in", r->bytes_in);
  rp_logline_u64(&l, "bytes_out", r->bytes_out);
  rp_logline_ms(&l, "ms", ms);
  rp_logline_str(&l, "cache", r->cache != NULL ? r->cache : "-");
  if (r->reason[0] != '\0')
    rp_logline_str(&l, "reason", r->reason);
  rp_logline_end(&l);
  rp_metrics_request(r->via != NULL ? r->via : "proxy", r->route != NULL ? r->route : "-",
                     r->cache != NULL ? r->cache : "-", r->status);
  r->start_ns = 0;
}

/* ---- reading and parsing requests ---- */

static void conn_process(struct rp_conn *c);

static void on_client_read(struct rp_stream *s, ssize_t nread, char *block);

void rp__conn_stop_client(struct rp_conn *c) {
  if (c->client_reading) {
    rp_stream_read_stop(c->client);
    c->client_reading = 0;
  }
}

void rp__conn_start_client(struct rp_conn *c) {
  if (!c->client_reading && !c->client_eof && !c->closing) {
    if (rp_stream_read_start(c->client) == 0)
      c->client_reading = 1;
  }
}

static void finish_request(struct rp_conn *c) {
  rp__conn_log(c);
  rp__exchange_end(c);
  c->req_active = 0;
  c->head = NULL;
  if (!c->keep_alive || c->srv->draining || c->client_eof) {
    rp__conn_close_after_flush(c);
    return;
  }
  rp__conn_go_state(c, RP_CONN_HEAD);
  rp__conn_set_timer(c, RP_TM_IDLE, c->srv->cfg->idle_timeout_ms);
  rp__conn_resume_input(c);
}

void rp__conn_response_done(struct rp_conn *c) {
  c->resp_done = 1;
  if (!c->req_done && (c->state == RP_CONN_FORWARD || !c->keep_alive)) {
    /* Answered before the request body ended: the rest of the body is not
     * worth reading, and the connection cannot carry another request. A
     * local answer on a kept-alive connection instead reads the body to
     * its end (conn_process) so the next request parses cleanly. */
    c->keep_alive = 0;
    c->req_done = 1;
  }
  if (c->req_active && c->req_done && !c->processing)
    finish_request(c);
}

void rp__conn_resume_input(struct rp_conn *c) {
  if (!c->processing && !c->closing)
    conn_process(c);
}

static bool can_parse(struct rp_conn *c) {
  if (c->closing || c->parser == NULL)
    return false;
  if (!c->req_active)
    return c->state == RP_CONN_HEAD;
  if (c->req_done)
    return false;
  if (c->state == RP_CONN_FORWARD)
    return c->upstream != NULL && c->pending_head == NULL &&
           rp__conn_queued(c, c->upstream) < RP_QUEUE_HIGH;
  if (c->state == RP_CONN_PASS)
    return !rp__exchange_body_full(c);
  return c->state == RP_CONN_RESPOND;
}

static struct rp_route_out route_decide(const struct rp_conn *c) {
  static const enum rp_route_way way[] = {
      [RP_TARGET_ORIGIN] = RP_ROUTE_ORIGIN,
      [RP_TARGET_ABSOLUTE] = RP_ROUTE_ABSOLUTE,
      [RP_TARGET_AUTHORITY] = RP_ROUTE_CONNECT,
      [RP_TARGET_ASTERISK] = RP_ROUTE_ASTERISK,
  };
  struct rp_route_cfg cfg;
  struct rp_route_in in;

  memset(&in, 0, sizeof(in));
  in.way = way[c->target.form];
  in.client_allowed = !c->denied;
  in.host = c->target.host;
  in.port = c->target.port;
  in.https = c->target.https;
  in.path = c->target.path;
  in.path_len = c->target.path_len;
  rp__server_route_cfg(c->srv, &cfg);
  return rp_route_decide(&in, &cfg);
}

static void dispatch(struct rp_conn *c, const struct rp_http_head *h) {
  struct rp_server *srv = c->srv;
  bool is_connect = h->method_id == HTTP_CONNECT;
  const char *why = NULL;
  size_t n;

  memset(&c->log, 0, sizeof(c->log));
  c->log.start_ns = uv_hrtime();
  c->log.via = c->via;
  n = h->method_len < sizeof(c->log.method) - 1 ? h->method_len : sizeof(c->log.method) - 1;
  memcpy(c->log.method, h->method, n);
  c->req_active = 1;
  c->req_done = 0;
  c->resp_done = 0;
  c->head = h;
  c->client_minor = h->minor;
  c->keep_alive = h->keep_alive && !srv->draining;
  c->x_via = 0;
  rp__conn_set_timer(c, RP_TM_IDLE, srv->cfg->idle_timeout_ms);

  if (rp_target_parse(h->target, h->target_len, is_connect, &c->target, &why) != 0) {
    n = h->target_len < sizeof(c->log.path) - 1 ? h->target_len : sizeof(c->log.path) - 1;
    memcpy(c->log.path, h->target, n);
    c->log.path[n] = '\0';
    rp__conn_respond(c, 400, why, true);
    return;
  }
  /* A transparent connection names its destination with Host. */
  if (c->transparent && !c->mitm && !rp__transparent_target(c, h))
    return;
  if (c->target.form == RP_TARGET_ORIGIN || c->target.form == RP_TARGET_ASTERISK) {
    n = h->target_len < sizeof(c->log.path) - 1 ? h->target_len : sizeof(c->log.path) - 1;
    memcpy(c->log.path, h->target, n);
  } else {
    rp_target_hostport(&c->target, false, c->log.host, sizeof(c->log.host));
    c->log.port = c->target.port;
    n = c->target.path_len < sizeof(c->log.path) - 1 ? c->target.path_len : sizeof(c->log.path) - 1;
    if (c->target.path != NULL)
      memcpy(c->log.path, c->target.path, n);
  }
  /* Routed once, here; acted on by rp__conn_route, after the proxy
   * authentication if any. Requests inside an intercepted tunnel were
   * routed with their CONNECT. */
  if (!c->mitm) {
    c->route = route_decide(c);
    if (c->route.route == RP_ROUTE_DENY_ACL) {
      rp__conn_respond(c, c->route.status, c->route.reason, true);
      return;
    }
  }
  /* --proxy-auth-file: requests to the proxy itself, not those inside an
   * intercepted tunnel (its CONNECT was checked) nor origin-form ones. */
  if (!c->mitm && strcmp(c->via, "proxy") == 0 &&
      (c->target.form == RP_TARGET_AUTHORITY || c->target.form == RP_TARGET_ABSOLUTE) &&
      !rp__proxyauth_check(c, h))
    return;
  rp__conn_route(c, h);
}

/* The admin endpoints (src/admin) take the request as an exchange and answer
 * it now, or once a cache job is done: until then nothing more of the
 * connection is read (can_parse) and its timer is off (the work ends by
 * itself); the exchange reads the rest of the request after the answer. */
static void admin_request(struct rp_conn *c) {
  struct rp_exchange *x = rp__conn_exchange_begin(c, c->target.path, c->target.path_len);
  struct rp_admin a;

  rp__conn_go_state(c, RP_CONN_LOCAL);
  rp__conn_set_timer(c, RP_TM_NONE, 0);
  rp__status_admin(c->srv, &a);
  rp_admin_serve(&a, x, (const struct sockaddr *)&c->peer);
}

void rp__conn_route(struct rp_conn *c, const struct rp_http_head *h) {
  const struct rp_route_out *r = &c->route;
  struct rp_target host;

  if (c->mitm) {
    rp__mitm_request(c, h);
    return;
  }
  c->log.route = r->name;
  switch (r->route) {
  case RP_ROUTE_DENY_ACL:
  case RP_ROUTE_DENY_PORT:
  case RP_ROUTE_BAD_REQUEST: rp__conn_respond(c, r->status, r->reason, true); break;
  case RP_ROUTE_TUNNEL: rp__tunnel_connect(c); break;
  case RP_ROUTE_MITM: rp__mitm_connect(c); break;
  case RP_ROUTE_PLAIN_REGISTRY:
    if (!rp__mitm_plain_request(c, h))
      rp__forward_start(c, h);
    break;
  case RP_ROUTE_FORWARD: rp__forward_start(c, h); break;
  case RP_ROUTE_MIRROR:
  case RP_ROUTE_ADMIN:
    c->log.via = r->name;
    /* RFC 9112 §3.2: one well-formed Host, else 400. Which names may reach
     * admin and mirror is their own check (rp_admin_host_allowed, 421). */
    if (!rp__conn_request_host(c, h, 80, &host))
      break;
    if (r->route == RP_ROUTE_MIRROR)
      rp__mitm_mirror_request(c, h);
    else
      admin_request(c);
    break;
  case RP_ROUTE_LAST: break;
  }
}

static void request_done(struct rp_conn *c) {
  c->req_done = 1;
  if (c->state == RP_CONN_FORWARD)
    rp__forward_request_done(c);
  else if (c->state == RP_CONN_PASS)
    rp__exchange_request_done(c);
  if (c->resp_done && c->req_active)
    finish_request(c);
}

static void conn_process(struct rp_conn *c) {
  c->processing = 1;
  while (c->in != NULL && can_parse(c)) {
    size_t consumed = 0;
    enum rp_http_status st = rp_http_parser_execute(c->parser, c->in->block + c->in_off,
                                                    c->in_len - c->in_off, &consumed);
    c->in_off += consumed;
    if (c->req_active)
      c->log.bytes_in += consumed;
    switch (st) {
    case RP_HTTP_OK:
      rp__bref_put(c->in);
      c->in = NULL;
      if (c->state == RP_CONN_HEAD && c->tmode != RP_TM_HEADER && rp_http_parser_in_head(c->parser))
        rp__conn_set_timer(c, RP_TM_HEADER, c->srv->cfg->header_timeout_ms);
      break;
    case RP_HTTP_HEAD:
      rp_http_parser_resume(c->parser);
      dispatch(c, c->head);
      c->log.bytes_in += consumed;
      break;
    case RP_HTTP_DONE:
      rp_http_parser_resume(c->parser);
      if (c->req_active)
        request_done(c);
      break;
    case RP_HTTP_UPGRADE:
      /* Only CONNECT gets here, and its dispatch already moved on. One that
       * was refused with a keep-alive answer (407, 421) is over, and the
       * connection carries HTTP again: the next request needs a fresh parser. */
      if (c->state == RP_CONN_HEAD && !c->req_active) {
        rp_http_parser_reset(c->parser);
        break;
      }
      /* A tunnel being dialled with nothing of the client's behind its
       * CONNECT head: give the read block back now, not when the dial ends
       * (2,000 CONNECTs dialling at once held 2,000 blocks, whose touched
       * pages stayed resident after they were freed). */
      if (c->state == RP_CONN_DIAL && c->in != NULL && c->in_off >= c->in_len) {
        rp__bref_put(c->in);
        c->in = NULL;
      }
      goto out;
    case RP_HTTP_ERROR: {
      const char *reason;
      int status = rp_http_parser_error(c->parser, &reason);
      rp__bref_put(c->in);
      c->in = NULL;
      if (c->req_active && c->state != RP_CONN_HEAD) {
        snprintf(c->log.reason, sizeof(c->log.reason), "%s", reason);
        rp__conn_close(c);
      } else {
        begin_headless_request(c);
        rp__conn_respond(c, status, reason, true);
      }
      goto out;
    }
    }
  }
out:
  c->processing = 0;
  if (c->closing)
    return;
  if (c->req_active && c->req_done && c->resp_done) {
    finish_request(c);
    return;
  }
  if (c->in == NULL && (can_parse(c) || c->state == RP_CONN_FORWARD || c->state == RP_CONN_PASS))
    rp__conn_start_client(c);
  else if (c->in != NULL)
    rp__conn_stop_client(c);
}

static void on_client_read(struct rp_stream *s, ssize_t nread, char *block) {
  struct rp_conn *c = s->data;

  if (nread < 0) {
    c->client_eof = 1;
    c->client_reading = 0;
    if (nread != UV_EOF && c->log.reason[0] == '\0')
      snprintf(c->log.reason, sizeof(c->log.reason), "client: %s", uv_strerror((int)nread));
    if (c->req_active && c->req_done && !c->resp_done) {
      /* The client half-closed after a complete request: answer it, then
       * close (HTTP/1.1 clients may do this; a response still goes out). */
      c->keep_alive = 0;
      return;
    }
    if (c->req_active && c->log.reason[0] == '\0')
      snprintf(c->log.reason, sizeof(c->log.reason), "client closed the connection");
    rp__conn_close(c);
    return;
  }
  rp__conn_touch(c);
  c->in = rp__bref_new(block);
  if (c->in == NULL) {
    rp__conn_close(c);
    return;
  }
  c->in_off = 0;
  c->in_len = (size_t)nread;
  conn_process(c);
}

/* ---- parser callbacks ---- */

static int on_req_head(void *data, const struct rp_http_head *h) {
  struct rp_conn *c = data;
  c->head = h;
  return 0;
}

static int on_req_body(void *data, const char *at, size_t len) {
  struct rp_conn *c = data;
  if (c->state == RP_CONN_FORWARD)
    return rp__forward_body(c, at, len);
  if (c->state == RP_CONN_PASS)
    return rp__exchange_body_in(c, at, len);
  return 0; /* a local answer ignores the body */
}

static const struct rp_http_callbacks req_callbacks = {on_req_head, on_req_body};

void rp__conn_accept(struct rp_listener *l) {
  struct rp_server *srv = l->srv;
  uv_tcp_t *tcp = rp_tcp_handle_new(srv->loop, AF_UNSPEC);

  if (tcp == NULL)
    return;
  if (uv_accept((uv_stream_t *)&l->tcp, (uv_stream_t *)tcp) != 0) {
    rp_tcp_handle_discard(tcp);
    return;
  }
  rp_tcp_tune(tcp, 0);
  if (l->transparent)
    rp__transparent_accept(l, tcp);
  else
    rp__conn_adopt(srv, rp_tcp_stream_wrap(tcp), "proxy");
}

struct rp_conn *rp__conn_adopt(struct rp_server *srv, struct rp_stream *s, const char *via) {
  struct rp_conn *c = calloc(1, sizeof(*c));

  if (c == NULL) {
    rp_stream_close(s, NULL);
    return NULL;
  }
  c->srv = srv;
  c->id = ++srv->next_id;
  c->via = via;
  c->client = s;
  c->client->data = c;
  c->client->on_read = on_client_read;
  c->x_in_tail = &c->x_in;
  if (s->ops->peername(s, &c->peer) == 0) {
    char ip[64] = "?";
    uint16_t port;
    if (c->peer.ss_family == AF_INET6) {
      uv_ip6_name((struct sockaddr_in6 *)&c->peer, ip, sizeof(ip));
      port = ntohs(((struct sockaddr_in6 *)&c->peer)->sin6_port);
      snprintf(c->client_addr, sizeof(c->client_addr), "[%s]:%u", ip, port);
    } else {
      uv_ip4_name((struct sockaddr_in *)&c->peer, ip, sizeof(ip));
      port = ntohs(((struct sockaddr_in *)&c->peer)->sin_port);
      snprintf(c->client_addr, sizeof(c->client_addr), "%s:%u", ip, port);
    }
    c->denied = !rp_acl_match(srv->cfg->acl, (struct sockaddr *)&c->peer);
  } else {
    snprintf(c->client_addr, sizeof(c->client_addr), "?");
    c->denied = 1;
  }
  uv_timer_init(srv->loop, &c->timer);
  c->timer.data = c;
  c->handles_open = 2;
  c->next = srv->conns;
  if (srv->conns != NULL)
    srv->conns->prev = c;
  srv->conns = c;
  srv->nconns++;
  rp_metrics.connections_active++;
  rp_metrics.connections_total++;

  c->parser = rp_http_parser_create(RP_HTTP_REQUEST, &req_callbacks, c);
  if (c->parser == NULL) {
    rp__conn_close(c);
    return NULL;
  }
  if (c->denied)
    rp_log_warn("client %s not allowed by the ACL", c->client_addr);
  rp__conn_set_timer(c, RP_TM_HEADER, srv->cfg->header_timeout_ms);
  rp__conn_start_client(c);
  return c;
}

void rp__conn_set_client(struct rp_conn *c, struct rp_stream *s) {
  c->client = s;
  s->data = c;
  s->on_read = on_client_read;
  c->client_reading = 0;
}

int rp__dial_status(int status) {
  return status == RP_ETIMEDOUT ? 504 : 502;
}

void rp__conn_dial_req(struct rp_conn *c, struct rp_dial_req *req, const char *host, uint16_t port,
                       bool via_parent, bool parent_connect) {
  const struct rp_config *cfg = c->srv->cfg;
  memset(req, 0, sizeof(*req));
  req->host = host;
  req->port = port;
  req->connect_to = cfg->connect_to;
  req->n_connect_to = cfg->n_connect_to;
  req->timeout_ms = cfg->connect_timeout_ms;
  req->mark = cfg->mark_set ? cfg->mark : 0;
  if (c->dst_ip[0] != '\0' && !(via_parent && c->srv->parent.host[0] != '\0')) {
    /* Transparent: the original destination, never a fresh DNS answer. */
    req->host = c->dst_ip;
    req->port = c->dst_port;
    req->connect_to = NULL;
    req->n_connect_to = 0;
  }
  if (via_parent && c->srv->parent.host[0] != '\0') {
    req->parent_host = c->srv->parent.host;
    req->parent_port = c->srv->parent.port;
    req->parent_auth = c->srv->parent.auth;
    req->parent_connect = parent_connect;
  }
}
