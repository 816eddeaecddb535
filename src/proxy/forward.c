/* Plain-HTTP forwarding of absolute-form requests: one upstream connection
 * per client connection, kept alive while the next request goes to the
 * same place; heads rewritten (hop-by-hop removed, Via added); bodies
 * streamed both ways with backpressure and re-framed where needed. */
#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "regproxy/error.h"
#include "regproxy/log.h"
#include "regproxy/metrics.h"

static const char crlf[] = "\r\n";
static const char last_chunk[] = "0\r\n\r\n";
#define VIA_VALUE "1.1 regproxy"

static void on_up_read(struct rp_stream *s, ssize_t nread, char *block);

static int write_chunk(struct rp_conn *c, struct rp_stream *s, struct rp_bref *ref, const char *at,
                       size_t len, bool chunked) {
  uv_buf_t bufs[3];
  char *line = NULL;

  if (len == 0)
    return 0;
  if (!chunked) {
    bufs[0] = uv_buf_init((char *)at, (unsigned)len);
    return rp__conn_write(c, s, bufs, 1, ref, NULL);
  }
  line = malloc(24);
  if (line == NULL)
    return UV_ENOMEM;
  bufs[0] = uv_buf_init(line, (unsigned)snprintf(line, 24, "%zx\r\n", len));
  bufs[1] = uv_buf_init((char *)at, (unsigned)len);
  bufs[2] = uv_buf_init((char *)crlf, 2);
  return rp__conn_write(c, s, bufs, 3, ref, line);
}

static int write_static(struct rp_conn *c, struct rp_stream *s, const char *p, size_t n) {
  uv_buf_t buf = uv_buf_init((char *)p, (unsigned)n);
  return rp__conn_write(c, s, &buf, 1, NULL, NULL);
}

/* ---- request head ---- */

static bool build_request_head(struct rp_conn *c, const struct rp_http_head *h, bool via_parent) {
  struct rp_sbuf b = {0};
  const struct rp_target *t = &c->target;
  char hostport[300];

  rp_target_hostport(t, t->port != 80, hostport, sizeof(hostport));
  rp_sbuf_add(&b, h->method, h->method_len);
  rp_sbuf_adds(&b, " ");
  if (via_parent) {
    /* A parent proxy gets the absolute form. */
    rp_sbuf_adds(&b, "http://");
    rp_sbuf_adds(&b, hostport);
  }
  if (t->path_needs_slash)
    rp_sbuf_adds(&b, "/");
  rp_sbuf_add(&b, t->path, t->path_len);
  rp_sbuf_adds(&b, " HTTP/1.1\r\nHost: ");
  rp_sbuf_adds(&b, hostport);
  rp_sbuf_adds(&b, "\r\n");
  /* RFC 9112 §3.2.2: the target URI's authority replaces Host. */
  rp_sbuf_add_end_to_end(&b, h, "host");
  if (h->chunked)
    rp_sbuf_adds(&b, "Transfer-Encoding: chunked\r\n");
  if (via_parent && c->srv->parent.auth != NULL) {
    rp_sbuf_adds(&b, "Proxy-Authorization: ");
    rp_sbuf_adds(&b, c->srv->parent.auth);
    rp_sbuf_adds(&b, "\r\n");
  }
  rp_sbuf_addf(&b, "Via: %u.%u regproxy\r\n\r\n", h->major, h->minor);
  free(c->pending_head);
  c->pending_head = rp_sbuf_take(&b, &c->pending_head_len);
  return c->pending_head != NULL;
}

/* ---- response ---- */

static void upstream_failed(struct rp_conn *c, const char *reason) {
  rp_metrics_upstream_error("protocol");
  if (c->log.reason[0] == '\0')
    snprintf(c->log.reason, sizeof(c->log.reason), "%s", reason);
  rp__conn_close_upstream(c);
  if (!c->up_head_sent && !c->resp_done)
    rp__conn_respond(c, 502, reason, true);
  else
    rp__conn_close(c); /* the client sees a cut body, never a wrong one */
}

