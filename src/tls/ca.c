/* The local CA (contract §2 MITM, §4 `ca`): load it from --ca-dir, or create it
 * there. The certificate file is the commit point of a creation: the key is
 * renamed into place first, the certificate last, so a crash leaves either a
 * whole CA or a key without a certificate, which the next creation replaces. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "regproxy/error.h"
#include "tls/internal.h"

#define CA_VALID_DAYS 3650
/* CA files larger than this are refused unread. */
#define CA_MAX_FILE (64 * 1024)
/* "regproxy local CA (" + host + ")" must fit the 64 characters of a CN. */
#define CA_CN_HOST_MAX 44

int rp__tls_fail(char **err, int rc, const char *fmt, ...) {
  va_list ap;

  if (err == NULL)
    return rc;
  free(*err);
  va_start(ap, fmt);
  if (vasprintf(err, fmt, ap) < 0)
    *err = NULL;
  va_end(ap);
  return rc;
}

const char *rp__tls_errstr(char *buf, size_t size) {
  unsigned long e = ERR_peek_last_error();
  const char *reason = e != 0 ? ERR_reason_error_string(e) : NULL;

  if (e == 0)
    snprintf(buf, size, "unknown OpenSSL error");
  else if (reason != NULL)
    snprintf(buf, size, "%s", reason);
  else
    ERR_error_string_n(e, buf, size);
  ERR_clear_error();
  return buf;
}

int rp__tls_set_serial(X509 *x) {
  unsigned char buf[RP_TLS_SERIAL_LEN];
  BIGNUM *bn = NULL;
  int rc = RP_ENOMEM;

  if (RAND_bytes(buf, sizeof buf) != 1)
    goto out;
  buf[0] = (unsigned char)((buf[0] & 0x7f) | 0x40);
  bn = BN_bin2bn(buf, sizeof buf, NULL);
  if (bn == NULL)
    goto out;
  if (BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) == NULL)
    goto out;
  rc = 0;
out:
  BN_free(bn);
  return rc;
}

int rp__tls_add_ext(X509 *x, X509 *issuer, int nid, const char *value) {
  X509V3_CTX ctx;
  X509_EXTENSION *ext;
  int rc = RP_ENOMEM;

  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
  ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
  if (ext == NULL)
    goto out;
  if (X509_add_ext(x, ext, -1) != 1)
    goto out;
  rc = 0;
out:
  X509_EXTENSION_free(ext);
  return rc;
}

EVP_PKEY *rp__tls_ec_key(void) {
  EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_EC, NULL);
  EVP_PKEY *key = NULL;

  if (ctx == NULL)
    goto out;
  if (EVP_PKEY_keygen_init(ctx) != 1)
    goto out;
  if (EVP_PKEY_CTX_set_ec_paramgen_curve_nid(ctx, NID_X9_62_prime256v1) != 1)
    goto out;
  if (EVP_PKEY_keygen(ctx, &key) != 1) {
    EVP_PKEY_free(key);
    key = NULL;
  }
out:
  EVP_PKEY_CTX_free(ctx);
  return key;
}

/* rp__tls_fail() for a failed system call on dir/name: -errno with its message. */
static int fail_errno(char **err, const char *what, const char *dir, const char *name) {
  int e = errno;

  return rp__tls_fail(err, -e, "cannot %s %s/%s: %s", what, dir, name, strerror(e));
}

/* Refuse to prompt on the terminal for the passphrase of an encrypted key. */
static int no_passphrase(char *buf, int size, int rwflag, void *u) {
  return -1;
}

/* mkdir -p: parents get 0755 (less the umask), dir itself exactly 0700. */
static int make_dir(const char *dir, char **err) {
  char *path = strdup(dir);
  int rc = 0;

  if (path == NULL)
    return RP_ENOMEM;
  for (char *p = path + 1; *p != '\0'; p++) {
    if (*p != '/')
      continue;
    *p = '\0';
    if (mkdir(path, 0755) != 0 && errno != EEXIST) {
      rc = rp__tls_fail(err, RP_ECONFIG, "cannot create %s: %s", path, strerror(errno));
      goto out;
    }
    *p = '/';
  }
  if (mkdir(dir, 0700) != 0) {
    if (errno != EEXIST)
      rc = rp__tls_fail(err, RP_ECONFIG, "cannot create CA directory %s: %s", dir, strerror(errno));
    goto out;
  }
  if (chmod(dir, 0700) != 0)
    rc = rp__tls_fail(err, RP_ECONFIG, "cannot chmod 700 %s: %s", dir, strerror(errno));
out:
  free(path);
  return rc;
}

