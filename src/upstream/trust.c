/* Upstream trust: the system bundle plus --upstream-ca, and the engines'
 * certs.d directories (contract §4 --upstream-certs-dir) read the way moby and
 * containers/image read them: in DIR/<host[:port]>/, every *.crt is a CA
 * trusted for that registry on top of the base store, X.cert + X.key is a
 * client certificate pair, and a .cert without its .key (or the reverse) is
 * an error naming the file. The first directory (in the order given) that
 * has an entry for a registry wins, as in containers/image.
 *
 * regproxy's own CA is never taken from there: `setup` puts it beside the
 * registry's CA as regproxy.crt so that the engines trust regproxy, and
 * trusting it upstream would only let regproxy accept its own leaves. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include <curl/curl.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "regproxy/error.h"
#include "regproxy/log.h"
#include "regproxy/upstream.h"
#include "regproxy/util.h"
#include "upstream/internal.h"

/* Certificates and keys are small; anything bigger is not one. */
#define MAX_PEM_FILE (1024 * 1024)

static void openssl_reason(char *buf, size_t n) {
  unsigned long e = ERR_peek_last_error();
  if (e == 0)
    snprintf(buf, n, "no PEM data");
  else
    ERR_error_string_n(e, buf, n);
  ERR_clear_error();
}

/* ---- the base store ---------------------------------------------------------- */

/* The system bundle (libcurl's compiled-in default, else OpenSSL's) into store. */
static void load_system(X509_STORE *store) {
  CURL *probe = curl_easy_init();
  char *sys_file = NULL, *sys_path = NULL;

  if (probe != NULL) {
    curl_easy_getinfo(probe, CURLINFO_CAINFO, &sys_file);
    curl_easy_getinfo(probe, CURLINFO_CAPATH, &sys_path);
  }
  if (sys_file == NULL && sys_path == NULL) {
    if (X509_STORE_set_default_paths(store) != 1)
      rp_log_warn("upstream: cannot load OpenSSL's default CA locations");
  } else {
    if (sys_file != NULL && X509_STORE_load_file(store, sys_file) != 1)
      rp_log_warn("upstream: cannot load the system CA bundle %s", sys_file);
    if (sys_path != NULL && X509_STORE_load_path(store, sys_path) != 1)
      rp_log_warn("upstream: cannot use the system CA directory %s", sys_path);
  }
  ERR_clear_error();
  if (probe != NULL)
    curl_easy_cleanup(probe);
}

/* ca_file (checked now: a bad --upstream-ca stops the start), and later the
 * system bundle (rp__trust_load_system): one store shared by every TLS
 * connection (SSL_CTX_FUNCTION), instead of re-reading the bundle on each
 * handshake. */
static int build_base(const char *ca_file, X509_STORE **out, char **err) {
  int rc = 0;
  X509_STORE *store = X509_STORE_new();
  if (store == NULL) {
    rc = RP_ENOMEM;
    goto out;
  }
  if (ca_file != NULL && ca_file[0] != '\0' && X509_STORE_load_file(store, ca_file) != 1) {
    char ebuf[256];
    openssl_reason(ebuf, sizeof(ebuf));
    *err = rp_asprintf("--upstream-ca %s: %s", ca_file, ebuf);
    rc = RP_ECONFIG;
    goto out;
  }
  /* libcurl's default: an intermediate in the store is a trust anchor. */
  X509_STORE_set_flags(store, X509_V_FLAG_PARTIAL_CHAIN);
  *out = store;
  store = NULL;
out:
  X509_STORE_free(store);
  return rc;
}

/* Parsing the system bundle (about 140 certificates) took longer than the
 * rest of the start-up together and stayed resident in a proxy that may
 * never reach an upstream (issue 14): it is read when the first upstream
 * TLS connection of this trust generation is made. */
