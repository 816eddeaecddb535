#ifndef RP_UPSTREAM_INTERNAL_H
#define RP_UPSTREAM_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include <openssl/x509.h>

/* What the engine trusts and presents upstream (trust.c): the base store
 * (system bundle + --upstream-ca) and, per registry host[:port] named in a
 * certs.d directory, a store with that directory's CAs added and its client
 * certificate pair. Reference-counted: every fetch holds the generation it
 * started with, so a reload never pulls material from under a transfer. */

struct rp__certsd_host {
  char *name;        /* "host" or "host:port", as the directory is named */
  char *dir;         /* DIR/<name>, for messages */
  X509_STORE *store; /* base + this directory's CAs; NULL when it has none */
  char *ca_pem;      /* this directory's CAs as PEM (libcurl's reuse key), or NULL */
  size_t ca_pem_len;
  char *cert_file; /* the client pair, or NULL */
  char *cert_pem, *key_pem;
  size_t cert_pem_len, key_pem_len;
};

struct rp_upstream_trust {
  int refs;
  X509_STORE *base; /* --upstream-ca; the system bundle once sys_loaded */
  bool sys_loaded;
  struct rp__certsd_host *hosts;
  size_t nhosts;
  char *dirs; /* the directories read, ", "-separated, for messages */
};

/** malloc'd printf (auth.c); NULL when out of memory. */

/** Add the system bundle to the stores, once per generation (on the loop,
 * at the first upstream TLS connection). */
void rp__trust_load_system(struct rp_upstream_trust *t);
/** Take one more reference; returns t. */
struct rp_upstream_trust *rp__trust_ref(struct rp_upstream_trust *t);
/** The entry for a URL's host and port (port 443 is looked up without it),
 * or NULL when no certs.d directory names it. */
const struct rp__certsd_host *rp__trust_find(const struct rp_upstream_trust *t, const char *host,
                                             long port);

#endif