static int on_resp_head(void *data, const struct rp_http_head *h) {
  struct rp_conn *c = data;
  struct rp_sbuf b = {0};
  bool no_body, until_close = false;
  char *p;
  size_t n;
  uv_buf_t buf;

  if (c->state != RP_CONN_FORWARD || h->status == 101)
    return -1;
  rp_sbuf_addf(&b, "HTTP/1.1 %d ", h->status);
  rp_sbuf_add(&b, h->reason, h->reason_len);
  rp_sbuf_adds(&b, "\r\n");
  rp_sbuf_add_end_to_end(&b, h, NULL);
  if (h->status >= 200) {
    no_body = c->req_is_head || h->status == 204 || h->status == 304;
    c->up_chunked_out = 0;
    c->up_close_after = 0;
    if (!no_body && h->chunked) {
      c->up_chunked_out = 1;
    } else if (!no_body && h->content_length < 0) {
      until_close = true;
      if (c->client_minor >= 1)
        c->up_chunked_out = 1; /* keep the client connection: re-frame */
      else
        c->up_close_after = 1;
    }
    if (c->up_chunked_out)
      rp_sbuf_adds(&b, "Transfer-Encoding: chunked\r\n");
    c->up_keep = h->keep_alive && !until_close;
    if (c->up_close_after || c->srv->draining)
      c->keep_alive = 0;
    if (!c->keep_alive)
      rp_sbuf_adds(&b, "Connection: close\r\n");
    c->log.status = h->status;
    c->up_head_sent = 1;
  }
  rp_sbuf_addf(&b, "Via: %u.%u regproxy\r\n\r\n", h->major, h->minor);
  p = rp_sbuf_take(&b, &n);
  if (p == NULL)
    return -1;
  buf = uv_buf_init(p, (unsigned)n);
  return rp__conn_write(c, c->client, &buf, 1, NULL, p) == 0 ? 0 : -1;
}

static int on_resp_body(void *data, const char *at, size_t len) {
  struct rp_conn *c = data;
  rp_metrics.bytes[1][RP_SRC_BYTES_UPSTREAM] += len;
  return write_chunk(c, c->client, c->up_in, at, len, c->up_chunked_out) == 0 ? 0 : -1;
}

static const struct rp_http_callbacks resp_callbacks = {on_resp_head, on_resp_body};

static void response_complete(struct rp_conn *c) {
  if (c->up_chunked_out && write_static(c, c->client, last_chunk, sizeof(last_chunk) - 1) != 0) {
    rp__conn_close(c);
    return;
  }
  if (!c->up_keep || !c->req_done || c->up_eof)
    rp__conn_close_upstream(c);
  else if (c->up_paused) {
    c->up_paused = 0;
    rp_stream_read_start(c->upstream); /* to notice an idle close */
  }
  rp__conn_response_done(c);
}

/* Feed one upstream block to the response parser. */
static void up_feed(struct rp_conn *c, struct rp_bref *ref, size_t len) {
  size_t off = 0;

  c->up_in = ref;
  while (off < len || (off == len && c->uparser != NULL && rp_http_parser_in_body(c->uparser))) {
    size_t consumed = 0;
    enum rp_http_status st;
    if (c->uparser == NULL || c->closing)
      break;
    st = rp_http_parser_execute(c->uparser, ref->block + off, len - off, &consumed);
    off += consumed;
    if (st == RP_HTTP_OK)
      break;
    if (st == RP_HTTP_DONE) {
      rp_http_parser_resume(c->uparser);
      if (!c->up_head_sent)
        continue; /* a 1xx answer: the real one follows */
      if (off < len)
        c->up_keep = 0; /* bytes after the response: never reuse */
      c->up_head_sent = 0;
      response_complete(c);
      break;
    }
    {
      const char *reason;
      rp_http_parser_error(c->uparser, &reason);
      upstream_failed(c, reason);
      break;
    }
  }
  c->up_in = NULL;
}

static void on_up_read(struct rp_stream *s, ssize_t nread, char *block) {
  struct rp_conn *c = s->data;
  struct rp_bref *ref;

  if (nread < 0) {
    c->up_eof = 1;
    c->up_reading = 0;
    if (c->state != RP_CONN_FORWARD || !c->req_active || c->resp_done) {
      rp__conn_close_upstream(c); /* an idle kept-alive connection went away */
      return;
    }
    if (c->uparser != NULL && rp_http_parser_finish(c->uparser) == RP_HTTP_DONE &&
        c->up_head_sent) {
      c->up_head_sent = 0;
      response_complete(c);
      return;
    }
    upstream_failed(c, nread == UV_EOF ? "upstream closed the connection before the response ended"
                                       : uv_strerror((int)nread));
    return;
  }
  if (c->state != RP_CONN_FORWARD || !c->req_active || c->resp_done) {
    rp_buf_free(block); /* nobody asked: a broken upstream */
    rp__conn_close_upstream(c);
    return;
  }
  rp__conn_touch(c);
  rp_metrics.upstream_bytes += (uint64_t)nread;
  ref = rp__bref_new(block);
  if (ref == NULL) {
    rp__conn_close(c);
    return;
  }
  up_feed(c, ref, (size_t)nread);
  rp__bref_put(ref);
  if (!c->closing && c->upstream != NULL && c->state == RP_CONN_FORWARD && !c->resp_done &&
      rp__conn_queued(c, c->client) > RP_QUEUE_HIGH) {
    rp_stream_read_stop(c->upstream);
    c->up_paused = 1;
  }
}