void rp__trust_load_system(struct rp_upstream_trust *t) {
  STACK_OF(X509_OBJECT) * objs;

  if (t == NULL || t->sys_loaded)
    return;
  t->sys_loaded = true;
  load_system(t->base);
  /* The certs.d stores start from the base store: the system bundle stays
   * trusted there too. */
  objs = X509_STORE_get0_objects(t->base);
  for (size_t i = 0; i < t->nhosts; i++) {
    if (t->hosts[i].store == NULL)
      continue;
    for (int k = 0; k < sk_X509_OBJECT_num(objs); k++) {
      X509 *x = X509_OBJECT_get0_X509(sk_X509_OBJECT_value(objs, k));
      if (x != NULL)
        X509_STORE_add_cert(t->hosts[i].store, x);
    }
  }
  ERR_clear_error();
}

/* ---- one certs.d host directory ------------------------------------------------ */

static int read_file(const char *path, char **out, size_t *len, char **err) {
  FILE *fp = fopen(path, "re");
  char *buf = NULL;
  size_t n = 0;
  int rc = 0;
  if (fp == NULL) {
    *err = rp_asprintf("%s: %s", path, strerror(errno));
    return errno == EACCES ? UV_EACCES : RP_ECONFIG;
  }
  buf = malloc(MAX_PEM_FILE + 1);
  if (buf == NULL) {
    rc = RP_ENOMEM;
    goto out;
  }
  n = fread(buf, 1, MAX_PEM_FILE + 1, fp);
  if (ferror(fp) || n > MAX_PEM_FILE) {
    *err = rp_asprintf("%s: %s", path, ferror(fp) ? strerror(errno) : "larger than 1 MiB");
    rc = RP_ECONFIG;
    goto out;
  }
  buf[n] = '\0';
  *out = buf;
  *len = n;
  buf = NULL;
out:
  fclose(fp);
  free(buf);
  return rc;
}

static int no_passphrase(char *buf, int size, int rwflag, void *u) {
  (void)buf;
  (void)size;
  (void)rwflag;
  (void)u;
  return 0;
}

static bool is_own_ca(X509 *x, X509 *own) {
  return own != NULL && X509_cmp(x, own) == 0;
}

static void host_clear(struct rp__certsd_host *h) {
  free(h->name);
  free(h->dir);
  X509_STORE_free(h->store);
  free(h->ca_pem);
  free(h->cert_file);
  free(h->cert_pem);
  free(h->key_pem);
  memset(h, 0, sizeof(*h));
}

/* A *.crt: every certificate in it joins the host's store (and its PEM the
 * reuse key), except regproxy's own CA. */
static int add_ca_file(struct rp__certsd_host *h, const char *path, X509 *own, struct rp_sbuf *pem,
                       char **err) {
  char *text = NULL, ebuf[256];
  size_t len = 0;
  BIO *bio = NULL;
  X509 *x = NULL;
  int rc, n = 0;
  rc = read_file(path, &text, &len, err);
  if (rc != 0)
    return rc;
  bio = BIO_new_mem_buf(text, (int)len);
  if (bio == NULL) {
    rc = RP_ENOMEM;
    goto out;
  }
  for (;;) {
    x = PEM_read_bio_X509(bio, NULL, no_passphrase, NULL);
    if (x == NULL)
      break;
    n++;
    if (!is_own_ca(x, own)) {
      if (X509_STORE_add_cert(h->store, x) != 1) {
        unsigned long e = ERR_peek_last_error();
        /* The same CA twice (system bundle, another file) is fine. */
        if (ERR_GET_REASON(e) != X509_R_CERT_ALREADY_IN_HASH_TABLE) {
          openssl_reason(ebuf, sizeof(ebuf));
          *err = rp_asprintf("%s: %s", path, ebuf);
          rc = RP_ECONFIG;
          goto out;
        }
        ERR_clear_error();
      }
      BIO *mem = BIO_new(BIO_s_mem());
      char *p = NULL;
      long plen;
      if (mem == NULL || PEM_write_bio_X509(mem, x) != 1) {
        BIO_free(mem);
        rc = RP_ENOMEM;
        goto out;
      }
      plen = BIO_get_mem_data(mem, &p);
      rp_sbuf_add(pem, p, (size_t)plen);
      BIO_free(mem);
    } else {
      rp_log_debug("upstream: %s is regproxy's own CA: not trusted upstream", path);
    }
    X509_free(x);
    x = NULL;
  }
  ERR_clear_error();
  if (n == 0) {
    *err = rp_asprintf("%s: no PEM certificate in it", path);
    rc = RP_ECONFIG;
  }
out:
  X509_free(x);
  BIO_free(bio);
  free(text);
  return rc;
}

