/* Leaf certificates minted per host from the local CA, and the bounded LRU
 * of per-host server SSL_CTXs that serve them (contract §2 MITM). A mint costs
 * one signature and one SSL_CTX (well under a millisecond), and a host is
 * minted again only when its leaf nears expiry or it fell out of the LRU.
 * Not thread-safe: the cache belongs to the loop thread. */

/* fast_leaf_key() needs EVP_PKEY_get1_EC_KEY, deprecated since OpenSSL 3.0. */
#define OPENSSL_SUPPRESS_DEPRECATED

#include <arpa/inet.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "regproxy/error.h"
#include "regproxy/log.h"
#include "tls/internal.h"

#define LEAF_BACKDATE_S    (60 * 60) /* notBefore = now - 1h (client clock skew) */
#define LEAF_LIFETIME_DAYS 7         /* notAfter = now + 7d */
#define LEAF_DAY_S         ((time_t)24 * 60 * 60)
#define LEAF_RENEW_S       LEAF_DAY_S        /* re-mint when less than this is left */
#define LEAF_CN_MAX        64                /* ub-common-name */
#define HOST_MAX           253               /* longest DNS name */
#define BUCKETS_MAX        ((size_t)1 << 20) /* the hash table stops growing here */
#define BASE_SESS_CACHE    1024              /* server-side session cache entries */

/* ALPN: the only protocol offered to clients (HTTP/2 inside MITM is out of
 * scope, and a client offering it alone must fail rather than be misread). */
#define ALPN_HTTP11     "http/1.1"
#define ALPN_HTTP11_LEN 8

struct leaf {
  char *host; /* lower case; IP literals in inet_ntop form */
  SSL_CTX *ctx;
  time_t not_before;
  time_t not_after;
  struct leaf *hnext;       /* hash chain */
  struct leaf *prev, *next; /* LRU list, most recently used first */
};

struct rp_leafcache {
  /* Our own references to the CA's certificate and key: the cache may
   * outlive the rp_ca it was made from. */
  X509 *ca_cert;
  EVP_PKEY *ca_key;
  EVP_PKEY *key; /* shared by every leaf */
  SSL_CTX *base;
  struct leaf **buckets;
  size_t nbuckets; /* a power of two */
  struct leaf *head, *tail;
  size_t n, cap;
  uint64_t minted;
  time_t fake_now; /* unit tests; 0 = the real clock */
};

static time_t now_of(const struct rp_leafcache *lc) {
  return lc->fake_now != 0 ? lc->fake_now : time(NULL);
}

void rp__leafcache_set_time(struct rp_leafcache *lc, time_t now) {
  lc->fake_now = now;
}

/* Pick http/1.1 from the client's list. A client that offers ALPN without it
 * gets a fatal no_application_protocol alert; no ALPN at all is fine (the
 * callback does not run). */
static int on_alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                          const unsigned char *in, unsigned int inlen, void *arg) {
  unsigned int i = 0;
  unsigned int len;

  while (i < inlen) {
    len = in[i];
    if (len > inlen - i - 1)
      break;
    if (len == ALPN_HTTP11_LEN && memcmp(in + i + 1, ALPN_HTTP11, ALPN_HTTP11_LEN) == 0) {
      *out = in + i + 1;
      *outlen = (unsigned char)len;
      return SSL_TLSEXT_ERR_OK;
    }
    i += 1 + len;
  }
  return SSL_TLSEXT_ERR_ALERT_FATAL;
}

/* A TLS 1.2-1.3 server context with our ALPN policy and no certificate. The
 * ALPN callback is set on every context: after SSL_set_SSL_CTX the
 * handshake consults the per-host one. */
static SSL_CTX *new_server_ctx(void) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

  if (ctx == NULL)
    return NULL;
  if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
      SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) != 1) {
    SSL_CTX_free(ctx);
    return NULL;
  }
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
  SSL_CTX_set_alpn_select_cb(ctx, on_alpn_select, NULL);
  /* One TLS 1.3 session ticket, not OpenSSL's two: each costs an encrypted
   * session and a record per handshake (0.81 -> 0.67 CPU-ms per MITM
   * handshake, bench/peers.py --only handshakes), and the Go clients that
   * pull images keep no session cache; curl resumes with the one. */
  SSL_CTX_set_num_tickets(ctx, 1);
  return ctx;
}