static int open_dir(const char *dir, bool create, int *out, char **err) {
  struct stat st;
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  int rc = 0;

  if (fd < 0 && errno == ENOENT && create) {
    rc = make_dir(dir, err);
    if (rc != 0)
      goto out;
    fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  }
  if (fd < 0) {
    if (errno == ENOENT)
      rc = rp__tls_fail(err, RP_ECONFIG,
                        "CA directory %s does not exist (create the CA with `regproxy ca init`)",
                        dir);
    else
      rc = rp__tls_fail(err, RP_ECONFIG, "cannot open CA directory %s: %s", dir, strerror(errno));
    goto out;
  }
  if (fstat(fd, &st) != 0) {
    rc = rp__tls_fail(err, RP_ECONFIG, "cannot stat %s: %s", dir, strerror(errno));
    goto out;
  }
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    rc = rp__tls_fail(err, RP_ECONFIG,
                      "CA directory %s: mode %04o lets group/others replace the CA (chmod 700 it)",
                      dir, (unsigned)(st.st_mode & 07777));
    goto out;
  }
  *out = fd;
  fd = -1;
out:
  if (fd >= 0)
    close(fd);
  return rc;
}

static int exists(int dirfd, const char *dir, const char *name, bool *out, char **err) {
  struct stat st;

  if (fstatat(dirfd, name, &st, 0) == 0) {
    *out = true;
    return 0;
  }
  if (errno == ENOENT) {
    *out = false;
    return 0;
  }
  return rp__tls_fail(err, RP_ECONFIG, "cannot stat %s/%s: %s", dir, name, strerror(errno));
}

/* Read a small file of dir into a memory BIO; *mode gets its permissions. */
static int read_file(int dirfd, const char *dir, const char *name, BIO **out, mode_t *mode,
                     char **err) {
  char buf[CA_MAX_FILE];
  struct stat st;
  size_t len = 0;
  ssize_t n;
  int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOCTTY);
  int rc = 0;

  if (fd < 0) {
    rc = rp__tls_fail(err, RP_ECONFIG, "cannot read %s/%s: %s", dir, name, strerror(errno));
    goto out;
  }
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    rc = rp__tls_fail(err, RP_ECONFIG, "cannot read %s/%s: not a regular file", dir, name);
    goto out;
  }
  *mode = st.st_mode & 07777;
  for (;;) {
    n = read(fd, buf + len, sizeof buf - len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      rc = rp__tls_fail(err, RP_ECONFIG, "cannot read %s/%s: %s", dir, name, strerror(errno));
      goto out;
    }
    if (n == 0)
      break;
    len += (size_t)n;
    if (len == sizeof buf) {
      rc = rp__tls_fail(err, RP_ECONFIG, "%s/%s: larger than %d bytes", dir, name, CA_MAX_FILE);
      goto out;
    }
  }
  /* secmem: the key's bytes are wiped when the BIO goes. */
  *out = BIO_new(BIO_s_secmem());
  if (*out == NULL || BIO_write(*out, buf, (int)len) != (int)len) {
    BIO_free(*out);
    *out = NULL;
    rc = RP_ENOMEM;
  }
out:
  OPENSSL_cleanse(buf, sizeof buf);
  if (fd >= 0)
    close(fd);
  return rc;
}