/* X.cert + X.key: both must be there, parse, and belong together. */
static int add_pair(struct rp__certsd_host *h, const char *cert_path, const char *key_path,
                    char **err) {
  char *cert = NULL, *key = NULL, ebuf[256];
  size_t clen = 0, klen = 0;
  BIO *bio = NULL;
  X509 *x = NULL;
  EVP_PKEY *pk = NULL;
  int rc;
  rc = read_file(cert_path, &cert, &clen, err);
  if (rc == 0)
    rc = read_file(key_path, &key, &klen, err);
  if (rc != 0)
    goto out;
  bio = BIO_new_mem_buf(cert, (int)clen);
  x = bio != NULL ? PEM_read_bio_X509(bio, NULL, no_passphrase, NULL) : NULL;
  if (x == NULL) {
    openssl_reason(ebuf, sizeof(ebuf));
    *err = rp_asprintf("%s: not a PEM client certificate: %s", cert_path, ebuf);
    rc = RP_ECONFIG;
    goto out;
  }
  BIO_free(bio);
  bio = BIO_new_mem_buf(key, (int)klen);
  pk = bio != NULL ? PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL) : NULL;
  if (pk == NULL) {
    openssl_reason(ebuf, sizeof(ebuf));
    *err = rp_asprintf("%s: not an unencrypted PEM private key: %s", key_path, ebuf);
    rc = RP_ECONFIG;
    goto out;
  }
  if (X509_check_private_key(x, pk) != 1) {
    ERR_clear_error();
    *err = rp_asprintf("%s: does not match the certificate in %s", key_path, cert_path);
    rc = RP_ECONFIG;
    goto out;
  }
  if (h->cert_file != NULL) {
    rp_log_info("upstream: %s: more than one client certificate, using %s", h->dir, h->cert_file);
    goto out;
  }
  h->cert_file = strdup(cert_path);
  if (h->cert_file == NULL) {
    rc = RP_ENOMEM;
    goto out;
  }
  h->cert_pem = cert;
  h->cert_pem_len = clen;
  h->key_pem = key;
  h->key_pem_len = klen;
  cert = key = NULL;
out:
  BIO_free(bio);
  X509_free(x);
  EVP_PKEY_free(pk);
  free(cert);
  if (key != NULL)
    OPENSSL_cleanse(key, klen);
  free(key);
  return rc;
}

static bool has_suffix(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n > k && strcmp(s + n - k, suffix) == 0;
}

static int by_name(const struct dirent **a, const struct dirent **b) {
  return strcmp((*a)->d_name, (*b)->d_name);
}

static int skip_dot(const struct dirent *d) {
  return d->d_name[0] != '.';
}