/* X509_set_pubkey() runs a provider-backed key through OSSL_ENCODER and
 * decodes the result back, ~0.45 ms on OpenSSL 3.0: more than the rest of a
 * mint. The same key held as a legacy EC_KEY takes the direct encoding path
 * (~10 us). Takes key; returns the key to use (key itself when no copy can
 * be made). */
static EVP_PKEY *fast_leaf_key(EVP_PKEY *key) {
#ifndef OPENSSL_NO_DEPRECATED_3_0
  EC_KEY *ec = EVP_PKEY_get1_EC_KEY(key);
  EVP_PKEY *legacy = EVP_PKEY_new();

  if (ec == NULL || legacy == NULL || EVP_PKEY_assign(legacy, EVP_PKEY_EC, ec) != 1) {
    EC_KEY_free(ec);
    EVP_PKEY_free(legacy);
    ERR_clear_error();
    return key;
  }
  EVP_PKEY_free(key);
  return legacy;
#else
  return key;
#endif
}

static const EVP_MD *sign_md(EVP_PKEY *key) {
  int id = EVP_PKEY_base_id(key);

  return id == EVP_PKEY_ED25519 || id == EVP_PKEY_ED448 ? NULL : EVP_sha256();
}

/* Normalise host into key: lower case, IP literals (brackets allowed for
 * IPv6) in canonical form with their bytes in addr. Refuses anything that
 * is neither an IP literal nor made of DNS name characters. */
static int parse_host(const char *host, char key[HOST_MAX + 1], unsigned char addr[16],
                      size_t *addrlen) {
  char tmp[HOST_MAX + 1];
  size_t len = host != NULL ? strlen(host) : 0;

  *addrlen = 0;
  if (len == 0 || len > HOST_MAX)
    return RP_EINVAL;
  if (host[0] == '[' && host[len - 1] == ']' && len > 2) {
    memcpy(tmp, host + 1, len - 2);
    tmp[len - 2] = '\0';
    if (inet_pton(AF_INET6, tmp, addr) != 1)
      return RP_EINVAL;
    *addrlen = 16;
  } else if (inet_pton(AF_INET, host, addr) == 1) {
    *addrlen = 4;
  } else if (inet_pton(AF_INET6, host, addr) == 1) {
    *addrlen = 16;
  }
  if (*addrlen != 0) {
    if (inet_ntop(*addrlen == 4 ? AF_INET : AF_INET6, addr, key, HOST_MAX + 1) == NULL)
      return RP_EINVAL;
    return 0;
  }
  for (size_t i = 0; i < len; i++) {
    char c = host[i];

    if (c >= 'A' && c <= 'Z')
      c = (char)(c - 'A' + 'a');
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_'))
      return RP_EINVAL;
    key[i] = c;
  }
  key[len] = '\0';
  return 0;
}

static int add_san(X509 *x, const char *host, const unsigned char *addr, size_t addrlen) {
  GENERAL_NAMES *names = sk_GENERAL_NAME_new_null();
  GENERAL_NAME *gen = GENERAL_NAME_new();
  ASN1_STRING *s = NULL;
  int rc = RP_ENOMEM;

  if (names == NULL || gen == NULL)
    goto out;
  if (addrlen != 0) {
    s = ASN1_OCTET_STRING_new();
    if (s == NULL || ASN1_OCTET_STRING_set(s, addr, (int)addrlen) != 1)
      goto out;
    GENERAL_NAME_set0_value(gen, GEN_IPADD, s);
  } else {
    s = ASN1_IA5STRING_new();
    if (s == NULL || ASN1_STRING_set(s, host, -1) != 1)
      goto out;
    GENERAL_NAME_set0_value(gen, GEN_DNS, s);
  }
  s = NULL;
  if (sk_GENERAL_NAME_push(names, gen) <= 0)
    goto out;
  gen = NULL;
  /* An IP leaf has an empty subject, and then RFC 5280 §4.2.1.6 wants the
   * SAN critical. */
  if (X509_add1_ext_i2d(x, NID_subject_alt_name, names, addrlen != 0, X509V3_ADD_DEFAULT) != 1)
    goto out;
  rc = 0;
out:
  ASN1_STRING_free(s);
  GENERAL_NAME_free(gen);
  GENERAL_NAMES_free(names);
  return rc;
}

