/* The growable output buffer (struct rp_sbuf), and a malloc'd printf. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "regproxy/util.h"

static void grow(struct rp_sbuf *b, size_t need) {
  size_t cap;
  char *np;
  if (b->oom || b->len + need <= b->cap)
    return;
  cap = b->cap ? b->cap : 512;
  while (cap < b->len + need)
    cap *= 2;
  np = realloc(b->p, cap);
  if (np == NULL) {
    b->oom = 1;
    return;
  }
  b->p = np;
  b->cap = cap;
}

void rp_sbuf_add(struct rp_sbuf *b, const char *s, size_t n) {
  grow(b, n + 1);
  if (b->oom)
    return;
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

void rp_sbuf_adds(struct rp_sbuf *b, const char *s) {
  rp_sbuf_add(b, s, strlen(s));
}

void rp_sbuf_addf(struct rp_sbuf *b, const char *fmt, ...) {
  va_list ap;
  int n;
  va_start(ap, fmt);
  n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0)
    return;
  grow(b, (size_t)n + 1);
  if (b->oom)
    return;
  va_start(ap, fmt);
  vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
}

char *rp_sbuf_take(struct rp_sbuf *b, size_t *len) {
  char *p = b->oom ? NULL : b->p;
  if (b->oom)
    free(b->p);
  *len = b->len;
  b->p = NULL;
  b->len = b->cap = 0;
  b->oom = 0;
  return p;
}

void rp_sbuf_free(struct rp_sbuf *b) {
  free(b->p);
  b->p = NULL;
  b->len = b->cap = 0;
  b->oom = 0;
}

char *rp_asprintf(const char *fmt, ...) {
  va_list ap;
  char *out = NULL;
  va_start(ap, fmt);
  if (vasprintf(&out, fmt, ap) < 0)
    out = NULL;
  va_end(ap);
  return out;
}
