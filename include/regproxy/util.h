#ifndef RP_UTIL_H
#define RP_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* Small helpers every layer may use: strings and hashing. util depends on
 * nothing else of regproxy. */

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

/** FNV-1a of a string, for small fixed hash tables. */
static inline uint32_t rp_str_hash(const char *s) {
  uint32_t h = 2166136261u;
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 16777619u;
  return h;
}

#endif
