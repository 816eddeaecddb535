#ifndef RP_UTIL_H
#define RP_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* Small helpers every layer may use: strings, hashing, base64, sd_notify.
 * util depends on nothing else of regproxy (only error.h's codes). */

/* A growable output buffer for heads and bodies (bounded by the caller). An
 * allocation failure is remembered in oom and reported by rp_sbuf_take. */
struct rp_sbuf {
  char *p;
  size_t len, cap;
  int oom;
};
void rp_sbuf_add(struct rp_sbuf *b, const char *s, size_t n);
void rp_sbuf_adds(struct rp_sbuf *b, const char *s);
void rp_sbuf_addf(struct rp_sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/** Hand the bytes over (caller frees; NULL after an allocation failure) and
 * reset the buffer. */
char *rp_sbuf_take(struct rp_sbuf *b, size_t *len);
void rp_sbuf_free(struct rp_sbuf *b);
/** A malloc'd printf, or NULL when out of memory. */
char *rp_asprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/** FNV-1a of a string, for small fixed hash tables. */
static inline uint32_t rp_str_hash(const char *s) {
  uint32_t h = 2166136261u;
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 16777619u;
  return h;
}

/** Standard base64 (RFC 4648 §4, padded) of in[0..len): malloc'd and
 * NUL-terminated, the caller frees; NULL when out of memory or len is over
 * RP_BASE64_MAX. */
char *rp_base64_encode(const void *in, size_t len);
/** Standard base64 → bytes. The padding may be left out; anything but the
 * canonical encoding (whitespace, other characters, non-zero pad bits) is
 * RP_EPARSE, and so is len over RP_BASE64_MAX. 0 with *out malloc'd (caller
 * frees) and NUL-terminated, its length in *outlen; or RP_EPARSE / RP_ENOMEM. */
int rp_base64_decode(const char *in, size_t len, char **out, size_t *outlen);
/* OpenSSL's block functions count in int. */
#define RP_BASE64_MAX ((size_t)1 << 28)

/** Tell the service manager (systemd's $NOTIFY_SOCKET) about a state change:
 * "READY=1", "RELOADING=1", "STOPPING=1", "STATUS=…", newline-separated. A
 * no-op when not under systemd or built without libsystemd. */
void rp_notify(const char *state);

#endif
