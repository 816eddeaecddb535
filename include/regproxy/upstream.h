#ifndef RP_UPSTREAM_H
#define RP_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "regproxy/http.h"

/* The upstream engine: one libcurl multi handle driven by the libuv loop
 * (multi-socket API), HTTP/1.1 with connection reuse, TLS verified against
 * the system bundle plus --upstream-ca, --connect-to applied, the proxy set
 * explicitly on every transfer (libcurl never reads the environment). */

struct rp_connect_to;
struct rp_upstream;

struct rp_upstream_opts {
  const char *ca_file; /* extra CA bundle, or NULL */
  const struct rp_connect_to *connect_to;
  size_t n_connect_to;
  uint64_t connect_timeout_ms;
  uint32_t mark; /* SO_MARK on upstream sockets, 0 = none */
};

int rp_upstream_create(uv_loop_t *loop, const struct rp_upstream_opts *opts,
                       struct rp_upstream **out);
/** Cancel every fetch (no callbacks) and release the engine; its libuv
 * handles close asynchronously, so run the loop afterwards. */
void rp_upstream_destroy(struct rp_upstream *up);
/** The loop the engine runs on (for modules that schedule work beside it). */
uv_loop_t *rp_upstream_loop(const struct rp_upstream *up);

struct rp_fetch;

/* Return value of on_body / read_body meaning "not now": the bytes are
 * offered again after rp_fetch_resume (libcurl's pause semantics). */
#define RP_FETCH_PAUSE (-2)

struct rp_fetch_callbacks {
  /** The final response head (1xx are skipped). 0 to go on, -1 to abort. */
  int (*on_head)(struct rp_fetch *f, void *data, int status, const char *reason,
                 const struct rp_http_header *headers, size_t nheaders);
  /** Body bytes: 0 when all consumed, RP_FETCH_PAUSE to get them again after
   * rp_fetch_resume, -1 to abort. */
  int (*on_body)(struct rp_fetch *f, void *data, const char *p, size_t n);
  /** Request body (NULL when none): copy up to n bytes into buf and return
   * how many; 0 at the end; RP_FETCH_PAUSE when none are ready yet (call
   * rp_fetch_resume_upload when there are). */
  ssize_t (*read_body)(struct rp_fetch *f, void *data, char *buf, size_t n);
  /** Always called once, last: status 0 or a negative error, reason a one-line
   * message (OpenSSL's verification reason for certificate errors). The fetch
   * is freed after it returns. */
  void (*on_done)(struct rp_fetch *f, void *data, int status, const char *reason);
};

struct rp_fetch_req {
  const char *method;                   /* "GET", "HEAD", "PUT", ... */
  const char *url;                      /* https://host[:port]/path?query */
  const struct rp_http_header *headers; /* sent as given; hop-by-hop already removed */
  size_t nheaders;
  int64_t body_len;           /* -1: chunked upload of unknown length; 0: no body */
  const char *proxy;          /* "http://host:port" or NULL for a direct connection */
  const char *proxy_userinfo; /* "user:pass" or NULL */
  bool follow_redirects;      /* follow 301/302/303/307/308 itself (cache fills) */
};

/** Start a transfer. Callbacks run on the loop, never inside this call. */
struct rp_fetch *rp_fetch_start(struct rp_upstream *up, const struct rp_fetch_req *req,
                                const struct rp_fetch_callbacks *cb, void *data);
/** Stop delivering body bytes (backpressure) / deliver again. */
void rp_fetch_pause(struct rp_fetch *f);
void rp_fetch_resume(struct rp_fetch *f);
/** More request-body bytes are ready. */
void rp_fetch_resume_upload(struct rp_fetch *f);
/** Abort; no callback runs after this returns. */
void rp_fetch_cancel(struct rp_fetch *f);

#endif