static int load_ca(struct rp_ca *ca, int dirfd, const char *dir, char **err) {
  char ebuf[256];
  BIO *bio = NULL;
  mode_t mode = 0;
  uint32_t flags;
  int rc;

  rc = read_file(dirfd, dir, RP_CA_KEY_FILE, &bio, &mode, err);
  if (rc != 0)
    goto out;
  if ((mode & 077) != 0) {
    rc = rp__tls_fail(err, RP_ECONFIG,
                      "%s/%s: mode %04o lets group/others read the CA key (chmod 600 it)", dir,
                      RP_CA_KEY_FILE, (unsigned)mode);
    goto out;
  }
  ca->key = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
  if (ca->key == NULL) {
    rc = rp__tls_fail(err, RP_ECONFIG, "cannot read %s/%s: not an unencrypted PEM private key (%s)",
                      dir, RP_CA_KEY_FILE, rp__tls_errstr(ebuf, sizeof ebuf));
    goto out;
  }
  BIO_free(bio);
  bio = NULL;

  rc = read_file(dirfd, dir, RP_CA_CERT_FILE, &bio, &mode, err);
  if (rc != 0)
    goto out;
  ca->cert = PEM_read_bio_X509(bio, NULL, no_passphrase, NULL);
  if (ca->cert == NULL) {
    rc = rp__tls_fail(err, RP_ECONFIG, "cannot read %s/%s: not a PEM certificate (%s)", dir,
                      RP_CA_CERT_FILE, rp__tls_errstr(ebuf, sizeof ebuf));
    goto out;
  }
  flags = X509_get_extension_flags(ca->cert);
  if ((flags & EXFLAG_CA) == 0 || (flags & EXFLAG_INVALID) != 0) {
    rc =
        rp__tls_fail(err, RP_ECONFIG, "%s/%s is not a CA certificate (no basicConstraints CA:TRUE)",
                     dir, RP_CA_CERT_FILE);
    goto out;
  }
  if ((flags & EXFLAG_KUSAGE) != 0 && (X509_get_key_usage(ca->cert) & KU_KEY_CERT_SIGN) == 0) {
    rc = rp__tls_fail(err, RP_ECONFIG, "%s/%s is not a CA certificate (keyUsage lacks keyCertSign)",
                      dir, RP_CA_CERT_FILE);
    goto out;
  }
  if (X509_check_private_key(ca->cert, ca->key) != 1) {
    ERR_clear_error();
    rc = rp__tls_fail(err, RP_ECONFIG, "%s/%s does not match the certificate %s/%s", dir,
                      RP_CA_KEY_FILE, dir, RP_CA_CERT_FILE);
    goto out;
  }
  if (X509_cmp_current_time(X509_get0_notAfter(ca->cert)) <= 0) {
    rc = rp__tls_fail(err, RP_ECONFIG, "%s/%s has expired (move it and %s away to create a new CA)",
                      dir, RP_CA_CERT_FILE, RP_CA_KEY_FILE);
    goto out;
  }
out:
  BIO_free(bio);
  return rc;
}

/* The host name for the CA's subject, cut to fit and limited to a safe
 * alphabet. */
static void ca_host(char *buf, size_t size) {
  char host[256];

  if (gethostname(host, sizeof host) != 0 || host[0] == '\0')
    snprintf(host, sizeof host, "localhost");
  host[sizeof host - 1] = '\0';
  for (char *p = host; *p != '\0'; p++) {
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
          *p == '.' || *p == '-' || *p == '_'))
      *p = '_';
  }
  snprintf(buf, size, "%.*s", CA_CN_HOST_MAX, host);
}

