/* The exchange (include/regproxy/exchange.h) of a client connection: the
 * answer the registry service gives goes on the wire here as HTTP/1.1 — the
 * status line, the headers the way in adds (Via for plain HTTP), Content-Length
 * or chunked framing, Connection: close when the connection ends after it —
 * and the body is written to the client's stream (TCP, or TLS inside MITM),
 * counted and drained like the connection's other writes, with each write's
 * completion as the writer's backpressure. The request body the parser
 * delivers waits here, in the read blocks it arrived in, until the handler
 * reads it; reading from the client stops while too much of it waits. */
#include <llhttp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "regproxy/error.h"

struct body_write {
  struct rp_conn *c;
  rp_sink_cb cb;
  void *arg;
  char chunk_head[24];
  uv_buf_t bufs[4];
};

static const char chunk_tail[] = "\r\n";
static const char last_chunk[] = "0\r\n\r\n";

static struct rp_conn *conn_of_exchange(struct rp_exchange *x) {
  return (struct rp_conn *)(void *)((char *)x - offsetof(struct rp_conn, x));
}

static struct rp_conn *conn_of_sink(struct rp_sink *s) {
  return (struct rp_conn *)(void *)((char *)s - offsetof(struct rp_conn, x_body));
}

static int x_start(struct rp_exchange *x, int status, const struct rp_http_header *h, size_t n,
                   int64_t length) {
  struct rp_conn *c = conn_of_exchange(x);
  struct rp_sbuf b = {0};
  size_t len;
  char *p;
  uv_buf_t buf;

  if (c->closing)
    return UV_EPIPE;
  c->x_no_body =
      (c->head != NULL && c->head->method_id == HTTP_HEAD) || status == 204 || status == 304;
  c->x_chunked = length < 0 && !c->x_no_body;
  rp_sbuf_addf(&b, "HTTP/1.1 %d %s\r\n", status, rp_http_reason(status));
  for (size_t i = 0; i < n; i++)
    rp_sbuf_addf(&b, "%.*s: %.*s\r\n", (int)h[i].name_len, h[i].name, (int)h[i].value_len,
                 h[i].value);
  if (length >= 0)
    rp_sbuf_addf(&b, "Content-Length: %lld\r\n", (long long)length);
  else if (c->x_chunked)
    rp_sbuf_adds(&b, "Transfer-Encoding: chunked\r\n");
  if (c->x_via)
    rp_sbuf_adds(&b, "Via: 1.1 regproxy\r\n");
  if (!c->keep_alive || c->srv->draining) {
    c->keep_alive = 0;
    rp_sbuf_adds(&b, "Connection: close\r\n");
  }
  rp_sbuf_adds(&b, "\r\n");
  p = rp_sbuf_take(&b, &len);
  if (p == NULL)
    return UV_ENOMEM;
  buf = uv_buf_init(p, (unsigned)len);
  c->log.status = status;
  c->x_started = 1;
  if (rp__conn_write(c, c->client, &buf, 1, NULL, p) != 0)
    return UV_EPIPE;
  /* A body paces itself on the client's stream; the idle timer would not
   * see it. */
  if (length != 0 && !c->x_no_body)
    rp__conn_set_timer(c, RP_TM_NONE, 0);
  return 0;
}

static void on_body_written(void *arg, int status) {
  struct body_write *w = arg;
  w->cb(w->arg, status);
  free(w);
}

static int body_write(struct rp_sink *s, const uv_buf_t *bufs, unsigned n, rp_sink_cb cb,
                      void *arg) {
  struct rp_conn *c = conn_of_sink(s);
  struct body_write *w;
  size_t total = 0;
  unsigned k = 0;
  int rc;

  if (c->x_no_body) {
    cb(arg, 0);
    return 0;
  }
  if (c->closing)
    return UV_EPIPE;
  if (n > 2 || (w = malloc(sizeof(*w))) == NULL)
    return n > 2 ? UV_EINVAL : UV_ENOMEM;
  for (unsigned i = 0; i < n; i++)
    total += bufs[i].len;
  w->c = c;
  w->cb = cb;
  w->arg = arg;
  if (c->x_chunked) {
    int hl = snprintf(w->chunk_head, sizeof(w->chunk_head), "%zx\r\n", total);
    w->bufs[k++] = uv_buf_init(w->chunk_head, (unsigned)hl);
  }
  for (unsigned i = 0; i < n; i++)
    w->bufs[k++] = bufs[i];
  if (c->x_chunked)
    w->bufs[k++] = uv_buf_init((char *)chunk_tail, 2);
  rc = rp__conn_write_notify(c, w->bufs, k, on_body_written, w);
  if (rc != 0)
    free(w);
  else
    rp__conn_touch(c);
  return rc;
}

static struct rp_sink *x_body(struct rp_exchange *x) {
  return &conn_of_exchange(x)->x_body;
}

/* A request held paused after its head (state LOCAL) was answered: the rest
 * of it is read now, under the idle timeout, and the connection goes on. */
static void release_held(struct rp_conn *c) {
  if (c->closing || !c->req_active)
    return;
  rp__conn_set_timer(c, RP_TM_IDLE, c->srv->cfg->idle_timeout_ms);
  rp__conn_resume_input(c);
}

