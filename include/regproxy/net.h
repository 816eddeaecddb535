#ifndef RP_NET_H
#define RP_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "regproxy/dial.h"

/* Read buffers come from a loop-wide pool of fixed blocks, so an idle
 * connection holds no buffer at all; a read callback owns the block it is
 * given and passes it on (to a write) or returns it with rp_buf_free. */
#define RP_BUF_SIZE (64 * 1024)
char *rp_buf_alloc(void);
void rp_buf_free(char *block);
/** Release every pooled block (at exit, so leak checkers stay quiet). */
void rp_buf_pool_drain(void);

/* The stream interface: plain TCP now, TLS on top of TCP for MITM. Every
 * layer above talks to this table, never to uv_tcp_t directly. */
struct rp_stream;

/** nread > 0: block (owned by the callee, from rp_buf_alloc) holds nread
 * bytes; nread < 0: UV_EOF or an error, block is NULL. */
typedef void (*rp_stream_read_cb)(struct rp_stream *s, ssize_t nread, char *block);
typedef void (*rp_stream_write_cb)(struct rp_stream *s, int status, void *arg);
typedef void (*rp_stream_shutdown_cb)(struct rp_stream *s, int status);
typedef void (*rp_stream_close_cb)(struct rp_stream *s);

struct rp_stream_ops {
  const char *name;
  int (*read_start)(struct rp_stream *s);
  int (*read_stop)(struct rp_stream *s);
  /** Queue bufs; cb(arg) runs once they are written or failed. Buffers
   * must stay valid until then. */
  int (*write)(struct rp_stream *s, const uv_buf_t *bufs, unsigned n, rp_stream_write_cb cb,
               void *arg);
  /** Send EOF after everything queued. */
  int (*shutdown)(struct rp_stream *s, rp_stream_shutdown_cb cb);
  /** Close; cb runs when the memory has been released (s is gone then). */
  void (*close)(struct rp_stream *s, rp_stream_close_cb cb);
  size_t (*write_queue_size)(const struct rp_stream *s);
  /** Peer / local address (for logs and ACLs); 0 or a uv error. */
  int (*peername)(const struct rp_stream *s, struct sockaddr_storage *ss);
  /** The loop the stream runs on (layers on top schedule their own work there). */
  uv_loop_t *(*loop)(const struct rp_stream *s);
};

struct rp_stream {
  const struct rp_stream_ops *ops;
  rp_stream_read_cb on_read;
  void *data; /* the owner */
};

static inline int rp_stream_read_start(struct rp_stream *s) {
  return s->ops->read_start(s);
}
static inline int rp_stream_read_stop(struct rp_stream *s) {
  return s->ops->read_stop(s);
}
static inline int rp_stream_write(struct rp_stream *s, const uv_buf_t *bufs, unsigned n,
                                  rp_stream_write_cb cb, void *arg) {
  return s->ops->write(s, bufs, n, cb, arg);
}
static inline int rp_stream_shutdown(struct rp_stream *s, rp_stream_shutdown_cb cb) {
  return s->ops->shutdown(s, cb);
}
static inline void rp_stream_close(struct rp_stream *s, rp_stream_close_cb cb) {
  s->ops->close(s, cb);
}
static inline size_t rp_stream_write_queue_size(const struct rp_stream *s) {
  return s->ops->write_queue_size(s);
}

/** Wrap an accepted or connected uv_tcp_t (allocated with rp_tcp_handle_new)
 * as a stream; the stream owns the handle from then on. */
struct rp_stream *rp_tcp_stream_wrap(uv_tcp_t *tcp);
/** Allocate a TCP handle suitable for rp_tcp_stream_wrap; with family
 * AF_INET/AF_INET6 the socket exists at once (so options can be set before
 * connect), with AF_UNSPEC it is made later (accept). */
uv_tcp_t *rp_tcp_handle_new(uv_loop_t *loop, int family);
/** Close and free a handle from rp_tcp_handle_new that was never wrapped. */
void rp_tcp_handle_discard(uv_tcp_t *tcp);
/** TCP_NODELAY and, when mark != 0, SO_MARK. */
void rp_tcp_tune(uv_tcp_t *tcp, uint32_t mark);

/* dial: asynchronous resolve, Happy Eyeballs (RFC 8305, 250 ms), connect
 * timeout, curl-style --connect-to (regproxy/dial.h), optional parent-proxy
 * CONNECT. */

struct rp_dial_req {
  const char *host; /* name or IP literal (IPv6 without brackets) */
  uint16_t port;
  /* Parent proxy: when parent_host is set the connection goes there; with
   * parent_connect a CONNECT host:port is made through it (tunnels), else
   * the caller talks to the parent itself (plain-HTTP forwarding). */
  const char *parent_host;
  uint16_t parent_port;
  const char *parent_auth; /* "Basic ..." or NULL */
  bool parent_connect;
  const struct rp_connect_to *connect_to;
  size_t n_connect_to;
  uint64_t timeout_ms;
  uint32_t mark;
};

