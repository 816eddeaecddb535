#ifndef RP_REGISTRY_H
#define RP_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "regproxy/http.h"

/* Registry API paths (OCI distribution spec) and the identities the cache
 * keys on (SPEC §3). */

enum rp_reg_kind {
  RP_REG_OTHER, /* anything else under /v2/ (tags list, uploads, referrers, catalog): pass */
  RP_REG_BASE, /* /v2/ */
  RP_REG_MANIFEST, /* /v2/<name>/manifests/<tag|digest> */
  RP_REG_BLOB, /* /v2/<name>/blobs/<digest> */
  RP_REG_NOT_V2, /* not a registry API path at all */
  RP_REG_KIND_LAST
};

struct rp_reg_path {
  enum rp_reg_kind kind;
  char name[256]; /* repository, e.g. "library/alpine" */
  char ref[160]; /* tag or digest */
  bool ref_is_digest; /* sha256/sha512 digest that may be cached */
  char ns[256]; /* ?ns= (mirror mode), "" when absent */
};

/** Classify a request target path (with query). Names, tags and digests are
 * checked exactly against the spec grammars; anything that does not match
 * is RP_REG_OTHER (passed through, never mapped to a file). */
void rp_reg_path_parse(const char *path, size_t len, struct rp_reg_path *out);

/** Canonical registry identity: "docker.io", "index.docker.io" and
 * "registry-1.docker.io" are one registry "docker.io"; others lower-case,
 * ":443" dropped. Writes into buf; returns buf. */
const char *rp_reg_canonical(const char *host, uint16_t port, char *buf, size_t bufsz);
/** The upstream host for a canonical identity ("docker.io" -> "registry-1.docker.io"). */
const char *rp_reg_upstream_host(const char *canonical);

/** The Accept key (SPEC §3): the sorted, de-duplicated set of media types
 * across all Accept header lines, parameters and q-values dropped, joined
 * with ','. The full wildcard ("*" "/" "*") stays a member. */
void rp_reg_accept_key(const struct rp_http_head *h, char *buf, size_t bufsz);
/** May a remembered answer of media_type be served to this Accept key? */
bool rp_reg_accept_allows(const char *accept_key, const char *media_type);

#endif
