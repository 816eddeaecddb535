#ifndef RP_EXCHANGE_H
#define RP_EXCHANGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/types.h>

#include <uv.h>

#include "regproxy/cache.h"
#include "regproxy/http.h"

/* One request and its answer, as the front that received it implements it
 * (h2o's h2o_req_t and generators are the model). Whoever answers — the
 * registry service (src/registry), a local handler — says what the answer
 * is; the front decides how it goes on the wire (HTTP/1 framing, chunking,
 * Connection, the headers every answer of that way in carries) and when the
 * connection can take another request. Nothing behind an exchange writes
 * HTTP/1 bytes or touches a socket.
 *
 * The handler that takes an exchange sets x->handler; the front calls its
 * events. `end` runs exactly once, when the request is over for the front
 * (answered and logged, or the client gone): after it the handler must not
 * touch the exchange again. Every op may end the request synchronously
 * (finish, abort and error do; start or a body write may, on a broken
 * client): a handler returns right after calling one unless it knows the
 * exchange is still there. */

struct rp_exchange;

/** rp_exchange_read: no request-body bytes yet (body_ready follows). */
#define RP_EXCHANGE_AGAIN (-2)

/** What the front saw of the request, for the handler's own numbers. */
struct rp_exchange_summary {
  int status;         /* of the answer; 0 when none went out */
  uint64_t bytes_out; /* body and head bytes written to the client */
  double ms;          /* since the request head */
  const char *client; /* the client's address, "ip:port" */
  bool complete;      /* the whole answer went out */
};

struct rp_exchange_handler {
  /* The client took enough of the answer: writes may go on (after a
   * rp_exchange_queued above RP_EXCHANGE_HIGH). */
  void (*drained)(void *data);
  /* More of the request body can be read, or its end. */
  void (*body_ready)(void *data);
  /* The request is over (see above). */
  void (*end)(void *data, const struct rp_exchange_summary *s);
  void *data;
};

struct rp_exchange_ops {
  /* The status line and end-to-end headers of the answer. length: the body's
   * size, or -1 when unknown (the front then frames it, e.g. chunked). A HEAD
   * request's answer carries no body whatever length says. */
  int (*start)(struct rp_exchange *x, int status, const struct rp_http_header *h, size_t n,
               int64_t length);
  /* Where the body goes: bytes written in order, each write's callback once
   * the front is done with the buffers (backpressure for the writer). */
  struct rp_sink *(*body)(struct rp_exchange *x);
  /* The whole answer went out: the front may read the next request. */
  void (*finish)(struct rp_exchange *x);
  /* No complete answer can be given (a body cut, a failed read, an origin
   * that does not speak TLS): the client sees its connection end, never a
   * short body passed off as whole. */
  void (*abort)(struct rp_exchange *x, const char *reason);
  /* A short local answer of the front's own making: status line, one line
   * of reason as the body; close_after ends the connection after it. */
  void (*error)(struct rp_exchange *x, int status, const char *reason, bool close_after);
  /* Answer bytes written and not yet taken by the client. */
  size_t (*queued)(struct rp_exchange *x);
  /* Request body bytes into buf: > 0 bytes, 0 at its end, RP_EXCHANGE_AGAIN. */
  ssize_t (*read)(struct rp_exchange *x, char *buf, size_t n);
  /* The log line's cache= (a static string), reason= and host= (copied);
   * NULL leaves each as it is. */
  void (*note)(struct rp_exchange *x, const char *cache, const char *reason, const char *host);
};

/* Above this many queued answer bytes a writer waits for `drained`, which
 * comes once the queue is at or below RP_EXCHANGE_LOW. */
#define RP_EXCHANGE_HIGH (512u * 1024u)
#define RP_EXCHANGE_LOW  (128u * 1024u)

struct rp_exchange {
  const struct rp_exchange_ops *ops;
  const struct rp_http_head *head; /* the request: method, headers */
  const char *path;                /* its origin-form path and query */
  size_t path_len;
  struct rp_exchange_handler handler; /* set by whoever takes the request */
};

static inline int rp_exchange_start(struct rp_exchange *x, int status,
                                    const struct rp_http_header *h, size_t n, int64_t length) {
  return x->ops->start(x, status, h, n, length);
}

static inline struct rp_sink *rp_exchange_body(struct rp_exchange *x) {
  return x->ops->body(x);
}

static inline void rp_exchange_finish(struct rp_exchange *x) {
  x->ops->finish(x);
}

static inline void rp_exchange_abort(struct rp_exchange *x, const char *reason) {
  x->ops->abort(x, reason);
}

static inline void rp_exchange_error(struct rp_exchange *x, int status, const char *reason,
                                     bool close_after) {
  x->ops->error(x, status, reason, close_after);
}

static inline size_t rp_exchange_queued(struct rp_exchange *x) {
  return x->ops->queued(x);
}

static inline ssize_t rp_exchange_read(struct rp_exchange *x, char *buf, size_t n) {
  return x->ops->read(x, buf, n);
}

static inline void rp_exchange_note(struct rp_exchange *x, const char *cache, const char *reason,
                                    const char *host) {
  x->ops->note(x, cache, reason, host);
}

static inline void rp_exchange__free_body(void *body, int status) {
  (void)status;
  free(body);
}

/** A whole small answer: start, body (malloc'd and taken; NULL with len 0
 * for none), finish. When the front cannot take it, the exchange is
 * aborted (and body freed). */
static inline void rp_exchange_answer(struct rp_exchange *x, int status,
                                      const struct rp_http_header *h, size_t n, char *body,
                                      size_t len) {
  struct rp_sink *s;
  uv_buf_t buf;

  if (rp_exchange_start(x, status, h, n, (int64_t)len) != 0) {
    free(body);
    rp_exchange_abort(x, "answer failed");
    return;
  }
  if (len > 0) {
    buf = uv_buf_init(body, (unsigned)len);
    s = rp_exchange_body(x);
    if (s->write(s, &buf, 1, rp_exchange__free_body, body) != 0) {
      free(body);
      rp_exchange_abort(x, "write failed");
      return;
    }
  } else {
    free(body);
  }
  rp_exchange_finish(x);
}

#endif
