/* libFuzzer target for the registry path parser and the Accept key. The
 * whole input is a request path; it is also cut at newlines into header
 * lines ("Name: value", or a bare Accept value) of a synthetic head, whose
 * key must be sorted, de-duplicated and lower-case. The first line also
 * goes through rp_reg_canonical. */

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "regproxy/registry.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(bool ok) {
  if (!ok)
    abort();
}

static bool name_sane(const char *s) {
  size_t n = strlen(s);
  return n > 0 && n < 256 && strstr(s, "..") == NULL && strstr(s, "//") == NULL && s[0] != '/' &&
         s[n - 1] != '/' && strchr(s, '%') == NULL;
}

static void check_path(const struct rp_reg_path *p) {
  check(p->kind >= RP_REG_OTHER && p->kind < RP_REG_KIND_LAST);
  check(memchr(p->name, '\0', sizeof p->name) != NULL);
  check(memchr(p->ref, '\0', sizeof p->ref) != NULL);
  check(memchr(p->ns, '\0', sizeof p->ns) != NULL);
  if (p->kind == RP_REG_MANIFEST || p->kind == RP_REG_BLOB) {
    check(name_sane(p->name));
    check(p->ref[0] != '\0' && strchr(p->ref, '/') == NULL); /* "a..b" is a valid tag */
  } else {
    check(p->name[0] == '\0' && p->ref[0] == '\0' && !p->ref_is_digest);
  }
  if (p->kind == RP_REG_BLOB)
    check(p->ref_is_digest);
  if (p->kind == RP_REG_NOT_V2)
    check(p->ns[0] == '\0');
  if (p->ns[0] != '\0')
    check(strchr(p->ns, '/') == NULL && strstr(p->ns, "..") == NULL);
}

static void check_key(const char *key) {
  const char *m = key, *prev = NULL;
  size_t prevn = 0;

  if (key[0] == '\0' || strcmp(key, "?") == 0)
    return;
  for (;;) {
    size_t n = strcspn(m, ",");
    check(n > 0 && memchr(m, '/', n) != NULL);
    for (size_t i = 0; i < n; i++)
      check(m[i] > ' ' && m[i] < 0x7f && !(m[i] >= 'A' && m[i] <= 'Z') && m[i] != ';');
    if (prev != NULL) {
      size_t k = prevn < n ? prevn : n;
      int c = memcmp(prev, m, k);
      check(c < 0 || (c == 0 && prevn < n)); /* strictly increasing */
    }
    if (n == 3 && memcmp(m, "*/*", 3) == 0)
      check(rp_reg_accept_allows(key, "x/y"));
    prev = m;
    prevn = n;
    if (m[n] == '\0')
      break;
    m += n + 1;
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  struct rp_reg_path p;
  struct rp_http_header hdrs[RP_HTTP_MAX_HEADERS];
  struct rp_http_head h;
  char key[RP_REG_ACCEPT_KEY_SIZE], small[24], canon[300], *first;
  const char *s = (const char *)data, *nl;
  size_t start = 0, firstlen;

  rp_reg_path_parse(s, size, &p);
  check_path(&p);

  memset(&h, 0, sizeof h);
  h.headers = hdrs;
  for (size_t i = 0; i <= size && h.nheaders < RP_HTTP_MAX_HEADERS; i++) {
    struct rp_http_header *hd;
    const char *line = s + start, *colon;
    size_t n;
    if (i < size && s[i] != '\n')
      continue;
    n = i - start;
    start = i + 1;
    hd = &hdrs[h.nheaders++];
    colon = memchr(line, ':', n);
    if (colon != NULL) {
      hd->name = line;
      hd->name_len = (size_t)(colon - line);
      hd->value = colon + 1;
      hd->value_len = n - hd->name_len - 1;
    } else {
      hd->name = "Accept";
      hd->name_len = 6;
      hd->value = line;
      hd->value_len = n;
    }
  }
  rp_reg_accept_key(&h, key, sizeof key);
  check(strlen(key) < sizeof key);
  check_key(key);
  rp_reg_accept_key(&h, small, sizeof small);
  check(strlen(small) < sizeof small);
  check_key(small);
  /* A key that had to drop members allows no more than the whole key. */
  check(small[0] != '\0' || key[0] == '\0');
  check(rp_reg_accept_allows(key, "application/vnd.oci.image.index.v1+json") ||
        !rp_reg_accept_allows(small, "application/vnd.oci.image.index.v1+json"));

  /* The first line, NUL-terminated, as a stored media type and as a host. */
  nl = memchr(s, '\n', size);
  firstlen = nl != NULL ? (size_t)(nl - s) : size;
  first = malloc(firstlen + 1);
  if (first == NULL)
    return 0;
  memcpy(first, s, firstlen);
  first[firstlen] = '\0';
  rp_reg_accept_allows(key, first);
  rp_reg_accept_allows(first, "application/json");
  rp_reg_canonical(first, size > 0 ? (uint16_t)(data[0] * 257u) : 0, canon, sizeof canon);
  check(strlen(canon) < sizeof canon);
  check(strstr(canon, "..") == NULL && strchr(canon, '/') == NULL);
  rp_reg_upstream_host(canon);
  rp_reg_canonical(first, 0, small, sizeof small);
  free(first);
  return 0;
}