/* DIR/<name>/ into h (h->name and h->dir set by the caller). */
static int read_host_dir(struct rp__certsd_host *h, X509_STORE *base, X509 *own, char **err) {
  struct dirent **ents = NULL;
  struct rp_sbuf pem = {0};
  int n, rc = 0;
  n = scandir(h->dir, &ents, skip_dot, by_name);
  if (n < 0) {
    *err = rp_asprintf("%s: %s", h->dir, strerror(errno));
    return errno == EACCES ? UV_EACCES : RP_ECONFIG;
  }
  for (int i = 0; i < n && rc == 0; i++) {
    const char *f = ents[i]->d_name;
    char path[4096], other[4096];
    struct stat st;
    snprintf(path, sizeof(path), "%s/%s", h->dir, f);
    if (has_suffix(f, ".crt")) {
      if (h->store == NULL) {
        h->store = X509_STORE_new();
        if (h->store == NULL) {
          rc = RP_ENOMEM;
          break;
        }
        /* Start from the base store: the system bundle stays trusted. */
        STACK_OF(X509_OBJECT) *objs = X509_STORE_get0_objects(base);
        for (int k = 0; k < sk_X509_OBJECT_num(objs); k++) {
          X509 *x = X509_OBJECT_get0_X509(sk_X509_OBJECT_value(objs, k));
          if (x != NULL)
            X509_STORE_add_cert(h->store, x);
        }
        ERR_clear_error();
        X509_STORE_set_flags(h->store, X509_V_FLAG_PARTIAL_CHAIN);
      }
      rc = add_ca_file(h, path, own, &pem, err);
    } else if (has_suffix(f, ".cert")) {
      snprintf(other, sizeof(other), "%.*s.key", (int)(strlen(path) - 5), path);
      if (stat(other, &st) != 0) {
        *err = rp_asprintf("%s: client certificate without its key %s (CA certificates must be "
                           "named *.crt)",
                           path, other);
        rc = RP_ECONFIG;
      } else {
        rc = add_pair(h, path, other, err);
      }
    } else if (has_suffix(f, ".key")) {
      snprintf(other, sizeof(other), "%.*s.cert", (int)(strlen(path) - 4), path);
      if (stat(other, &st) != 0) {
        *err = rp_asprintf("%s: key without its client certificate %s", path, other);
        rc = RP_ECONFIG;
      }
    }
  }
  for (int i = 0; i < n; i++)
    free(ents[i]);
  free(ents);
  if (rc == 0 && (pem.len > 0 || pem.oom)) {
    h->ca_pem = rp_sbuf_take(&pem, &h->ca_pem_len);
    if (h->ca_pem == NULL)
      rc = RP_ENOMEM;
  }
  rp_sbuf_free(&pem);
  if (rc == 0 && h->ca_pem == NULL) {
    /* Only regproxy's own CA in there: as if the directory did not exist. */
    X509_STORE_free(h->store);
    h->store = NULL;
  }
  return rc;
}

/* ---- the trust object ------------------------------------------------------------ */

void rp_upstream_trust_release(struct rp_upstream_trust *t) {
  if (t == NULL || --t->refs > 0)
    return;
  X509_STORE_free(t->base);
  for (size_t i = 0; i < t->nhosts; i++)
    host_clear(&t->hosts[i]);
  free(t->hosts);
  free(t->dirs);
  free(t);
}

struct rp_upstream_trust *rp__trust_ref(struct rp_upstream_trust *t) {
  if (t != NULL)
    t->refs++;
  return t;
}

static struct rp__certsd_host *find_name(struct rp_upstream_trust *t, const char *name) {
  for (size_t i = 0; i < t->nhosts; i++)
    if (strcasecmp(t->hosts[i].name, name) == 0)
      return &t->hosts[i];
  return NULL;
}

const struct rp__certsd_host *rp__trust_find(const struct rp_upstream_trust *t, const char *host,
                                             long port) {
  char name[300];
  const struct rp__certsd_host *h = NULL;
  if (t == NULL || t->nhosts == 0 || host == NULL)
    return NULL;
  if (port == 443)
    h = find_name((struct rp_upstream_trust *)t, host);
  if (h == NULL && port > 0) {
    snprintf(name, sizeof(name), "%s:%ld", host, port);
    h = find_name((struct rp_upstream_trust *)t, name);
  }
  return h;
}