/* A self-signed CA certificate for key; with names, limited to them. */
static int make_ca_cert(EVP_PKEY *key, const struct rp_hostlist *names, X509 **out, char **err) {
  char host[CA_CN_HOST_MAX + 1];
  char cn[80];
  X509 *x = X509_new();
  X509_NAME *name = X509_NAME_new();
  int rc = RP_ENOMEM;

  if (x == NULL || name == NULL)
    goto out;
  ca_host(host, sizeof host);
  snprintf(cn, sizeof cn, "regproxy local CA (%s)", host);
  if (X509_set_version(x, X509_VERSION_3) != 1)
    goto out;
  if (rp__tls_set_serial(x) != 0)
    goto out;
  if (X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)"regproxy", -1, -1,
                                 0) != 1)
    goto out;
  if (X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0) !=
      1)
    goto out;
  if (X509_set_subject_name(x, name) != 1 || X509_set_issuer_name(x, name) != 1)
    goto out;
  /* An hour back, so a client whose clock runs a little behind accepts it. */
  if (X509_gmtime_adj(X509_getm_notBefore(x), -3600) == NULL)
    goto out;
  if (X509_time_adj_ex(X509_getm_notAfter(x), CA_VALID_DAYS, 0, NULL) == NULL)
    goto out;
  if (X509_set_pubkey(x, key) != 1)
    goto out;
  if (rp__tls_add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") != 0)
    goto out;
  if (rp__tls_add_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign") != 0)
    goto out;
  if (rp__tls_add_ext(x, x, NID_subject_key_identifier, "hash") != 0)
    goto out;
  if (names != NULL) {
    rc = rp__ca_add_constraints(x, names, err);
    if (rc != 0)
      goto out;
    rc = RP_ENOMEM;
  }
  if (X509_sign(x, key, EVP_sha256()) <= 0)
    goto out;
  *out = x;
  x = NULL;
  rc = 0;
out:
  X509_NAME_free(name);
  X509_free(x);
  return rc;
}

/* Write name in dir through a temporary file, fsync'd and renamed. */
static int write_atomic(int dirfd, const char *dir, const char *name, mode_t mode, const char *data,
                        size_t len, char **err) {
  char tmp[64];
  size_t off = 0;
  ssize_t n;
  int fd = -1;
  int rc = 0;

  snprintf(tmp, sizeof tmp, ".%s.tmp", name);
  if (unlinkat(dirfd, tmp, 0) != 0 && errno != ENOENT) {
    rc = fail_errno(err, "remove", dir, tmp);
    goto out;
  }
  fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
  if (fd < 0) {
    rc = rp__tls_fail(err, RP_ECONFIG, "cannot create %s/%s: %s", dir, tmp, strerror(errno));
    goto out;
  }
  if (fchmod(fd, mode) != 0) {
    rc = fail_errno(err, "chmod", dir, tmp);
    goto out;
  }
  while (off < len) {
    n = write(fd, data + off, len - off);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      rc = fail_errno(err, "write", dir, tmp);
      goto out;
    }
    off += (size_t)n;
  }
  if (fsync(fd) != 0) {
    rc = fail_errno(err, "write", dir, tmp);
    goto out;
  }
  n = close(fd);
  fd = -1;
  if (n != 0) {
    rc = fail_errno(err, "write", dir, tmp);
    goto out;
  }
  if (renameat(dirfd, tmp, dirfd, name) != 0) {
    rc = fail_errno(err, "rename", dir, tmp);
    goto out;
  }
  if (fsync(dirfd) != 0)
    rc = fail_errno(err, "sync", dir, ".");
  return rc;
out:
  if (fd >= 0)
    close(fd);
  unlinkat(dirfd, tmp, 0);
  return rc;
}

/* A BIO's contents as a malloc'd NUL-terminated string. */
static int bio_string(BIO *bio, char **out, size_t *len) {
  char *data = NULL;
  long n = BIO_get_mem_data(bio, &data);

  if (n <= 0 || data == NULL)
    return RP_ENOMEM;
  *out = malloc((size_t)n + 1);
  if (*out == NULL)
    return RP_ENOMEM;
  memcpy(*out, data, (size_t)n);
  (*out)[n] = '\0';
  *len = (size_t)n;
  return 0;
}

/* A new CA in dir. With replace, the old certificate goes first: a crash
 * between the writes then leaves a key without a certificate (replaced by
 * the next creation), never a new key next to the old certificate. */
static int create_ca(struct rp_ca *ca, int dirfd, const char *dir, const struct rp_ca_opts *opts,
                     char **err) {
  char ebuf[256];
  BIO *bio = NULL;
  char *keypem = NULL;
  size_t keylen = 0;
  int rc = RP_ENOMEM;

  ca->key = rp__tls_ec_key();
  if (ca->key == NULL)
    goto out;
  rc = make_ca_cert(ca->key, opts->names, &ca->cert, err);
  if (rc != 0)
    goto out;
  rc = RP_ENOMEM;
  bio = BIO_new(BIO_s_secmem());
  if (bio == NULL)
    goto out;
  if (PEM_write_bio_PrivateKey(bio, ca->key, NULL, NULL, 0, NULL, NULL) != 1)
    goto out;
  if (bio_string(bio, &keypem, &keylen) != 0)
    goto out;
  BIO_free(bio);
  bio = NULL;
  bio = BIO_new(BIO_s_mem());
  if (bio == NULL)
    goto out;
  if (PEM_write_bio_X509(bio, ca->cert) != 1)
    goto out;
  if (bio_string(bio, &ca->pem, &ca->pem_len) != 0)
    goto out;
  if (opts->replace) {
    if (unlinkat(dirfd, RP_CA_CERT_FILE, 0) != 0 && errno != ENOENT) {
      rc = fail_errno(err, "remove", dir, RP_CA_CERT_FILE);
      goto out;
    }
    if (fsync(dirfd) != 0) {
      rc = fail_errno(err, "sync", dir, ".");
      goto out;
    }
  }
  rc = write_atomic(dirfd, dir, RP_CA_KEY_FILE, 0600, keypem, keylen, err);
  if (rc != 0)
    goto out;
  rc = write_atomic(dirfd, dir, RP_CA_CERT_FILE, 0644, ca->pem, ca->pem_len, err);
  if (rc != 0)
    goto out;
  ca->created = true;
out:
  if (rc == RP_ENOMEM && (err == NULL || *err == NULL))
    rc = rp__tls_fail(err, rc, "cannot create a CA in %s: %s", dir,
                      rp__tls_errstr(ebuf, sizeof ebuf));
  if (keypem != NULL) {
    OPENSSL_cleanse(keypem, keylen);
    free(keypem);
  }
  BIO_free(bio);
  return rc;
}

