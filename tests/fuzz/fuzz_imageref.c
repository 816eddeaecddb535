/* libFuzzer target for rp_reg_ref_parse: whatever it accepts has every field
 * NUL-terminated, a registry that is its own canonical identity, a repository
 * the name grammar accepts, a valid tag and/or digest, and formats back into a
 * reference that parses to the same thing. Whatever it refuses leaves every
 * field empty and says why. */

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "regproxy/cache.h"
#include "regproxy/error.h"
#include "regproxy/registry.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_terminated(const char *field, size_t size) {
  if (memchr(field, '\0', size) == NULL)
    abort();
}

static void check_tag(const char *t) {
  size_t n = strlen(t);

  if (n > 128)
    abort();
  for (size_t i = 0; i < n; i++) {
    char c = t[i];
    int word =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
    if (!word && (i == 0 || (c != '.' && c != '-')))
      abort();
  }
}

/* A canonical registry a reference can spell again: one with '.' or ':', or
 * "localhost". A lone lower-case label ("foo" from "Foo/x") cannot be named
 * without the upper case it was written with. */
static int spellable(const char *registry) {
  return strchr(registry, '.') != NULL || strchr(registry, ':') != NULL ||
         strcmp(registry, "localhost") == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  struct rp_reg_ref r, again;
  struct rp_reg_path p;
  struct rp_digest d;
  char canon[300], path[300], text[800];
  const char *why = NULL;
  int len;

  memset(&r, 0xa5, sizeof r);
  if (rp_reg_ref_parse((const char *)data, size, &r, &why) != 0) {
    if (why == NULL || why[0] == '\0' || r.registry[0] != '\0' || r.repo[0] != '\0' ||
        r.tag[0] != '\0' || r.digest[0] != '\0')
      abort();
    return 0;
  }
  check_terminated(r.registry, sizeof r.registry);
  check_terminated(r.repo, sizeof r.repo);
  check_terminated(r.tag, sizeof r.tag);
  check_terminated(r.digest, sizeof r.digest);

  if (r.registry[0] == '\0' ||
      strcmp(rp_reg_canonical(r.registry, 0, canon, sizeof canon), r.registry) != 0)
    abort();
  /* Docker Hub has no one-component repositories: those are "library/". */
  if (strcmp(r.registry, "docker.io") == 0 && strchr(r.repo, '/') == NULL)
    abort();

  /* The path classifier holds the name grammar: the repository must come
   * back from it whole. */
  len = snprintf(path, sizeof path, "/v2/%s/manifests/latest", r.repo);
  if (len < 0 || (size_t)len >= sizeof path)
    abort();
  rp_reg_path_parse(path, (size_t)len, &p);
  if (p.kind != RP_REG_MANIFEST || strcmp(p.name, r.repo) != 0)
    abort();

  if (r.tag[0] == '\0' && r.digest[0] == '\0')
    abort();
  check_tag(r.tag);
  if (r.digest[0] != '\0' && rp_digest_parse(r.digest, strlen(r.digest), &d) != 0)
    abort();

  if (!spellable(r.registry))
    return 0;
  len = snprintf(text, sizeof text, "%s/%s%s%s%s%s", r.registry, r.repo, r.tag[0] ? ":" : "", r.tag,
                 r.digest[0] ? "@" : "", r.digest);
  if (len < 0 || (size_t)len >= sizeof text)
    abort();
  memset(&again, 0x5a, sizeof again);
  if (rp_reg_ref_parse(text, (size_t)len, &again, &why) != 0 ||
      strcmp(again.registry, r.registry) != 0 || strcmp(again.repo, r.repo) != 0 ||
      strcmp(again.tag, r.tag) != 0 || strcmp(again.digest, r.digest) != 0)
    abort();
  return 0;
}