static X509 *mint_cert(struct rp_leafcache *lc, const char *host, const unsigned char *addr,
                       size_t addrlen, time_t now) {
  size_t cnlen = strlen(host);
  X509 *x = X509_new();
  X509_NAME *name = X509_NAME_new();
  X509 *ret = NULL;

  if (x == NULL || name == NULL)
    goto out;
  if (X509_set_version(x, X509_VERSION_3) != 1 || rp__tls_set_serial(x) != 0)
    goto out;
  if (cnlen > LEAF_CN_MAX)
    cnlen = LEAF_CN_MAX;
  /* No CN for an IP literal: OpenSSL checks a CN such as "127.0.0.1" as a
   * DNS name against the CA's name constraints when the leaf has no DNS SAN,
   * and the CA's DNS subtrees would refuse it. Clients go by the SAN. */
  if (addrlen == 0 &&
      X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)host, (int)cnlen,
                                 -1, 0) != 1)
    goto out;
  if (X509_set_subject_name(x, name) != 1 ||
      X509_set_issuer_name(x, X509_get_subject_name(lc->ca_cert)) != 1)
    goto out;
  if (ASN1_TIME_adj(X509_getm_notBefore(x), now, 0, -LEAF_BACKDATE_S) == NULL ||
      ASN1_TIME_adj(X509_getm_notAfter(x), now, LEAF_LIFETIME_DAYS, 0) == NULL)
    goto out;
  if (X509_set_pubkey(x, lc->key) != 1)
    goto out;
  if (rp__tls_add_ext(x, lc->ca_cert, NID_basic_constraints, "critical,CA:FALSE") != 0 ||
      rp__tls_add_ext(x, lc->ca_cert, NID_key_usage, "critical,digitalSignature") != 0 ||
      rp__tls_add_ext(x, lc->ca_cert, NID_ext_key_usage, "serverAuth") != 0 ||
      rp__tls_add_ext(x, lc->ca_cert, NID_subject_key_identifier, "hash") != 0 ||
      rp__tls_add_ext(x, lc->ca_cert, NID_authority_key_identifier, "keyid") != 0)
    goto out;
  if (add_san(x, host, addr, addrlen) != 0)
    goto out;
  if (X509_sign(x, lc->ca_key, sign_md(lc->ca_key)) <= 0)
    goto out;
  ret = x;
  x = NULL;
out:
  X509_NAME_free(name);
  X509_free(x);
  return ret;
}

/* A new leaf for host and the SSL_CTX serving it with the CA as its chain. */
static SSL_CTX *mint(struct rp_leafcache *lc, const char *host, const unsigned char *addr,
                     size_t addrlen, time_t now) {
  X509 *x = mint_cert(lc, host, addr, addrlen, now);
  SSL_CTX *ctx = NULL;
  SSL_CTX *ret = NULL;

  if (x == NULL)
    goto out;
  ctx = new_server_ctx();
  if (ctx == NULL)
    goto out;
  if (SSL_CTX_use_certificate(ctx, x) != 1 || SSL_CTX_use_PrivateKey(ctx, lc->key) != 1 ||
      SSL_CTX_check_private_key(ctx) != 1 || SSL_CTX_add1_chain_cert(ctx, lc->ca_cert) != 1)
    goto out;
  lc->minted++;
  ret = ctx;
  ctx = NULL;
out:
  SSL_CTX_free(ctx);
  X509_free(x);
  return ret;
}

/* FNV-1a. */
static size_t bucket_of(const struct rp_leafcache *lc, const char *key) {
  uint64_t h = 14695981039346656037ULL;

  for (const unsigned char *p = (const unsigned char *)key; *p != '\0'; p++) {
    h ^= *p;
    h *= 1099511628211ULL;
  }
  return (size_t)(h & (lc->nbuckets - 1));
}

static void lru_unlink(struct rp_leafcache *lc, struct leaf *e) {
  if (e->prev != NULL)
    e->prev->next = e->next;
  else
    lc->head = e->next;
  if (e->next != NULL)
    e->next->prev = e->prev;
  else
    lc->tail = e->prev;
  e->prev = e->next = NULL;
}

static void lru_push_front(struct rp_leafcache *lc, struct leaf *e) {
  e->prev = NULL;
  e->next = lc->head;
  if (lc->head != NULL)
    lc->head->prev = e;
  lc->head = e;
  if (lc->tail == NULL)
    lc->tail = e;
}

static void leaf_free(struct leaf *e) {
  if (e == NULL)
    return;
  SSL_CTX_free(e->ctx);
  free(e->host);
  free(e);
}

