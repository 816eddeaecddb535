#ifndef RP_HTTP_H
#define RP_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>
#include <stdint.h>

/* HTTP/1.x glue around llhttp: request and response heads, the strict
 * checks llhttp 8 leaves to us (contract §7), request-target forms, and the
 * helpers to write heads and chunked bodies. */

#define RP_HTTP_HEAD_MAX    (64 * 1024)
#define RP_HTTP_MAX_HEADERS 256

struct rp_http_header {
  const char *name;
  size_t name_len;
  const char *value;
  size_t value_len;
};

struct rp_http_head {
  const char *method; /* requests */
  size_t method_len;
  int method_id; /* llhttp_method_t */
  const char *target;
  size_t target_len;
  int status; /* responses */
  const char *reason;
  size_t reason_len;
  unsigned major, minor;
  struct rp_http_header *headers;
  size_t nheaders;
  int64_t content_length; /* -1 when absent */
  bool chunked;
  bool keep_alive;
  bool upgrade;
};

enum rp_http_type { RP_HTTP_REQUEST, RP_HTTP_RESPONSE };

enum rp_http_status {
  RP_HTTP_OK,      /* all input consumed, message not finished */
  RP_HTTP_HEAD,    /* requests: the head is done (on_head ran); call resume for the body */
  RP_HTTP_DONE,    /* a message ended; *consumed tells where; call resume */
  RP_HTTP_UPGRADE, /* CONNECT (or upgrade) head done: the rest is not HTTP */
  RP_HTTP_ERROR    /* see rp_http_parser_error */
};

struct rp_http_callbacks {
  /** The head is complete; pointers stay valid until the next message. A
   * non-zero return aborts parsing with an error. */
  int (*on_head)(void *data, const struct rp_http_head *head);
  /** Body bytes (already de-chunked). Non-zero aborts. */
  int (*on_body)(void *data, const char *at, size_t len);
};

struct rp_http_parser;

struct rp_http_parser *rp_http_parser_create(enum rp_http_type type,
                                             const struct rp_http_callbacks *cb, void *data);
void rp_http_parser_destroy(struct rp_http_parser *p);
/** Start afresh, as if just created (after CONNECT: the bytes inside a
 * terminated TLS session are a new HTTP stream). */
void rp_http_parser_reset(struct rp_http_parser *p);
/** Parse input; *consumed is how much was used (all of it for RP_HTTP_OK). */
enum rp_http_status rp_http_parser_execute(struct rp_http_parser *p, const char *at, size_t len,
                                           size_t *consumed);
/** Continue after RP_HTTP_HEAD (with the body) or RP_HTTP_DONE (with the
 * next message). */
void rp_http_parser_resume(struct rp_http_parser *p);
/** The peer closed: ends a read-until-close body. RP_HTTP_DONE, or ERROR if
 * a message was cut short. RP_HTTP_OK when no message had begun. */
enum rp_http_status rp_http_parser_finish(struct rp_http_parser *p);
/** Responses: the request was HEAD (or the like): no body follows. */
void rp_http_parser_expect_no_body(struct rp_http_parser *p, bool no_body);
/** After RP_HTTP_ERROR: the status to answer (400, 431, 501…) and a one-line reason. */
int rp_http_parser_error(const struct rp_http_parser *p, const char **reason);
/** True when bytes of a message have been seen but the head is not done. */
bool rp_http_parser_in_head(const struct rp_http_parser *p);
/** True when a body is being received (head done, message not finished). */
bool rp_http_parser_in_body(const struct rp_http_parser *p);
/** Upstream responses: does the body run until the connection closes? */
bool rp_http_parser_body_until_close(const struct rp_http_parser *p);

const struct rp_http_header *rp_http_header_find(const struct rp_http_head *h, const char *name);
bool rp_http_token_eq(const char *a, size_t alen, const char *lit);
/** Hop-by-hop: the RFC 9110 list, Proxy-*, and names listed in Connection. */
bool rp_http_is_hop_by_hop(const struct rp_http_head *h, const struct rp_http_header *hd);
const char *rp_http_reason(int status);
/** The decimal value of the first header called name among h[0..n): a size
 * such as Content-Length, or -1 when absent or not a plain number. */
int64_t rp_http_header_size(const struct rp_http_header *h, size_t n, const char *name);
/** A header that points at name and value (both NUL-terminated, the caller's). */
static inline void rp_http_header_init(struct rp_http_header *h, const char *name,
                                       const char *value) {
  h->name = name;
  h->name_len = strlen(name);
  h->value = value;
  h->value_len = strlen(value);
}
/** One "bytes=N-" or "bytes=N-M" range (RFC 9110 §14.1.2) against an object
 * of size bytes: 0 with [*off, *off + *len) inside it (M past the end is
 * cut to it); RP_EPARSE for anything else (several ranges, suffix ranges,
 * other units, stray characters, numbers past 2^64); RP_EINVAL when N is at
 * or past the end (416). */
int rp_http_range_parse(const char *v, size_t n, uint64_t size, uint64_t *off, uint64_t *len);

/* Request targets (contract §2). */
enum rp_target_form {
  RP_TARGET_ORIGIN,
  RP_TARGET_ABSOLUTE,
  RP_TARGET_AUTHORITY,
  RP_TARGET_ASTERISK
};

struct rp_target {
  enum rp_target_form form;
  bool https;     /* absolute-form scheme */
  char host[256]; /* lower-case, trailing dot removed, IPv6 without brackets */
  bool host_is_ip6;
  uint16_t port;
  const char *path; /* absolute-form and origin-form: path and query */
  size_t path_len;
  bool path_needs_slash; /* "http://h?q": write "/" before path */
};

/** Parse a CONNECT authority "host:port" strictly. 0 or RP_EPARSE with *why. */
int rp_target_parse_authority(const char *s, size_t n, struct rp_target *t, const char **why);
/** Parse any request target; CONNECT uses authority-form only. */
int rp_target_parse(const char *s, size_t n, bool is_connect, struct rp_target *t,
                    const char **why);
/** Parse a Host field value, uri-host[:port] (RFC 9112 §3.2): a host name
 * (lower-cased, one trailing dot removed), an IPv4 literal or [IPv6] (no zone
 * id), then an optional port 1-65535; default_port when there is none. Reads
 * only v[0..n). 0, or RP_EPARSE with a static *why. */
int rp_http_host_parse(const char *v, size_t n, uint16_t default_port, struct rp_target *t,
                       const char **why);
/** The request's one Host field, parsed by rp_http_host_parse; RP_EPARSE
 * also when there is none or more than one (RFC 9112 §3.2: answer 400). */
int rp_http_request_host(const struct rp_http_head *h, uint16_t default_port, struct rp_target *t,
                         const char **why);
/** Format host[:port] for Host / logs, bracketing IPv6 ("[::1]:443"). */
void rp_target_hostport(const struct rp_target *t, bool with_port, char *buf, size_t bufsz);

struct rp_sbuf;
/** Append h's end-to-end header lines ("Name: value\r\n"): hop-by-hop ones
 * and the one named skip (may be NULL) are left out. */
void rp_sbuf_add_end_to_end(struct rp_sbuf *b, const struct rp_http_head *h, const char *skip);

#endif