static void x_finish(struct rp_exchange *x) {
  struct rp_conn *c = conn_of_exchange(x);
  bool held = c->state == RP_CONN_LOCAL;

  if (c->closing)
    return;
  if (c->x_chunked) {
    uv_buf_t buf = uv_buf_init((char *)last_chunk, sizeof(last_chunk) - 1);
    c->x_chunked = 0;
    if (rp__conn_write(c, c->client, &buf, 1, NULL, NULL) != 0) {
      rp__conn_close(c);
      return;
    }
  }
  rp__conn_go_state(c, RP_CONN_RESPOND);
  rp__conn_response_done(c);
  if (held)
    release_held(c);
}

static void x_abort(struct rp_exchange *x, const char *reason) {
  struct rp_conn *c = conn_of_exchange(x);

  if (c->log.reason[0] == '\0' && reason != NULL)
    snprintf(c->log.reason, sizeof(c->log.reason), "%s", reason);
  /* No answer went out: the log says the client got none from upstream. */
  if (c->log.status == 0)
    c->log.status = 502;
  rp__conn_close(c);
}

static void x_error(struct rp_exchange *x, int status, const char *reason, bool close_after) {
  struct rp_conn *c = conn_of_exchange(x);
  bool held = c->state == RP_CONN_LOCAL;

  rp__conn_respond(c, status, reason, close_after);
  if (held)
    release_held(c);
}

static size_t x_queued(struct rp_exchange *x) {
  struct rp_conn *c = conn_of_exchange(x);
  return rp__conn_queued(c, c->client);
}

static void x_note(struct rp_exchange *x, const char *cache, const char *reason, const char *host) {
  struct rp_conn *c = conn_of_exchange(x);
  if (cache != NULL)
    c->log.cache = cache;
  if (reason != NULL)
    snprintf(c->log.reason, sizeof(c->log.reason), "%s", reason);
  if (host != NULL)
    snprintf(c->log.host, sizeof(c->log.host), "%s", host);
}

/* ---- the request body ---- */

static void body_drop(struct rp_conn *c) {
  while (c->x_in != NULL) {
    struct rp_body_chunk *k = c->x_in;
    c->x_in = k->next;
    rp__bref_put(k->ref);
    free(k);
  }
  c->x_in_tail = &c->x_in;
  c->x_in_bytes = 0;
}

static ssize_t x_read(struct rp_exchange *x, char *buf, size_t n) {
  struct rp_conn *c = conn_of_exchange(x);
  size_t done = 0;

  while (done < n && c->x_in != NULL) {
    struct rp_body_chunk *k = c->x_in;
    size_t take = k->len < n - done ? k->len : n - done;
    memcpy(buf + done, k->p, take);
    done += take;
    k->p += take;
    k->len -= take;
    c->x_in_bytes -= take;
    if (k->len == 0) {
      c->x_in = k->next;
      if (c->x_in == NULL)
        c->x_in_tail = &c->x_in;
      rp__bref_put(k->ref);
      free(k);
    }
  }
  if (done > 0) {
    if (c->x_in_bytes <= RP_QUEUE_LOW)
      rp__conn_resume_input(c);
    return (ssize_t)done;
  }
  return c->req_done ? 0 : RP_EXCHANGE_AGAIN;
}

int rp__exchange_body_in(struct rp_conn *c, const char *at, size_t len) {
  struct rp_body_chunk *k = malloc(sizeof(*k));
  if (k == NULL)
    return -1;
  k->next = NULL;
  k->ref = c->in;
  c->in->refs++;
  k->p = at;
  k->len = len;
  *c->x_in_tail = k;
  c->x_in_tail = &k->next;
  c->x_in_bytes += len;
  if (c->x.handler.body_ready != NULL)
    c->x.handler.body_ready(c->x.handler.data);
  return 0;
}

void rp__exchange_request_done(struct rp_conn *c) {
  if (c->x.handler.body_ready != NULL)
    c->x.handler.body_ready(c->x.handler.data);
}

bool rp__exchange_body_full(const struct rp_conn *c) {
  return c->x_in_bytes >= RP_QUEUE_HIGH;
}

void rp__exchange_client_drained(struct rp_conn *c) {
  if (c->x.handler.drained != NULL && rp__conn_queued(c, c->client) <= RP_EXCHANGE_LOW)
    c->x.handler.drained(c->x.handler.data);
}

/* ---- the exchange's life ---- */

static const struct rp_exchange_ops conn_exchange_ops = {
    .start = x_start,
    .body = x_body,
    .finish = x_finish,
    .abort = x_abort,
    .error = x_error,
    .queued = x_queued,
    .read = x_read,
    .note = x_note,
};

void rp__exchange_end(struct rp_conn *c) {
  struct rp_exchange_handler hd = c->x.handler;
  struct rp_exchange_summary s;

  memset(&c->x.handler, 0, sizeof(c->x.handler));
  /* A body of the request that its answer left unread (the cache answered
   * it) goes now. */
  body_drop(c);
  if (hd.end == NULL)
    return;
  memset(&s, 0, sizeof(s));
  s.status = c->log.status;
  s.bytes_out = c->log.bytes_out;
  s.ms = c->log.start_ns != 0 ? (double)(uv_hrtime() - c->log.start_ns) / 1e6 : 0;
  s.client = c->client_addr;
  s.complete = !c->closing;
  hd.end(hd.data, &s);
}

struct rp_exchange *rp__conn_exchange_begin(struct rp_conn *c, const char *path, size_t path_len) {
  rp__exchange_end(c);
  c->x.ops = &conn_exchange_ops;
  c->x.head = c->head;
  c->x.path = path;
  c->x.path_len = path_len;
  c->x_body.write = body_write;
  c->x_chunked = 0;
  c->x_no_body = 0;
  c->x_started = 0;
  return &c->x;
}