static void evict_lru(struct rp_leafcache *lc) {
  struct leaf *e = lc->tail;
  struct leaf **pp;

  if (e == NULL)
    return;
  for (pp = &lc->buckets[bucket_of(lc, e->host)]; *pp != e; pp = &(*pp)->hnext)
    ;
  *pp = e->hnext;
  lru_unlink(lc, e);
  lc->n--;
  leaf_free(e);
}

int rp_leafcache_create(struct rp_ca *ca, size_t cap, struct rp_leafcache **out) {
  struct rp_leafcache *lc = NULL;
  int rc = RP_ENOMEM;

  *out = NULL;
  if (ca == NULL || cap == 0)
    return RP_EINVAL;
  lc = calloc(1, sizeof *lc);
  if (lc == NULL)
    goto out;
  lc->cap = cap;
  lc->nbuckets = 16;
  while (lc->nbuckets < cap && lc->nbuckets < BUCKETS_MAX)
    lc->nbuckets *= 2;
  lc->buckets = calloc(lc->nbuckets, sizeof *lc->buckets);
  if (lc->buckets == NULL)
    goto out;
  if (X509_up_ref(ca->cert) != 1)
    goto out;
  lc->ca_cert = ca->cert;
  if (EVP_PKEY_up_ref(ca->key) != 1)
    goto out;
  lc->ca_key = ca->key;
  lc->key = rp__tls_ec_key();
  if (lc->key == NULL)
    goto out;
  lc->key = fast_leaf_key(lc->key);
  lc->base = new_server_ctx();
  if (lc->base == NULL)
    goto out;
  /* Sessions of every host land in the base context's cache. */
  SSL_CTX_sess_set_cache_size(lc->base, BASE_SESS_CACHE);
  *out = lc;
  lc = NULL;
  rc = 0;
out:
  if (rc != 0)
    ERR_clear_error();
  rp_leafcache_destroy(lc);
  return rc;
}

void rp_leafcache_destroy(struct rp_leafcache *lc) {
  struct leaf *next;

  if (lc == NULL)
    return;
  for (struct leaf *e = lc->head; e != NULL; e = next) {
    next = e->next;
    leaf_free(e);
  }
  free(lc->buckets);
  SSL_CTX_free(lc->base);
  EVP_PKEY_free(lc->key);
  EVP_PKEY_free(lc->ca_key);
  X509_free(lc->ca_cert);
  free(lc);
}

SSL_CTX *rp_leafcache_ctx(struct rp_leafcache *lc, const char *host) {
  char key[HOST_MAX + 1];
  char ebuf[256];
  unsigned char addr[16];
  size_t addrlen;
  struct leaf *e;
  SSL_CTX *ctx;
  time_t now = now_of(lc);
  size_t b;

  if (parse_host(host, key, addr, &addrlen) != 0)
    return NULL;
  b = bucket_of(lc, key);
  for (e = lc->buckets[b]; e != NULL && strcmp(e->host, key) != 0; e = e->hnext)
    ;
  if (e != NULL && now >= e->not_before && e->not_after - now > LEAF_RENEW_S) {
    ctx = e->ctx;
    goto found;
  }
  ctx = mint(lc, key, addr, addrlen, now);
  if (ctx == NULL) {
    rp_log_warn("cannot mint a certificate for %s: %s", key, rp__tls_errstr(ebuf, sizeof ebuf));
    return NULL;
  }
  if (e == NULL) {
    e = calloc(1, sizeof *e);
    if (e != NULL)
      e->host = strdup(key);
    if (e == NULL || e->host == NULL) {
      free(e);
      SSL_CTX_free(ctx);
      return NULL;
    }
    e->hnext = lc->buckets[b];
    lc->buckets[b] = e;
    lru_push_front(lc, e);
    lc->n++;
  } else {
    /* Sessions still using the old context hold their own references. */
    SSL_CTX_free(e->ctx);
  }
  e->ctx = ctx;
  e->not_before = now - LEAF_BACKDATE_S;
  e->not_after = now + LEAF_LIFETIME_DAYS * LEAF_DAY_S;
found:
  if (lc->head != e) {
    lru_unlink(lc, e);
    lru_push_front(lc, e);
  }
  while (lc->n > lc->cap)
    evict_lru(lc);
  if (SSL_CTX_up_ref(ctx) != 1)
    return NULL;
  return ctx;
}

uint64_t rp_leafcache_minted(const struct rp_leafcache *lc) {
  return lc->minted;
}

SSL_CTX *rp_leafcache_base_ctx(struct rp_leafcache *lc) {
  return lc->base;
}
