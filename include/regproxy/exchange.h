#ifndef RP_EXCHANGE_H
#define RP_EXCHANGE_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "regproxy/cache.h"
#include "regproxy/http.h"

/* One request and its answer, as the front that received it implements it
 * (h2o's h2o_req_t and generators are the model). Whoever answers — the
 * registry cache today, the registry service tomorrow — says what the answer
 * is; the front decides how it goes on the wire (HTTP/1 framing, chunking,
 * Connection, the headers every answer of that way in carries) and when the
 * connection can take another request. Nothing behind an exchange writes
 * HTTP/1 bytes or touches a socket. */

struct rp_exchange;

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
  /* No complete answer can be given (a body cut, a failed read): the client
   * sees its connection end, never a short body passed off as whole. */
  void (*abort)(struct rp_exchange *x, const char *reason);
};

struct rp_exchange {
  const struct rp_exchange_ops *ops;
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

/** A whole small answer: start, the body (copied), finish. */
int rp_exchange_reply(struct rp_exchange *x, int status, const struct rp_http_header *h, size_t n,
                      const char *body, size_t len);

#endif