int rp_ca_open(const char *dir, const struct rp_ca_opts *opts, struct rp_ca **out, char **err) {
  struct rp_ca *ca = NULL;
  BIO *bio = NULL;
  size_t dlen;
  bool have_cert = false;
  bool have_key = false;
  bool create = opts->create || opts->replace;
  int dirfd = -1;
  int rc;

  *out = NULL;
  if (err != NULL)
    *err = NULL;
  if (dir == NULL || dir[0] == '\0')
    return rp__tls_fail(err, RP_ECONFIG, "no CA directory given (--ca-dir)");
  ca = calloc(1, sizeof *ca);
  if (ca == NULL)
    return RP_ENOMEM;
  dlen = strlen(dir);
  while (dlen > 1 && dir[dlen - 1] == '/')
    dlen--;
  if (asprintf(&ca->cert_path, "%.*s/%s", (int)dlen, dir, RP_CA_CERT_FILE) < 0) {
    ca->cert_path = NULL;
    rc = RP_ENOMEM;
    goto out;
  }
  rc = open_dir(dir, create, &dirfd, err);
  if (rc != 0)
    goto out;
  /* Two processes creating the CA at once would pair one's key with the
   * other's certificate; the lock on the directory serialises them. */
  if (create && flock(dirfd, LOCK_EX) != 0) {
    rc = rp__tls_fail(err, RP_ECONFIG, "cannot lock %s: %s", dir, strerror(errno));
    goto out;
  }
  rc = exists(dirfd, dir, RP_CA_CERT_FILE, &have_cert, err);
  if (rc != 0)
    goto out;
  rc = exists(dirfd, dir, RP_CA_KEY_FILE, &have_key, err);
  if (rc != 0)
    goto out;
  if (have_cert && !have_key && !opts->replace) {
    rc =
        rp__tls_fail(err, RP_ECONFIG,
                     "%s/%s is missing: the CA certificate cannot sign without it (move %s away to "
                     "create a new CA)",
                     dir, RP_CA_KEY_FILE, RP_CA_CERT_FILE);
    goto out;
  }
  if (!have_cert && !create) {
    rc = rp__tls_fail(err, RP_ECONFIG, "no CA in %s (create one with `regproxy ca init`)", dir);
    goto out;
  }
  /* A key without a certificate is what a crash mid-creation leaves: no
   * certificate was ever published for it, so it is replaced. */
  if (!have_cert || opts->replace) {
    rc = create_ca(ca, dirfd, dir, opts, err);
    if (rc != 0)
      goto out;
  } else {
    rc = load_ca(ca, dirfd, dir, err);
    if (rc != 0)
      goto out;
    rc = RP_ENOMEM;
    bio = BIO_new(BIO_s_mem());
    if (bio == NULL || PEM_write_bio_X509(bio, ca->cert) != 1)
      goto out;
    rc = bio_string(bio, &ca->pem, &ca->pem_len);
    if (rc != 0)
      goto out;
  }
  *out = ca;
  ca = NULL;
out:
  BIO_free(bio);
  if (dirfd >= 0)
    close(dirfd);
  rp_ca_destroy(ca);
  return rc;
}

void rp_ca_destroy(struct rp_ca *ca) {
  if (ca == NULL)
    return;
  X509_free(ca->cert);
  EVP_PKEY_free(ca->key);
  free(ca->cert_path);
  free(ca->pem);
  free(ca);
}

bool rp_ca_created(const struct rp_ca *ca) {
  return ca->created;
}

const char *rp_ca_cert_path(const struct rp_ca *ca) {
  return ca->cert_path;
}

const char *rp_ca_cert_pem(const struct rp_ca *ca, size_t *len) {
  if (len != NULL)
    *len = ca->pem_len;
  return ca->pem;
}
