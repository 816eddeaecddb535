#ifndef RP_TLS_INTERNAL_H
#define RP_TLS_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "regproxy/rules.h"
#include "regproxy/tls.h"

/* File names inside the CA directory. */
#define RP_CA_CERT_FILE "ca.crt"
#define RP_CA_KEY_FILE  "ca.key"

/* Serial numbers of the CA and of leaves: this many random bytes, top bit
 * clear (positive) and the next one set (never shortened by DER). */
#define RP_TLS_SERIAL_LEN 16

struct rp_ca {
  X509 *cert;
  EVP_PKEY *key;
  char *cert_path;
  char *pem; /* the certificate as PEM, NUL-terminated */
  size_t pem_len;
  bool created; /* made by this rp_ca_open */
};

/** Set *err (malloc'd, replacing what it held; err may be NULL) to the
 * formatted message and return rc. */
int rp__tls_fail(char **err, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/** Add to the CA certificate x a critical nameConstraints extension that
 * permits exactly the hosts of names (constraints.c has the mapping).
 * RP_ECONFIG and *err for an entry no constraint can express ("*", a
 * malformed name), RP_ENOMEM. */
int rp__ca_add_constraints(X509 *x, const struct rp_hostlist *names, char **err);
/** Give x a fresh random positive serial of RP_TLS_SERIAL_LEN bytes. */
int rp__tls_set_serial(X509 *x);
/** Add extension nid with the openssl.cnf-style value to x, in the context
 * of issuer (x itself for a self-signed certificate). */
int rp__tls_add_ext(X509 *x, X509 *issuer, int nid, const char *value);
/** A new EC P-256 key, NULL on failure. */
EVP_PKEY *rp__tls_ec_key(void);
/** OpenSSL's last queued error as one line in buf (drains the queue). */
const char *rp__tls_errstr(char *buf, size_t size);

/** Unit tests: pretend the clock says now (0 = use the real clock). */
void rp__leafcache_set_time(struct rp_leafcache *lc, time_t now);

#endif