void rp__forward_client_drained(struct rp_conn *c) {
  if (c->up_paused && c->upstream != NULL && rp__conn_queued(c, c->client) <= RP_QUEUE_LOW) {
    c->up_paused = 0;
    rp_stream_read_start(c->upstream);
  }
}

/* ---- request ---- */

static void send_head(struct rp_conn *c) {
  uv_buf_t buf = uv_buf_init(c->pending_head, (unsigned)c->pending_head_len);
  char *head = c->pending_head;

  c->pending_head = NULL;
  if (c->uparser == NULL) {
    c->uparser = rp_http_parser_create(RP_HTTP_RESPONSE, &resp_callbacks, c);
    if (c->uparser == NULL) {
      free(head);
      rp__conn_respond(c, 502, "out of memory", true);
      return;
    }
  }
  rp_http_parser_expect_no_body(c->uparser, c->req_is_head);
  c->up_head_sent = 0;
  if (rp__conn_write(c, c->upstream, &buf, 1, NULL, head) != 0) {
    upstream_failed(c, "write to upstream failed");
    return;
  }
  c->upstream->on_read = on_up_read;
  if (!c->up_reading && rp_stream_read_start(c->upstream) == 0)
    c->up_reading = 1;
  c->up_paused = 0;
  rp__conn_resume_input(c); /* stream the request body */
}

static void on_dialed(void *data, int status, struct rp_stream *s, const char *reason) {
  struct rp_conn *c = data;
  c->dial = NULL;
  if (status != 0) {
    rp_metrics_upstream_error(status == RP_ETIMEDOUT ? "timeout" : "connect");
    rp__conn_respond(c, rp__dial_status(status), reason, true);
    return;
  }
  rp__conn_set_upstream(c, s);
  c->up_reading = 0;
  send_head(c);
}

void rp__forward_start(struct rp_conn *c, const struct rp_http_head *h) {
  struct rp_server *srv = c->srv;
  struct rp_dial_req req;
  bool via_parent = c->route.via_parent;
  char key[300];

  c->req_is_head = h->method_id == HTTP_HEAD;
  c->req_chunked_up = h->chunked;
  if (!build_request_head(c, h, via_parent)) {
    rp__conn_respond(c, 502, "out of memory", true);
    return;
  }
  rp__conn_go_state(c, RP_CONN_FORWARD);
  if (via_parent)
    snprintf(key, sizeof(key), "parent");
  else
    rp_target_hostport(&c->target, true, key, sizeof(key));
  if (c->upstream != NULL && !c->up_eof && strcmp(key, c->up_key) == 0) {
    send_head(c);
    return;
  }
  rp__conn_close_upstream(c);
  snprintf(c->up_key, sizeof(c->up_key), "%s", key);
  rp__conn_dial_req(c, &req, c->target.host, c->target.port, via_parent, false);
  c->dial = rp_dial_start(srv->loop, &req, on_dialed, c);
  if (c->dial == NULL)
    rp__conn_respond(c, 502, "out of memory", true);
}

int rp__forward_body(struct rp_conn *c, const char *at, size_t len) {
  if (c->upstream == NULL)
    return -1;
  return write_chunk(c, c->upstream, c->in, at, len, c->req_chunked_up) == 0 ? 0 : -1;
}

void rp__forward_request_done(struct rp_conn *c) {
  if (c->req_chunked_up && c->upstream != NULL &&
      write_static(c, c->upstream, last_chunk, sizeof(last_chunk) - 1) != 0)
    upstream_failed(c, "write to upstream failed");
}

void rp__forward_destroy(struct rp_conn *c) {
  free(c->pending_head);
  c->pending_head = NULL;
}