/* Every host directory of one certs.d directory. */
static int read_certs_dir(struct rp_upstream_trust *t, const char *dir, bool lenient, X509 *own,
                          size_t *cap, char **err) {
  struct dirent **ents = NULL;
  int n, rc = 0;
  n = scandir(dir, &ents, skip_dot, by_name);
  if (n < 0) {
    if (lenient && (errno == ENOENT || errno == EACCES)) {
      rp_log_warn("upstream: cannot read %s: %s", dir, strerror(errno));
      return 0;
    }
    *err = rp_asprintf("--upstream-certs-dir %s: %s", dir, strerror(errno));
    return RP_ECONFIG;
  }
  for (int i = 0; i < n && rc == 0; i++) {
    struct rp__certsd_host h;
    struct stat st;
    char *why = NULL;
    memset(&h, 0, sizeof(h));
    h.name = strdup(ents[i]->d_name);
    h.dir = rp_asprintf("%s/%s", dir, ents[i]->d_name);
    if (h.name == NULL || h.dir == NULL) {
      host_clear(&h);
      rc = RP_ENOMEM;
      break;
    }
    if (stat(h.dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
      host_clear(&h);
      continue;
    }
    rc = read_host_dir(&h, t->base, own, &why);
    if (rc == UV_EACCES && lenient) {
      /* A user's regproxy reading root's /etc/docker/certs.d by default. */
      rp_log_warn("upstream: skipping %s: %s", h.dir, why != NULL ? why : "permission denied");
      rc = 0;
      host_clear(&h);
    } else if (rc != 0) {
      if (rc != RP_ENOMEM) {
        *err = rp_asprintf("--upstream-certs-dir: %s", why != NULL ? why : h.dir);
        rc = RP_ECONFIG;
      }
      host_clear(&h);
    } else if (h.store == NULL && h.cert_file == NULL) {
      host_clear(&h); /* nothing for us in there */
    } else if (find_name(t, h.name) != NULL) {
      rp_log_info("upstream: %s: %s was read first, this one is not used", h.dir,
                  find_name(t, h.name)->dir);
      host_clear(&h);
    } else {
      if (t->nhosts == *cap) {
        size_t ncap = *cap ? *cap * 2 : 8;
        struct rp__certsd_host *nh = realloc(t->hosts, ncap * sizeof(*nh));
        if (nh == NULL) {
          host_clear(&h);
          rc = RP_ENOMEM;
          free(why);
          break;
        }
        t->hosts = nh;
        *cap = ncap;
      }
      t->hosts[t->nhosts++] = h;
    }
    free(why);
  }
  for (int i = 0; i < n; i++)
    free(ents[i]);
  free(ents);
  return rc;
}

int rp_upstream_trust_load(const struct rp_upstream_trust_opts *o, struct rp_upstream_trust **out,
                           char **err) {
  struct rp_upstream_trust *t = NULL;
  struct rp_sbuf dirs = {0};
  X509 *own = NULL;
  size_t cap = 0, len;
  int rc = 0;
  *out = NULL;
  *err = NULL;
  t = calloc(1, sizeof(*t));
  if (t == NULL)
    return RP_ENOMEM;
  t->refs = 1;
  rc = build_base(o->ca_file, &t->base, err);
  if (rc != 0)
    goto out;
  if (o->own_ca_pem != NULL && o->own_ca_pem_len > 0) {
    BIO *bio = BIO_new_mem_buf(o->own_ca_pem, (int)o->own_ca_pem_len);
    own = bio != NULL ? PEM_read_bio_X509(bio, NULL, no_passphrase, NULL) : NULL;
    BIO_free(bio);
    ERR_clear_error();
  }
  for (size_t i = 0; i < o->n_certs_dirs && rc == 0; i++) {
    rc = read_certs_dir(t, o->certs_dirs[i], o->certs_dirs_default, own, &cap, err);
    rp_sbuf_addf(&dirs, "%s%s", i > 0 ? ", " : "", o->certs_dirs[i]);
  }
  if (rc != 0)
    goto out;
  t->dirs = rp_sbuf_take(&dirs, &len);
  if (t->dirs == NULL && o->n_certs_dirs > 0) {
    rc = RP_ENOMEM;
    goto out;
  }
  for (size_t i = 0; i < t->nhosts; i++)
    rp_log_info("upstream: %s: %s%s%s", t->hosts[i].dir,
                t->hosts[i].store != NULL ? "CA certificates" : "",
                t->hosts[i].store != NULL && t->hosts[i].cert_file != NULL ? " and " : "",
                t->hosts[i].cert_file != NULL ? "a client certificate" : "");
  *out = t;
  t = NULL;
out:
  if (rc == RP_ENOMEM && *err == NULL)
    *err = rp_asprintf("reading certs.d: out of memory");
  rp_sbuf_free(&dirs);
  X509_free(own);
  rp_upstream_trust_release(t);
  return rc;
}
