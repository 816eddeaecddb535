#ifndef RP_TLS_H
#define RP_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

/* The local CA (contract §2 MITM, §4 `ca`) and the per-host leaf certificates
 * minted from it. No sockets here: the TLS stream lives in net. */

struct rp_ca;
struct rp_hostlist;

/* How rp_ca_open treats a missing or an existing CA. */
struct rp_ca_opts {
  bool create;  /* make dir and a new CA when there is none */
  bool replace; /* make a new CA even when one exists (`ca init --force`) */
  /* What a new CA may sign for: a critical nameConstraints extension
   * permits exactly these hosts (the mitm list). NULL: no constraints. */
  const struct rp_hostlist *names;
};

/** Load the CA from dir ("ca.crt" 0644, "ca.key" 0600, dir 0700), or make
 * a new EC P-256 CA there as opts say. Refuses (RP_ECONFIG, *err says why,
 * malloc'd) a key readable by group/others, an unreadable key, a key that
 * does not match the certificate, a certificate that is not a CA, and names
 * a new CA cannot be limited to ("*"). Creation is atomic: a crash never
 * leaves half a CA behind (a replaced CA may be gone, never mismatched). */
int rp_ca_open(const char *dir, const struct rp_ca_opts *opts, struct rp_ca **out, char **err);
void rp_ca_destroy(struct rp_ca *ca);
/** True when the CA's certificate carries name constraints. */
bool rp_ca_constrained(const struct rp_ca *ca);
/** 0 when the CA may sign for every host the mitm list matches: it has no
 * name constraints, or every entry lies inside them. Else RP_ECONFIG with
 * *err (malloc'd) naming the first entry outside, what the CA may sign for,
 * and how to re-issue the CA. */
int rp_ca_check_names(const struct rp_ca *ca, const struct rp_hostlist *mitm, char **err);
/** True when this rp_ca_open made a new CA (so the caller can say how to
 * trust it). */
bool rp_ca_created(const struct rp_ca *ca);
/** Path of the CA certificate file. */
const char *rp_ca_cert_path(const struct rp_ca *ca);
/** The CA certificate as PEM (owned by the CA object). */
const char *rp_ca_cert_pem(const struct rp_ca *ca, size_t *len);

/* Leaf minting with a bounded per-host cache (LRU). */
struct rp_leafcache;

/** cap: hosts kept; leaves live now-1h..now+7d and are re-minted a day
 * before expiry. One leaf key (EC P-256) is shared by all leaves. */
int rp_leafcache_create(struct rp_ca *ca, size_t cap, struct rp_leafcache **out);
void rp_leafcache_destroy(struct rp_leafcache *lc);
/** An SSL_CTX serving a leaf for host (a DNS name, or an IP literal -> IP
 * SAN), ALPN http/1.1 only, TLS 1.2-1.3. The caller gets a reference
 * (SSL_CTX_free it). NULL on failure. */
SSL_CTX *rp_leafcache_ctx(struct rp_leafcache *lc, const char *host);
/** Leaves minted since creation (for tests and metrics). */
uint64_t rp_leafcache_minted(const struct rp_leafcache *lc);
/** A server SSL_CTX without a certificate: the one a TLS session starts on
 * before its SNI callback switches to the host's context. Reference owned
 * by the cache. */
SSL_CTX *rp_leafcache_base_ctx(struct rp_leafcache *lc);

#endif
