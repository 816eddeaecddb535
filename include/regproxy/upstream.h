#ifndef RP_UPSTREAM_H
#define RP_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <uv.h>

#include "regproxy/http.h"

/* The upstream engine: one libcurl multi handle driven by the libuv loop
 * (multi-socket API), HTTP/1.1 with connection reuse, TLS verified against
 * the system bundle plus --upstream-ca, --connect-to applied, the proxy set
 * explicitly on every transfer (libcurl never reads the environment). */

struct rp_connect_to;
struct rp_upstream;
struct rp_upstream_trust;

/* What upstream TLS trusts and presents: the system bundle plus ca_file for
 * every host, and per registry what the certs.d directories hold for it
 * (contract §4 --upstream-certs-dir). */
struct rp_upstream_trust_opts {
  const char *ca_file; /* --upstream-ca, or NULL */
  char *const *certs_dirs;
  size_t n_certs_dirs;
  bool certs_dirs_default; /* the defaults: an unreadable directory is a warning */
  const char *own_ca_pem;  /* regproxy's CA: never trusted from certs.d */
  size_t own_ca_pem_len;
};

/** Read the bundle and every certs.d directory now. RP_ECONFIG with *err
 * (malloc'd) naming the file on a bad one; the caller owns *out (one
 * reference, released with rp_upstream_trust_release). */
int rp_upstream_trust_load(const struct rp_upstream_trust_opts *o, struct rp_upstream_trust **out,
                           char **err);
void rp_upstream_trust_release(struct rp_upstream_trust *t);
/** Use t for transfers started from now on (takes its own reference);
 * running transfers keep the material they started with (SIGHUP). */
void rp_upstream_set_trust(struct rp_upstream *up, struct rp_upstream_trust *t);

struct rp_upstream_opts {
  const char *ca_file;             /* extra CA bundle, or NULL (when trust is NULL) */
  struct rp_upstream_trust *trust; /* or NULL: built from ca_file alone; a reference is taken */
  const struct rp_connect_to *connect_to;
  size_t n_connect_to;
  uint64_t connect_timeout_ms;
  uint64_t stall_timeout_ms; /* a transfer with no byte either way this long fails, 0 = never */
  uint32_t mark;             /* SO_MARK on upstream sockets, 0 = none */
};

int rp_upstream_create(uv_loop_t *loop, const struct rp_upstream_opts *opts,
                       struct rp_upstream **out);
/** Cancel every fetch (no callbacks) and release the engine; its libuv
 * handles close asynchronously, so run the loop afterwards. */
void rp_upstream_destroy(struct rp_upstream *up);
/** The loop the engine runs on (for modules that schedule work beside it). */
uv_loop_t *rp_upstream_loop(const struct rp_upstream *up);

/* Where an address leads (contract §3, token realms). IPv4-mapped IPv6 is
 * unmapped first, and so is NAT64's well-known prefix 64:ff9b::/96. */
enum rp_addr_class {
  RP_ADDR_PUBLIC,
  RP_ADDR_LOOPBACK,    /* 127.0.0.0/8, ::1 */
  RP_ADDR_LINK_LOCAL,  /* 169.254.0.0/16 (cloud metadata), fe80::/10 */
  RP_ADDR_PRIVATE,     /* 10/8, 172.16/12, 192.168/16, 100.64/10, 192.0.0/24, 198.18/15,
                          fc00::/7, fec0::/10, 64:ff9b:1::/48 */
  RP_ADDR_UNSPECIFIED, /* 0.0.0.0/8, :: (Linux connects them to the host itself) */
  RP_ADDR_RESERVED,    /* multicast, 240/4 and broadcast, documentation ranges, other ::/8 */
  RP_ADDR_CLASS_LAST
};

/** The class of an AF_INET or AF_INET6 address (other families: reserved). */
enum rp_addr_class rp_upstream_addr_class(const struct sockaddr *sa);
/** The class of a URL host: an IPv4 literal, an IPv6 literal with or without
 * brackets (a zone id is ignored), or "localhost" (loopback); -1 for any
 * other name, whose addresses are known only once it is resolved. */
int rp_upstream_host_class(const char *host);
/** "public", "loopback", "link-local", "private", "unspecified", "reserved". */
const char *rp_upstream_addr_class_name(enum rp_addr_class c);

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
  /* Connect only to public addresses and to the internal classes in
   * internal_ok (bits 1u << RP_ADDR_*): every address the transfer would open
   * a socket to is checked before the socket exists, and a reused connection
   * before the request is sent; a refusal fails the fetch with RP_EDENIED.
   * Through a proxy regproxy connects only to the proxy and never sees the
   * target's address: then an IP-literal or "localhost" URL host is checked
   * instead, names are left to the proxy, and redirects are not followed. */
  bool forbid_internal;
  unsigned internal_ok;
  /* Give up on a slow source fast (a registry mirror, with another source to
   * fall back to): connecting, and any stretch without a byte, bounded by
   * these (0: the engine's connect timeout; no stall bound). */
  uint64_t connect_timeout_ms;
  uint64_t stall_timeout_ms;
  /* Connect to this address and port for the URL's own host:port, whatever
   * DNS and --connect-to say ("" for none): transparent mode's original
   * destination. TLS is still verified against the URL's host; a redirect to
   * another host resolves as usual. Arrays, so a copied request keeps them. */
  char connect_ip[64]; /* IPv6 without brackets */
  uint16_t connect_port;
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
/** The address the response came from ("10.0.0.7", "::1"; from on_head or
 * on_done) into buf: 0, or UV_ENOENT when unknown or when the transfer went
 * through a proxy (the proxy's address says nothing about the origin). */
int rp_fetch_peer_ip(struct rp_fetch *f, char *buf, size_t bufsz);

#endif
