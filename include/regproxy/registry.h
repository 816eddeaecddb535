#ifndef RP_REGISTRY_H
#define RP_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "regproxy/http.h"

/* Registry API paths (OCI distribution spec) and the identities the cache
 * keys on (contract §3). */

enum rp_reg_kind {
  RP_REG_OTHER,    /* anything else under /v2/ (tags list, uploads, referrers, catalog): pass */
  RP_REG_BASE,     /* /v2/ */
  RP_REG_MANIFEST, /* /v2/<name>/manifests/<tag|digest> */
  RP_REG_BLOB,     /* /v2/<name>/blobs/<digest> */
  RP_REG_NOT_V2,   /* not a registry API path at all */
  RP_REG_KIND_LAST
};

struct rp_reg_path {
  enum rp_reg_kind kind;
  char name[256];     /* repository, e.g. "library/alpine" */
  char ref[160];      /* tag or digest */
  bool ref_is_digest; /* sha256/sha512 digest that may be cached */
  char ns[256];       /* ?ns= as a canonical identity (mirror mode), "" when absent */
};

/** Classify a request target path (with query). Names, tags and digests are
 * checked exactly against the spec grammars; anything that does not match
 * is RP_REG_OTHER (passed through, never mapped to a file). The path is not
 * percent-decoded. A malformed query (bytes outside RFC 3986, a broken
 * escape, ns= twice or not a registry host[:port]) makes any path OTHER
 * with ns "". ns holds the canonical identity (rp_reg_canonical) of the
 * decoded ?ns= value; an IPv6 registry must be bracketed. A manifest by a
 * well-formed digest of another algorithm is RP_REG_MANIFEST with
 * ref_is_digest false; sha256/sha512 with a wrong encoding is OTHER. */
void rp_reg_path_parse(const char *path, size_t len, struct rp_reg_path *out);

/** Canonical registry identity: "docker.io", "index.docker.io" and
 * "registry-1.docker.io" are one registry "docker.io"; others lower-case,
 * trailing dot and ":443" dropped, IPv6 bracketed. host may carry its own
 * ":port" (used when port is 0; port 0 and no port mean none). Writes into
 * buf ("" when host is unusable or the result does not fit); returns buf. */
const char *rp_reg_canonical(const char *host, uint16_t port, char *buf, size_t bufsz);
/** The upstream host[:port] for a canonical identity ("docker.io" ->
 * "registry-1.docker.io"; others are returned as they are). */
const char *rp_reg_upstream_host(const char *canonical);

/* An image reference as `regproxy prefetch` takes it, normalised the way
 * docker and containerd do (distribution/reference v0.6 ParseNormalizedNamed
 * followed by TagNameOnly). */
struct rp_reg_ref {
  char registry[256]; /* canonical identity (rp_reg_canonical), "docker.io" for Docker Hub */
  char repo[256];     /* repository path, "library/alpine" for Docker Hub official images */
  char tag[129];      /* "" when a digest was given without a tag; "latest" when neither */
  char digest[140];   /* "sha256:<hex>" / "sha512:<hex>" when given, else "" */
};

/** Parse a docker-style image reference ("alpine", "alpine:3.18", "ghcr.io/org/app:1",
 * "localhost:5000/x", "[::1]:5000/x:tag", "library/alpine@sha256:…"). The first path
 * component names the registry when it holds '.' or ':', is "localhost" or has an upper-case
 * letter; otherwise the registry is Docker Hub. Any spelling of Docker Hub (rp_reg_canonical
 * gives "docker.io") puts a one-component repository under "library/". A tag and a digest may
 * both be given and are both kept. Only sha256 and sha512 digests are accepted. Reads exactly
 * n bytes of s. 0, or RP_EPARSE with every field of *out "" and *why (when why is not NULL)
 * set to a static message. */
int rp_reg_ref_parse(const char *s, size_t n, struct rp_reg_ref *out, const char **why);

/** The Accept key (contract §3): the sorted, de-duplicated set of media types
 * across all Accept header lines, parameters and q-values dropped, joined
 * with ','. Only ranges that can select a manifest are members (the known
 * manifest media types, "application" "/" "*" and the full wildcard "*" "/"
 * "*"), so a tag has a bounded number of keys. Malformed
 * ranges and ranges refused with q=0 are no members. No Accept at all gives
 * "" (accepts anything, RFC 9110 §12.5.1); an Accept with nothing usable
 * gives "?" (accepts nothing). Members that do not fit bufsz are dropped
 * from the end, which only narrows the key; RP_REG_ACCEPT_KEY_SIZE holds
 * every real client's set. */
#define RP_REG_ACCEPT_KEY_SIZE 1024
/** Is this Content-Type (parameters ignored, no case) a manifest media type
 * (OCI image index/manifest, Docker manifest list, schema 2, schema 1)? */
bool rp_reg_is_manifest_type(const char *type, size_t n);
void rp_reg_accept_key(const struct rp_http_head *h, char *buf, size_t bufsz);
/** May a remembered answer of media_type be served to this Accept key? Yes
 * when the key is "" or holds the full wildcard, media_type itself, or its
 * "type/" wildcard; compared without case, media_type's parameters ignored. */
bool rp_reg_accept_allows(const char *accept_key, const char *media_type);

#endif
