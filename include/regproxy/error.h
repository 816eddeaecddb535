#ifndef RP_ERROR_H
#define RP_ERROR_H

/* Error codes: 0 is success, failures are negative. libuv's own codes
 * (UV_E*, also negative) pass through unchanged; ours live below -10000. */
#define RP_ERRNO_MAP(XX)                                                                           \
  XX(INVAL, -10001, "invalid argument")                                                            \
  XX(NOMEM, -10002, "out of memory")                                                               \
  XX(PARSE, -10003, "malformed input")                                                             \
  XX(TOOBIG, -10004, "input too large")                                                            \
  XX(NEEDMORE, -10005, "more input needed")                                                        \
  XX(DENIED, -10006, "denied by policy")                                                           \
  XX(PROXY, -10007, "parent proxy refused the tunnel")                                             \
  XX(TIMEDOUT, -10008, "timed out")                                                                \
  XX(CONFIG, -10009, "configuration error")                                                        \
  XX(UPSTREAM, -10101, "upstream transfer failed")                                                 \
  XX(UPSTREAM_TLS, -10102, "upstream TLS handshake or verification failed")                        \
  XX(ABORTED, -10103, "transfer aborted by its receiver")                                          \
  XX(AUTH, -10104, "registry authentication failed")                                               \
  XX(UPSTREAM_HANDSHAKE, -10105, "upstream TLS handshake failed (not a TLS server?)")              \
  XX(DIGEST, -10201, "content does not match its digest or size")

enum rp_error {
#define XX(name, code, msg) RP_E##name = (code),
  RP_ERRNO_MAP(XX)
#undef XX
};

/** A static message for an rp_ or uv_ error code. */
const char *rp_strerror(int err);

#endif