struct rp_dial;
/** status 0: s is connected (the callee owns it). Otherwise s is NULL and
 * reason says why in one line. The dial object is gone after the call. */
typedef void (*rp_dial_cb)(void *data, int status, struct rp_stream *s, const char *reason);

/** Start dialing; the callback always runs later, never from inside. */
struct rp_dial *rp_dial_start(uv_loop_t *loop, const struct rp_dial_req *req, rp_dial_cb cb,
                              void *data);
/** Abandon a dial; its callback will not run. */
void rp_dial_cancel(struct rp_dial *d);

/* TLS on top of another stream through memory BIOs (MITM). */
typedef struct ssl_ctx_st SSL_CTX;

/** Pick the server context for a session: host is the connection's identity
 * (the CONNECT host), sni the ClientHello's server name or NULL. Return a
 * referenced SSL_CTX for host, or NULL to fail the handshake (e.g. sni names
 * another host). */
typedef SSL_CTX *(*rp_tls_select_cb)(void *arg, const char *host, const char *sni);
/** Handshake result: status 0, or an error with OpenSSL's reason in one line. */
typedef void (*rp_tls_handshake_cb)(struct rp_stream *s, int status, const char *reason);

/** Wrap inner (owned from now on) as the server side of a TLS session for
 * host. base_ctx carries the servername callback set-up; select picks the
 * per-host context. The handshake starts at once; cb runs once. Reads and
 * writes on the returned stream carry plaintext. */
struct rp_stream *rp_tls_stream_server(struct rp_stream *inner, SSL_CTX *base_ctx, const char *host,
                                       rp_tls_select_cb select, void *select_arg,
                                       rp_tls_handshake_cb cb);
/* rp_tls_stream_server returns NULL (out of memory, OpenSSL failure) with
 * inner left as it was, still the caller's. The handshake callback does not
 * run once the stream is closed. A TCP EOF without the peer's close_notify
 * (a truncated session) is delivered as UV_EOF like a clean close: HTTP
 * framing above detects a cut message. */
/** The same, with bytes of the client already read (the transparent front
 * peeked its ClientHello): preread is a pool block (rp_buf_alloc) holding
 * preread_len bytes from its start, owned by the stream on success and still
 * the caller's when NULL is returned. */
struct rp_stream *rp_tls_stream_server_preread(struct rp_stream *inner, SSL_CTX *base_ctx,
                                               const char *host, rp_tls_select_cb select,
                                               void *select_arg, rp_tls_handshake_cb cb,
                                               char *preread, size_t preread_len);
/** The socket of a plain TCP stream into *fd (0), UV_EINVAL for other
 * streams (TLS, in-memory): only a plain socket may be spliced. The stream
 * keeps the socket. */
int rp_tcp_stream_fd(const struct rp_stream *s, int *fd);

/* splice(2) relay between two plain TCP streams (Linux; elsewhere
 * rp_splice_start says UV_ENOTSUP). Side 0 is a, side 1 is b; direction d
 * carries bytes from side d to side 1-d through a pipe made on its first
 * read. The relay polls dup()s of the two sockets, so the streams' own
 * handles stay as they were; the caller must have stopped reading both and
 * have nothing queued or being shut down on either. */
struct rp_splice;

struct rp_splice_cbs {
  /** n bytes read from side `from` (into its pipe). */
  void (*on_read)(void *data, int from, size_t n);
  /** n bytes written to side `to`. */
  void (*on_write)(void *data, int to, size_t n);
  /** EOF read from side `from` and passed on: side 1-from was shut down
   * for writing after everything before the EOF. */
  void (*on_eof)(void *data, int from);
  /** Failure on side `side` (err: a uv error code; writing: while writing
   * to it). fallback: the kernel refused splice with no byte in a pipe —
   * the caller may destroy the relay and go back to read/write. */
  void (*on_error)(void *data, int side, int err, bool writing, bool fallback);
};

/** Start relaying between a and b (both plain TCP, see above); a_eof and
 * b_eof say which sides already sent their EOF (that direction is over).
 * The callbacks may destroy the relay. 0 and *out, or an error (UV_ENOTSUP:
 * not here / not TCP, or what dup(2) said) with nothing changed. */
int rp_splice_start(struct rp_stream *a, struct rp_stream *b, bool a_eof, bool b_eof,
                    const struct rp_splice_cbs *cbs, void *data, struct rp_splice **out);
/** Stop relaying and release the dups and pipes (bytes still in a pipe are
 * lost: the caller is closing). The memory goes with the poll handles'
 * close callbacks. NULL is a no-op. */
void rp_splice_destroy(struct rp_splice *sp);

/** The local address of a TCP stream (0), UV_EINVAL for other streams. */
int rp_tcp_stream_sockname(const struct rp_stream *s, struct sockaddr_storage *ss);
/** The ClientHello's server name, or NULL (none sent, or s is not TLS). */
const char *rp_tls_stream_sni(const struct rp_stream *s);
/** The ALPN protocol agreed in the handshake, or NULL (none, or s is not TLS). */
const char *rp_tls_stream_alpn(const struct rp_stream *s);

#endif
