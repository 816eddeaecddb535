/* The local CA (creation, modes, extensions, the refusals on load), leaf
 * minting (SAN, extensions, validity, chain to the CA), the per-host LRU,
 * real handshakes over a BIO pair (ALPN http/1.1 only, TLS 1.2-1.3, the SNI
 * switch from the base context) and `regproxy ca`. Prints the mint and
 * handshake rates once; nothing asserts on time. */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "regproxy/cli.h"
#include "regproxy/config.h"
#include "regproxy/error.h"
#include "regproxy/tls.h"
#include "tls/internal.h"

#define DAY (24 * 60 * 60)

/* rp_ca_open: load only, or create a CA without name constraints. */
static const struct rp_ca_opts load_only = {.create = false};
static const struct rp_ca_opts create_any = {.create = true};

/* A fresh directory under /tmp, removed by rm_tree. */
static void temp_dir(char *buf, size_t size) {
  snprintf(buf, size, "/tmp/rp_test_tls.XXXXXX");
  assert_non_null(mkdtemp(buf));
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  return remove(path);
}

static void rm_tree(const char *dir) {
  nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static mode_t mode_of(const char *path) {
  struct stat st;

  assert_int_equal(stat(path, &st), 0);
  return st.st_mode & 07777;
}

static char *read_text(const char *path) {
  static char buf[65536];
  FILE *fp = fopen(path, "r");
  size_t n;

  assert_non_null(fp);
  n = fread(buf, 1, sizeof buf - 1, fp);
  buf[n] = '\0';
  fclose(fp);
  return buf;
}

static X509 *ca_x509(const struct rp_ca *ca) {
  size_t len;
  const char *pem = rp_ca_cert_pem(ca, &len);
  BIO *bio = BIO_new_mem_buf(pem, (int)len);
  X509 *x;

  assert_non_null(bio);
  x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
  assert_non_null(x);
  BIO_free(bio);
  return x;
}

static void write_key(const char *path, EVP_PKEY *key, mode_t mode) {
  FILE *fp = fopen(path, "w");

  assert_non_null(fp);
  assert_int_equal(PEM_write_PrivateKey(fp, key, NULL, NULL, 0, NULL, NULL), 1);
  assert_int_equal(fclose(fp), 0);
  assert_int_equal(chmod(path, mode), 0);
}

static void write_cert(const char *path, X509 *x) {
  FILE *fp = fopen(path, "w");

  assert_non_null(fp);
  assert_int_equal(PEM_write_X509(fp, x), 1);
  assert_int_equal(fclose(fp), 0);
}

static EVP_PKEY *read_key(const char *path) {
  FILE *fp = fopen(path, "r");
  EVP_PKEY *key;

  assert_non_null(fp);
  key = PEM_read_PrivateKey(fp, NULL, NULL, NULL);
  fclose(fp);
  assert_non_null(key);
  return key;
}

static bool ext_critical(X509 *x, int nid) {
  int i = X509_get_ext_by_NID(x, nid, -1);

  assert_true(i >= 0);
  return X509_EXTENSION_get_critical(X509_get_ext(x, i)) == 1;
}

static void check_serial(X509 *x) {
  BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);

  assert_non_null(bn);
  assert_false(BN_is_negative(bn));
  assert_int_equal(BN_num_bytes(bn), RP_TLS_SERIAL_LEN);
  BN_free(bn);
}

/* Seconds from notBefore to notAfter. */
static long validity_span(X509 *x) {
  int days = 0;
  int secs = 0;

  assert_int_equal(ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(x), X509_get0_notAfter(x)), 1);
  return (long)days * DAY + secs;
}

/* Seconds from now to t (negative in the past). */
static long from_now(const ASN1_TIME *t) {
  int days = 0;
  int secs = 0;

  assert_int_equal(ASN1_TIME_diff(&days, &secs, NULL, t), 1);
  return (long)days * DAY + secs;
}

/* ---- CA ---- */

static void test_ca_create_and_reload(void **state) {
  char base[64], dir[128], path[160];
  struct rp_ca *ca = NULL, *again = NULL;
  char *err = NULL;
  char *pem;
  X509 *x;
  BASIC_CONSTRAINTS *bc;
  X509_NAME *subj;
  char cn[128];
  int crit = -1;
  mode_t old;

  temp_dir(base, sizeof base);
  snprintf(dir, sizeof dir, "%s/share/regproxy/ca", base);
  /* Modes must not depend on the umask. */
  old = umask(077);
  assert_int_equal(rp_ca_open(dir, &create_any, &ca, &err), 0);
  umask(old);
  assert_null(err);
  assert_true(rp_ca_created(ca));

  assert_int_equal(mode_of(dir), 0700);
  snprintf(path, sizeof path, "%s/ca.crt", dir);
  assert_string_equal(rp_ca_cert_path(ca), path);
  assert_int_equal(mode_of(path), 0644);
  pem = read_text(path);
  assert_string_equal(pem, rp_ca_cert_pem(ca, NULL));
  snprintf(path, sizeof path, "%s/ca.key", dir);
  assert_int_equal(mode_of(path), 0600);
  snprintf(path, sizeof path, "%s/.ca.key.tmp", dir);
  assert_int_not_equal(access(path, F_OK), 0);
  snprintf(path, sizeof path, "%s/.ca.crt.tmp", dir);
  assert_int_not_equal(access(path, F_OK), 0);

  x = ca_x509(ca);
  bc = X509_get_ext_d2i(x, NID_basic_constraints, &crit, NULL);
  assert_non_null(bc);
  assert_true(bc->ca);
  assert_non_null(bc->pathlen);
  assert_int_equal(ASN1_INTEGER_get(bc->pathlen), 0);
  assert_int_equal(crit, 1);
  BASIC_CONSTRAINTS_free(bc);
  assert_int_equal(X509_get_key_usage(x), KU_KEY_CERT_SIGN | KU_CRL_SIGN);
  assert_true(ext_critical(x, NID_key_usage));
  assert_non_null(X509_get0_subject_key_id(x));
  assert_int_equal(X509_check_ca(x), 1);
  assert_int_equal(X509_verify(x, X509_get0_pubkey(x)), 1);
  assert_int_equal(EVP_PKEY_base_id(X509_get0_pubkey(x)), EVP_PKEY_EC);
  assert_int_equal(EVP_PKEY_bits(X509_get0_pubkey(x)), 256);
  check_serial(x);
  /* Ten years, plus the hour notBefore is back-dated. */
  assert_int_equal(validity_span(x), 3650L * DAY + 3600);
  subj = X509_get_subject_name(x);
  assert_true(X509_NAME_get_text_by_NID(subj, NID_commonName, cn, sizeof cn) > 0);
  assert_non_null(strstr(cn, "regproxy local CA ("));
  assert_true(strlen(cn) <= 64);
  assert_true(X509_NAME_get_text_by_NID(subj, NID_organizationName, cn, sizeof cn) > 0);
  assert_string_equal(cn, "regproxy");
  assert_int_equal(X509_NAME_cmp(subj, X509_get_issuer_name(x)), 0);
  /* Made without names: no name constraints, nothing to check. */
  assert_true(X509_get_ext_by_NID(x, NID_name_constraints, -1) < 0);
  assert_false(rp_ca_constrained(ca));
  assert_int_equal(rp_ca_check_names(ca, NULL, &err), 0);
  X509_free(x);

  /* Reload: the same certificate, not created again, with or without create. */
  assert_int_equal(rp_ca_open(dir, &load_only, &again, &err), 0);
  assert_false(rp_ca_created(again));
  assert_string_equal(rp_ca_cert_pem(again, NULL), rp_ca_cert_pem(ca, NULL));
  rp_ca_destroy(again);
  assert_int_equal(rp_ca_open(dir, &create_any, &again, &err), 0);
  assert_false(rp_ca_created(again));
  assert_string_equal(rp_ca_cert_pem(again, NULL), rp_ca_cert_pem(ca, NULL));
  rp_ca_destroy(again);

  rp_ca_destroy(ca);
  rm_tree(base);
}

/* A fresh CA in base/name; returns its directory in dir. */
static void fresh_ca(const char *base, const char *name, char *dir, size_t size) {
  struct rp_ca *ca = NULL;
  char *err = NULL;

  snprintf(dir, size, "%s/%s", base, name);
  assert_int_equal(rp_ca_open(dir, &create_any, &ca, &err), 0);
  rp_ca_destroy(ca);
}

/* rp_ca_open(dir, create) must fail with RP_ECONFIG and an err containing want. */
static void expect_refusal(const char *dir, bool create, const char *want) {
  struct rp_ca *ca = NULL;
  char *err = NULL;

  assert_int_equal(rp_ca_open(dir, create ? &create_any : &load_only, &ca, &err), RP_ECONFIG);
  assert_null(ca);
  assert_non_null(err);
  if (strstr(err, want) == NULL)
    fail_msg("error \"%s\" does not say \"%s\"", err, want);
  free(err);
}

static void test_ca_refusals(void **state) {
  char base[64], dir[128], path[192], path2[192];
  struct rp_ca *ca = NULL;
  char *err = NULL;
  EVP_PKEY *key;
  X509 *x;
  FILE *fp;

  temp_dir(base, sizeof base);

  /* Nothing there and no create. */
  snprintf(dir, sizeof dir, "%s/none", base);
  expect_refusal(dir, false, "regproxy ca init");
  assert_int_not_equal(access(dir, F_OK), 0);
  assert_int_equal(mkdir(dir, 0700), 0);
  expect_refusal(dir, false, "no CA in");

  /* A key readable by others. */
  fresh_ca(base, "mode", dir, sizeof dir);
  snprintf(path, sizeof path, "%s/ca.key", dir);
  assert_int_equal(chmod(path, 0644), 0);
  expect_refusal(dir, false, "mode 0644");
  expect_refusal(dir, true, "mode 0644");
  assert_int_equal(chmod(path, 0640), 0);
  expect_refusal(dir, false, "mode 0640");

  /* A key that cannot be read as one. */
  fresh_ca(base, "garbage", dir, sizeof dir);
  snprintf(path, sizeof path, "%s/ca.key", dir);
  fp = fopen(path, "w");
  assert_non_null(fp);
  fputs("-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n", fp);
  fclose(fp);
  assert_int_equal(chmod(path, 0600), 0);
  expect_refusal(dir, false, "not an unencrypted PEM private key");
  assert_int_equal(unlink(path), 0);
  assert_int_equal(mkdir(path, 0700), 0);
  expect_refusal(dir, false, "cannot read");

  /* Another key written over the CA's. */
  fresh_ca(base, "mismatch", dir, sizeof dir);
  snprintf(path, sizeof path, "%s/ca.key", dir);
  key = rp__tls_ec_key();
  assert_non_null(key);
  write_key(path, key, 0600);
  EVP_PKEY_free(key);
  expect_refusal(dir, false, "does not match");

  /* A certificate (for the right key) that is not a CA. */
  fresh_ca(base, "notca", dir, sizeof dir);
  snprintf(path, sizeof path, "%s/ca.key", dir);
  snprintf(path2, sizeof path2, "%s/ca.crt", dir);
  key = read_key(path);
  x = X509_new();
  assert_non_null(x);
  assert_int_equal(X509_set_version(x, X509_VERSION_3), 1);
  assert_int_equal(rp__tls_set_serial(x), 0);
  assert_int_equal(X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                                              (const unsigned char *)"not a ca", -1, -1, 0),
                   1);
  assert_int_equal(X509_set_issuer_name(x, X509_get_subject_name(x)), 1);
  assert_non_null(X509_gmtime_adj(X509_getm_notBefore(x), -3600));
  assert_non_null(X509_gmtime_adj(X509_getm_notAfter(x), DAY));
  assert_int_equal(X509_set_pubkey(x, key), 1);
  assert_int_equal(rp__tls_add_ext(x, x, NID_basic_constraints, "critical,CA:FALSE"), 0);
  assert_true(X509_sign(x, key, EVP_sha256()) > 0);
  write_cert(path2, x);
  X509_free(x);
  EVP_PKEY_free(key);
  expect_refusal(dir, false, "not a CA certificate");
  expect_refusal(dir, true, "not a CA certificate");

  /* A certificate without its key is never replaced. */
  fresh_ca(base, "nokey", dir, sizeof dir);
  snprintf(path, sizeof path, "%s/ca.key", dir);
  assert_int_equal(unlink(path), 0);
  expect_refusal(dir, false, "ca.key is missing");
  expect_refusal(dir, true, "ca.key is missing");

  /* A key without a certificate is a creation cut short: init replaces it. */
  fresh_ca(base, "nocert", dir, sizeof dir);
  snprintf(path, sizeof path, "%s/ca.crt", dir);
  assert_int_equal(unlink(path), 0);
  expect_refusal(dir, false, "no CA in");
  assert_int_equal(rp_ca_open(dir, &create_any, &ca, &err), 0);
  assert_true(rp_ca_created(ca));
  rp_ca_destroy(ca);
  ca = NULL;
  assert_int_equal(rp_ca_open(dir, &load_only, &ca, &err), 0);
  rp_ca_destroy(ca);
  ca = NULL;

  /* A directory others may write to. */
  fresh_ca(base, "opendir", dir, sizeof dir);
  assert_int_equal(chmod(dir, 0777), 0);
  expect_refusal(dir, false, "chmod 700");

  /* No directory at all. */
  assert_int_equal(rp_ca_open("", &create_any, &ca, &err), RP_ECONFIG);
  free(err);
  err = NULL;

  rm_tree(base);
}

/* ---- name constraints ---- */

static struct rp_hostlist *hostlist(const char *spec) {
  struct rp_hostlist *l = NULL;
  char *err = NULL;

  if (rp_hostlist_parse(spec, 0, &l, &err) != 0)
    fail_msg("host list \"%s\": %s", spec, err);
  return l;
}

/* Open (creating when missing) the CA in dir for the host list spec; NULL
 * spec: without name constraints. */
static int open_for(const char *dir, const char *spec, bool replace, struct rp_ca **ca,
                    char **err) {
  struct rp_ca_opts o = {.create = true, .replace = replace};
  struct rp_hostlist *l = spec != NULL ? hostlist(spec) : NULL;
  int rc;

  o.names = l;
  rc = rp_ca_open(dir, &o, ca, err);
  rp_hostlist_destroy(l);
  return rc;
}

/* One name constraint as text: "DNS:x" or "IP:addr/bits". */
static void subtree_text(const GENERAL_SUBTREE *sub, char *buf, size_t size) {
  const GENERAL_NAME *gen = sub->base;
  char addr[INET6_ADDRSTRLEN];
  const unsigned char *p;
  int len;
  int bits = 0;

  if (gen->type == GEN_DNS) {
    snprintf(buf, size, "DNS:%.*s", ASN1_STRING_length(gen->d.dNSName),
             (const char *)ASN1_STRING_get0_data(gen->d.dNSName));
    return;
  }
  assert_int_equal(gen->type, GEN_IPADD);
  len = ASN1_STRING_length(gen->d.iPAddress) / 2;
  p = ASN1_STRING_get0_data(gen->d.iPAddress);
  assert_true(len == 4 || len == 16);
  for (int i = 0; i < len; i++)
    for (int k = 7; k >= 0; k--)
      bits += (p[len + i] >> k) & 1;
  assert_non_null(inet_ntop(len == 4 ? AF_INET : AF_INET6, p, addr, sizeof addr));
  snprintf(buf, size, "IP:%s/%d", addr, bits);
}

/* "permitted a,b; excluded c" for the CA's critical nameConstraints. */
static void constraints_text(X509 *x, char *buf, size_t size) {
  int crit = -1;
  NAME_CONSTRAINTS *nc = X509_get_ext_d2i(x, NID_name_constraints, &crit, NULL);
  STACK_OF(GENERAL_SUBTREE) * lists[2];
  size_t used = 0;
  char one[128];

  assert_non_null(nc);
  assert_int_equal(crit, 1);
  lists[0] = nc->permittedSubtrees;
  lists[1] = nc->excludedSubtrees;
  buf[0] = '\0';
  for (int k = 0; k < 2; k++) {
    used += (size_t)snprintf(buf + used, size - used, "%s", k == 0 ? "permitted " : "; excluded ");
    for (int i = 0; i < sk_GENERAL_SUBTREE_num(lists[k]); i++) {
      subtree_text(sk_GENERAL_SUBTREE_value(lists[k], i), one, sizeof one);
      used += (size_t)snprintf(buf + used, size - used, "%s%s", i > 0 ? "," : "", one);
    }
  }
  NAME_CONSTRAINTS_free(nc);
}

#define DEFAULT_MITM                                                                               \
  "registry-1.docker.io,index.docker.io,ghcr.io,quay.io,registry.k8s.io,gcr.io,.pkg.dev,"          \
  "mcr.microsoft.com,public.ecr.aws,nvcr.io,registry.gitlab.com"

struct build_case {
  const char *names;
  const char *want; /* constraints_text, or the error's key words */
  int rc;
};

static const struct build_case build_cases[] = {
    {DEFAULT_MITM,
     "permitted DNS:registry-1.docker.io,DNS:index.docker.io,DNS:ghcr.io,DNS:quay.io,"
     "DNS:registry.k8s.io,DNS:gcr.io,DNS:pkg.dev,DNS:mcr.microsoft.com,DNS:public.ecr.aws,"
     "DNS:nvcr.io,DNS:registry.gitlab.com; excluded IP:0.0.0.0/0,IP:::/0",
     0},
    /* Ports do not matter; entries inside others add nothing; the first of
     * equal ones stays. */
    {"registry.lan:5000, .example.com, *.example.com, example.com:8443, sub.example.com, "
     "10.1.2.3, 10.0.0.0/8, [::1]:443, 2001:db8:1::5, 2001:db8::/32, bücher.example",
     "permitted DNS:registry.lan,DNS:example.com,IP:10.0.0.0/8,IP:::1/128,IP:2001:db8::/32,"
     "DNS:xn--bcher-kva.example; excluded ",
     0},
    /* Without domain entries, every name is excluded; v4-mapped is IPv4. */
    {"10.9.8.7:5000,::ffff:10.9.8.0/120", "permitted IP:10.9.8.0/24; excluded DNS:", 0},
    {"*", "matches every host", RP_ECONFIG},
    {"ghcr.io,*", "--unconstrained", RP_ECONFIG},
    {"ghcr.io,foo..bar", "\"foo..bar\" is not a host name", RP_ECONFIG},
    {"[::1]", "\"[::1]\" is not a host name", RP_ECONFIG},
};

static void test_ca_constraints_built(void **state) {
  char base[64], dir[128], text[2048];
  struct rp_ca *ca = NULL;
  char *err = NULL;
  X509 *x;

  temp_dir(base, sizeof base);
  for (size_t i = 0; i < sizeof build_cases / sizeof build_cases[0]; i++) {
    const struct build_case *c = &build_cases[i];

    snprintf(dir, sizeof dir, "%s/ca%zu", base, i);
    assert_int_equal(open_for(dir, c->names, false, &ca, &err), c->rc);
    if (c->rc != 0) {
      assert_null(ca);
      assert_non_null(err);
      if (strstr(err, c->want) == NULL)
        fail_msg("\"%s\": error \"%s\" lacks \"%s\"", c->names, err, c->want);
      free(err);
      err = NULL;
      /* Nothing was written. */
      snprintf(text, sizeof text, "%s/ca.crt", dir);
      assert_int_not_equal(access(text, F_OK), 0);
      continue;
    }
    assert_true(rp_ca_constrained(ca));
    x = ca_x509(ca);
    constraints_text(x, text, sizeof text);
    if (strcmp(text, c->want) != 0)
      fail_msg("\"%s\":\n got  %s\n want %s", c->names, text, c->want);
    X509_free(x);
    rp_ca_destroy(ca);
    ca = NULL;
  }
  rm_tree(base);
}

/* A CA as another tool might have made it: nameConstraints given as
 * openssl.cnf text (e.g. the leading-dot form regproxy does not write). */
static void foreign_ca(const char *dir, const char *constraints) {
  char path[192];
  EVP_PKEY *key = rp__tls_ec_key();
  X509 *x = X509_new();

  assert_non_null(key);
  assert_non_null(x);
  assert_int_equal(mkdir(dir, 0700), 0);
  assert_int_equal(X509_set_version(x, X509_VERSION_3), 1);
  assert_int_equal(rp__tls_set_serial(x), 0);
  assert_int_equal(X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                                              (const unsigned char *)"foreign", -1, -1, 0),
                   1);
  assert_int_equal(X509_set_issuer_name(x, X509_get_subject_name(x)), 1);
  assert_non_null(X509_gmtime_adj(X509_getm_notBefore(x), -3600));
  assert_non_null(X509_gmtime_adj(X509_getm_notAfter(x), DAY));
  assert_int_equal(X509_set_pubkey(x, key), 1);
  assert_int_equal(rp__tls_add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE"), 0);
  assert_int_equal(rp__tls_add_ext(x, x, NID_name_constraints, constraints), 0);
  assert_true(X509_sign(x, key, EVP_sha256()) > 0);
  snprintf(path, sizeof path, "%s/ca.crt", dir);
  write_cert(path, x);
  snprintf(path, sizeof path, "%s/ca.key", dir);
  write_key(path, key, 0600);
  X509_free(x);
  EVP_PKEY_free(key);
}

struct cover_case {
  int ca; /* index into the CAs of test_ca_check_names */
  const char *mitm;
  const char *want; /* NULL: covered; else words of the error */
};

static const char *const cover_cas[] = {
    DEFAULT_MITM,
    "10.0.0.0/8,registry.lan,2001:db8::/32",
    NULL, /* foreign: critical,permitted;DNS:.example.com,excluded;DNS:bad.example.com */
    NULL, /* regproxy's, without name constraints */
    "10.9.8.7:5000",
};

static const struct cover_case cover_cases[] = {
    {0, "", NULL},
    {0, DEFAULT_MITM, NULL},
    {0, "registry-1.docker.io:5000, ghcr.io", NULL},
    {0, "europe-docker.pkg.dev,.pkg.dev,*.pkg.dev,pkg.dev", NULL},
    {0, "sub.ghcr.io", NULL},
    {0, "GHCR.IO.", NULL},
    {0, "ghcr.io,docker.io",
     "mitm entry \"docker.io\" is outside the name constraints of the CA in "},
    {0, "docker.io", "(it may sign only for registry-1.docker.io, index.docker.io, ghcr.io,"},
    {0, "docker.io", "regproxy ca init --force"},
    {0, "docker.io", "--unconstrained"},
    {0, "docker.io", "regproxy setup docker"},
    {0, "docker.io", "update-ca-certificates"},
    {0, "evilghcr.io", "\"evilghcr.io\""},
    {0, "ghcr.io.evil.example", "\"ghcr.io.evil.example\""},
    {0, "10.0.0.1", "\"10.0.0.1\" is outside the name constraints of the CA in "},
    {0, "10.0.0.1", "(they exclude 0.0.0.0/0)"},
    {0, "[::1]:443", "(they exclude ::/0)"},
    {0, "*", "mitm entry \"*\" matches every host"},
    {1, "10.1.2.3:5000,10.0.0.0/16,::ffff:10.2.3.4,x.registry.lan,2001:db8:5::1", NULL},
    {1, "registry.lan,11.0.0.1", "\"11.0.0.1\" is outside"},
    {1, "10.0.0.0/7", "may sign only for 10.0.0.0/8, registry.lan, 2001:db8::/32"},
    {1, "::1", "\"::1\""},
    {1, "ghcr.io", "\"ghcr.io\""},
    {2, "a.example.com,.a.example.com,*.a.example.com,x.y.example.com", NULL},
    {2, ".example.com", "(they exclude bad.example.com)"},
    {2, "example.com", "\"example.com\" is outside"},
    {2, "a.example.com,x.bad.example.com", "(they exclude bad.example.com)"},
    {2, "www.example.com,.example.com:443", "\".example.com:443\" is outside"},
    {2, "10.0.0.1,::1", NULL}, /* no IP constraints at all */
    {3, "*,10.0.0.1,anything.example", NULL},
    {4, "10.9.8.7,10.9.8.7:443", NULL},
    {4, "10.9.8.7,ghcr.io", "\"ghcr.io\" is outside the name constraints of the CA in "},
    {4, "ghcr.io", "(they exclude every name)"},
    {4, "10.9.8.8", "(it may sign only for 10.9.8.7/32)"},
};

static void test_ca_check_names(void **state) {
  char base[64], dir[128];
  struct rp_ca *cas[sizeof cover_cas / sizeof cover_cas[0]];
  char *err = NULL;

  temp_dir(base, sizeof base);
  for (size_t i = 0; i < sizeof cover_cas / sizeof cover_cas[0]; i++) {
    snprintf(dir, sizeof dir, "%s/ca%zu", base, i);
    if (i == 2)
      foreign_ca(dir, "critical,permitted;DNS:.example.com,excluded;DNS:bad.example.com");
    assert_int_equal(open_for(dir, cover_cas[i], false, &cas[i], &err), 0);
  }
  assert_false(rp_ca_created(cas[2]));
  assert_true(rp_ca_constrained(cas[2]));
  assert_false(rp_ca_constrained(cas[3]));
  for (size_t i = 0; i < sizeof cover_cases / sizeof cover_cases[0]; i++) {
    const struct cover_case *c = &cover_cases[i];
    struct rp_hostlist *l = hostlist(c->mitm);
    int rc = rp_ca_check_names(cas[c->ca], l, &err);

    rp_hostlist_destroy(l);
    if (c->want == NULL) {
      if (rc != 0)
        fail_msg("CA %d, mitm \"%s\": %s", c->ca, c->mitm, err);
      assert_null(err);
      continue;
    }
    assert_int_equal(rc, RP_ECONFIG);
    assert_non_null(err);
    if (strstr(err, c->want) == NULL)
      fail_msg("CA %d, mitm \"%s\": error \"%s\" lacks \"%s\"", c->ca, c->mitm, err, c->want);
    free(err);
    err = NULL;
  }
  for (size_t i = 0; i < sizeof cover_cas / sizeof cover_cas[0]; i++)
    rp_ca_destroy(cas[i]);
  rm_tree(base);
}

/* `ca init --force`: a new key and certificate in place of the old ones,
 * with the same modes; a list that cannot be expressed leaves the old CA. */
static void test_ca_replace(void **state) {
  char base[64], dir[128], path[192];
  struct rp_ca *ca = NULL;
  char *err = NULL;
  char *old_pem;
  EVP_PKEY *old_key;
  EVP_PKEY *key;
  X509 *x;

  temp_dir(base, sizeof base);
  snprintf(dir, sizeof dir, "%s/ca", base);
  assert_int_equal(open_for(dir, "ghcr.io", false, &ca, &err), 0);
  old_pem = strdup(rp_ca_cert_pem(ca, NULL));
  rp_ca_destroy(ca);
  snprintf(path, sizeof path, "%s/ca.key", dir);
  old_key = read_key(path);

  assert_int_equal(open_for(dir, "*", true, &ca, &err), RP_ECONFIG);
  assert_null(ca);
  free(err);
  err = NULL;
  key = read_key(path);
  assert_int_equal(EVP_PKEY_eq(key, old_key), 1);
  EVP_PKEY_free(key);
  snprintf(path, sizeof path, "%s/ca.crt", dir);
  assert_string_equal(read_text(path), old_pem);

  assert_int_equal(open_for(dir, "quay.io,10.0.0.0/8", true, &ca, &err), 0);
  assert_true(rp_ca_created(ca));
  assert_string_not_equal(rp_ca_cert_pem(ca, NULL), old_pem);
  assert_string_equal(read_text(path), rp_ca_cert_pem(ca, NULL));
  assert_int_equal(mode_of(path), 0644);
  snprintf(path, sizeof path, "%s/ca.key", dir);
  assert_int_equal(mode_of(path), 0600);
  assert_int_equal(mode_of(dir), 0700);
  key = read_key(path);
  assert_int_not_equal(EVP_PKEY_eq(key, old_key), 1);
  EVP_PKEY_free(key);
  x = ca_x509(ca);
  constraints_text(x, path, sizeof path);
  assert_string_equal(path, "permitted DNS:quay.io,IP:10.0.0.0/8; excluded ");
  X509_free(x);
  rp_ca_destroy(ca);

  /* Loaded again as it is; then replaced by one without constraints. */
  assert_int_equal(open_for(dir, "ghcr.io", false, &ca, &err), 0);
  assert_false(rp_ca_created(ca));
  assert_true(rp_ca_constrained(ca));
  rp_ca_destroy(ca);
  assert_int_equal(open_for(dir, NULL, true, &ca, &err), 0);
  assert_true(rp_ca_created(ca));
  assert_false(rp_ca_constrained(ca));
  rp_ca_destroy(ca);

  /* --force also mends a CA that would not load. */
  snprintf(path, sizeof path, "%s/ca.key", dir);
  assert_int_equal(chmod(path, 0644), 0);
  expect_refusal(dir, true, "mode 0644");
  assert_int_equal(open_for(dir, "ghcr.io", true, &ca, &err), 0);
  assert_int_equal(mode_of(path), 0600);
  rp_ca_destroy(ca);

  EVP_PKEY_free(old_key);
  free(old_pem);
  rm_tree(base);
}

/* ---- leaves ---- */

struct leaf_case {
  const char *host;   /* what the caller passes */
  const char *name;   /* what the leaf must be valid for */
  bool ip;            /* IP SAN instead of DNS SAN */
  const char *notfor; /* a name it must not be valid for */
};

static const struct leaf_case leaf_cases[] = {
    {"registry-1.docker.io", "registry-1.docker.io", false, "docker.io"},
    {"Registry-1.Docker.IO", "registry-1.docker.io", false, "evil.registry-1.docker.io"},
    {"ghcr.io", "ghcr.io", false, "quay.io"},
    {"127.0.0.1", "127.0.0.1", true, "127.0.0.2"},
    {"::1", "::1", true, "::2"},
    {"[::1]", "::1", true, "127.0.0.1"},
    {"2001:DB8:0:0::1", "2001:db8::1", true, "2001:db8::2"},
};

struct fixture {
  char base[64];
  struct rp_ca *ca;
  X509 *ca_cert;
  struct rp_leafcache *lc;
};

static int setup(void **state) {
  struct fixture *f = calloc(1, sizeof *f);
  char dir[128];
  char *err = NULL;

  assert_non_null(f);
  temp_dir(f->base, sizeof f->base);
  snprintf(dir, sizeof dir, "%s/ca", f->base);
  /* Limited to the hosts the tests mint for: every leaf below is verified
   * through the name constraints. */
  assert_int_equal(
      open_for(dir, "registry-1.docker.io,ghcr.io,quay.io,example.com,127.0.0.1,::1,2001:db8::/32",
               false, &f->ca, &err),
      0);
  f->ca_cert = ca_x509(f->ca);
  assert_int_equal(rp_leafcache_create(f->ca, 64, &f->lc), 0);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  struct fixture *f = *state;

  rp_leafcache_destroy(f->lc);
  X509_free(f->ca_cert);
  rp_ca_destroy(f->ca);
  rm_tree(f->base);
  free(f);
  return 0;
}

/* Verify leaf against the CA alone, for TLS server use; *error gets
 * OpenSSL's verdict. */
static int verify_leaf_error(X509 *ca_cert, X509 *leaf, int *error) {
  X509_STORE *store = X509_STORE_new();
  X509_STORE_CTX *sctx = X509_STORE_CTX_new();
  int ok;

  assert_non_null(store);
  assert_non_null(sctx);
  assert_int_equal(X509_STORE_add_cert(store, ca_cert), 1);
  assert_int_equal(X509_STORE_CTX_init(sctx, store, leaf, NULL), 1);
  assert_int_equal(X509_STORE_CTX_set_purpose(sctx, X509_PURPOSE_SSL_SERVER), 1);
  ok = X509_verify_cert(sctx);
  *error = X509_STORE_CTX_get_error(sctx);
  X509_STORE_CTX_free(sctx);
  X509_STORE_free(store);
  return ok;
}

static int verify_leaf(X509 *ca_cert, X509 *leaf) {
  int error;
  int ok = verify_leaf_error(ca_cert, leaf, &error);

  if (ok != 1)
    print_error("verify: %s\n", X509_verify_cert_error_string(error));
  return ok;
}

static bool valid_for(X509 *leaf, const char *name, bool ip) {
  if (ip)
    return X509_check_ip_asc(leaf, name, 0) == 1;
  return X509_check_host(leaf, name, 0, 0, NULL) == 1;
}

static void test_leaf_mint(void **state) {
  struct fixture *f = *state;
  EVP_PKEY *shared = NULL;
  ASN1_INTEGER *serials[sizeof leaf_cases / sizeof leaf_cases[0]];
  X509 *leaves[sizeof leaf_cases / sizeof leaf_cases[0]];

  for (size_t i = 0; i < sizeof leaf_cases / sizeof leaf_cases[0]; i++) {
    const struct leaf_case *c = &leaf_cases[i];
    SSL_CTX *ctx = rp_leafcache_ctx(f->lc, c->host);
    STACK_OF(X509) *chain = NULL;
    GENERAL_NAMES *san;
    const GENERAL_NAME *gen;
    BASIC_CONSTRAINTS *bc;
    X509 *leaf;
    int crit = -1;
    char cn[128];

    assert_non_null(ctx);
    leaf = SSL_CTX_get0_certificate(ctx);
    assert_non_null(leaf);
    assert_int_equal(verify_leaf(f->ca_cert, leaf), 1);
    assert_true(valid_for(leaf, c->name, c->ip));
    assert_false(valid_for(leaf, c->notfor,
                           strchr(c->notfor, ':') != NULL ||
                               strspn(c->notfor, "0123456789.") == strlen(c->notfor)));

    san = X509_get_ext_d2i(leaf, NID_subject_alt_name, NULL, NULL);
    assert_non_null(san);
    assert_int_equal(sk_GENERAL_NAME_num(san), 1);
    gen = sk_GENERAL_NAME_value(san, 0);
    assert_int_equal(gen->type, c->ip ? GEN_IPADD : GEN_DNS);
    GENERAL_NAMES_free(san);
    /* A DNS leaf names its host in the CN too; an IP leaf has an empty
     * subject (OpenSSL would check a CN "127.0.0.1" against the CA's DNS
     * name constraints) and so a critical SAN. */
    if (c->ip) {
      assert_int_equal(X509_NAME_entry_count(X509_get_subject_name(leaf)), 0);
      assert_true(ext_critical(leaf, NID_subject_alt_name));
    } else {
      assert_true(X509_NAME_get_text_by_NID(X509_get_subject_name(leaf), NID_commonName, cn,
                                            sizeof cn) > 0);
      assert_string_equal(cn, c->name);
      assert_false(ext_critical(leaf, NID_subject_alt_name));
    }

    bc = X509_get_ext_d2i(leaf, NID_basic_constraints, &crit, NULL);
    assert_non_null(bc);
    assert_false(bc->ca);
    assert_int_equal(crit, 1);
    BASIC_CONSTRAINTS_free(bc);
    assert_int_equal(X509_check_ca(leaf), 0);
    assert_int_equal(X509_get_key_usage(leaf), KU_DIGITAL_SIGNATURE);
    assert_true(ext_critical(leaf, NID_key_usage));
    assert_int_equal(X509_get_extended_key_usage(leaf), XKU_SSL_SERVER);
    assert_non_null(X509_get0_subject_key_id(leaf));
    assert_non_null(X509_get0_authority_key_id(leaf));
    assert_int_equal(ASN1_OCTET_STRING_cmp(X509_get0_authority_key_id(leaf),
                                           X509_get0_subject_key_id(f->ca_cert)),
                     0);
    assert_int_equal(X509_NAME_cmp(X509_get_issuer_name(leaf), X509_get_subject_name(f->ca_cert)),
                     0);

    /* now-1h ... now+7d. */
    assert_int_equal(validity_span(leaf), 7L * DAY + 3600);
    assert_true(labs(from_now(X509_get0_notBefore(leaf)) + 3600) <= 60);
    check_serial(leaf);
    /* Distinct leaves, distinct serials (case variants share a leaf). */
    leaves[i] = leaf;
    serials[i] = ASN1_INTEGER_dup(X509_get0_serialNumber(leaf));
    for (size_t j = 0; j < i; j++)
      assert_int_equal(ASN1_INTEGER_cmp(serials[i], serials[j]) == 0, leaves[i] == leaves[j]);

    /* One leaf key for all, EC P-256; the CA rides along as the chain. */
    assert_int_equal(EVP_PKEY_base_id(X509_get0_pubkey(leaf)), EVP_PKEY_EC);
    assert_int_equal(EVP_PKEY_bits(X509_get0_pubkey(leaf)), 256);
    if (shared == NULL)
      shared = X509_get0_pubkey(leaf);
    assert_int_equal(EVP_PKEY_eq(shared, X509_get0_pubkey(leaf)), 1);
    assert_int_equal(SSL_CTX_get0_chain_certs(ctx, &chain), 1);
    assert_int_equal(sk_X509_num(chain), 1);
    assert_int_equal(X509_cmp(sk_X509_value(chain, 0), f->ca_cert), 0);
    assert_int_not_equal(EVP_PKEY_eq(X509_get0_pubkey(leaf), X509_get0_pubkey(f->ca_cert)), 1);

    SSL_CTX_free(ctx);
  }
  for (size_t i = 0; i < sizeof leaf_cases / sizeof leaf_cases[0]; i++)
    ASN1_INTEGER_free(serials[i]);
  /* Case and bracket variants shared their entries. */
  assert_int_equal(rp_leafcache_minted(f->lc), 5);
}

static void test_leaf_long_and_bad_names(void **state) {
  struct fixture *f = *state;
  static const char *const bad[] = {
      "", "a b", "evil.com,DNS:other.com", "host/path", "ho\nst", "[::1", "[127.0.0.1]", "x@y",
  };
  char host[300];
  char cn[128];
  SSL_CTX *ctx;
  X509 *leaf;

  /* A 93-character name: CN cut to 64, the SAN carries it whole. */
  snprintf(host, sizeof host, "%040d.%040d.example.com", 1, 2);
  assert_int_equal(strlen(host), 93);
  ctx = rp_leafcache_ctx(f->lc, host);
  assert_non_null(ctx);
  leaf = SSL_CTX_get0_certificate(ctx);
  assert_int_equal(X509_check_host(leaf, host, 0, 0, NULL), 1);
  assert_true(
      X509_NAME_get_text_by_NID(X509_get_subject_name(leaf), NID_commonName, cn, sizeof cn) == 64);
  assert_memory_equal(cn, host, 64);
  assert_int_equal(verify_leaf(f->ca_cert, leaf), 1);
  SSL_CTX_free(ctx);

  memset(host, 'a', 254);
  host[254] = '\0';
  assert_null(rp_leafcache_ctx(f->lc, host));
  assert_null(rp_leafcache_ctx(f->lc, NULL));
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    if (rp_leafcache_ctx(f->lc, bad[i]) != NULL)
      fail_msg("minted a leaf for \"%s\"", bad[i]);
  }
  assert_int_equal(rp_leafcache_minted(f->lc), 1);
}

/* OpenSSL's verdict on leaves inside and outside a CA's name constraints
 * (Go's is in tests/integration/test_ca_constraints.py). */
struct nc_leaf_case {
  const char *ca_names;
  const char *host;
  int want;
};

static const struct nc_leaf_case nc_leaf_cases[] = {
    {"ghcr.io,10.0.0.0/8", "ghcr.io", X509_V_OK},
    {"ghcr.io,10.0.0.0/8", "pkgs.ghcr.io", X509_V_OK},
    {"ghcr.io,10.0.0.0/8", "10.1.2.3", X509_V_OK},
    {"ghcr.io,10.0.0.0/8", "www.bank.example", X509_V_ERR_PERMITTED_VIOLATION},
    {"ghcr.io,10.0.0.0/8", "evilghcr.io", X509_V_ERR_PERMITTED_VIOLATION},
    {"ghcr.io,10.0.0.0/8", "11.0.0.1", X509_V_ERR_PERMITTED_VIOLATION},
    {"ghcr.io,10.0.0.0/8", "::1", X509_V_ERR_PERMITTED_VIOLATION},
    {"ghcr.io", "127.0.0.1", X509_V_ERR_EXCLUDED_VIOLATION},
    {"ghcr.io", "::1", X509_V_ERR_EXCLUDED_VIOLATION},
    {".pkg.dev", "europe-docker.pkg.dev", X509_V_OK},
    {"127.0.0.1:5000", "127.0.0.1", X509_V_OK},
    {"127.0.0.1:5000", "ghcr.io", X509_V_ERR_EXCLUDED_VIOLATION},
};

static void test_leaf_name_constraints(void **state) {
  char base[64], dir[128];
  struct rp_ca *ca = NULL;
  struct rp_leafcache *lc = NULL;
  char *err = NULL;
  SSL_CTX *ctx;
  X509 *ca_cert;
  int error;

  temp_dir(base, sizeof base);
  for (size_t i = 0; i < sizeof nc_leaf_cases / sizeof nc_leaf_cases[0]; i++) {
    const struct nc_leaf_case *c = &nc_leaf_cases[i];

    snprintf(dir, sizeof dir, "%s/ca%zu", base, i);
    assert_int_equal(open_for(dir, c->ca_names, false, &ca, &err), 0);
    ca_cert = ca_x509(ca);
    assert_int_equal(rp_leafcache_create(ca, 4, &lc), 0);
    ctx = rp_leafcache_ctx(lc, c->host);
    assert_non_null(ctx);
    assert_int_equal(verify_leaf_error(ca_cert, SSL_CTX_get0_certificate(ctx), &error),
                     c->want == X509_V_OK);
    if (error != c->want)
      fail_msg("CA for \"%s\", leaf for %s: %s", c->ca_names, c->host,
               X509_verify_cert_error_string(error));
    SSL_CTX_free(ctx);
    rp_leafcache_destroy(lc);
    X509_free(ca_cert);
    rp_ca_destroy(ca);
  }
  rm_tree(base);
}

/* Fetch host's context and drop the reference; returns the pointer only
 * for identity comparisons. */
static SSL_CTX *touch(struct rp_leafcache *lc, const char *host) {
  SSL_CTX *ctx = rp_leafcache_ctx(lc, host);

  assert_non_null(ctx);
  SSL_CTX_free(ctx);
  return ctx;
}

static void test_leaf_cache_lru(void **state) {
  struct fixture *f = *state;
  struct rp_leafcache *lc = NULL;
  SSL_CTX *a, *old, *renewed;
  time_t now = time(NULL);

  assert_int_equal(rp_leafcache_create(f->ca, 2, &lc), 0);
  a = touch(lc, "a.example");
  assert_ptr_equal(touch(lc, "a.example"), a);
  assert_ptr_equal(touch(lc, "A.EXAMPLE"), a);
  assert_int_equal(rp_leafcache_minted(lc), 1);
  touch(lc, "b.example");
  assert_int_equal(rp_leafcache_minted(lc), 2);
  /* Third host: a (least recently used) goes. */
  touch(lc, "c.example");
  assert_int_equal(rp_leafcache_minted(lc), 3);
  touch(lc, "b.example");
  touch(lc, "c.example");
  assert_int_equal(rp_leafcache_minted(lc), 3);
  touch(lc, "a.example");
  assert_int_equal(rp_leafcache_minted(lc), 4);
  /* b was least recently used now; c stayed. */
  touch(lc, "c.example");
  assert_int_equal(rp_leafcache_minted(lc), 4);
  touch(lc, "b.example");
  assert_int_equal(rp_leafcache_minted(lc), 5);

  /* Re-mint a day before expiry; a reference taken earlier stays usable. */
  old = rp_leafcache_ctx(lc, "b.example");
  assert_non_null(old);
  rp__leafcache_set_time(lc, now + 5 * DAY);
  assert_ptr_equal(touch(lc, "b.example"), old);
  assert_int_equal(rp_leafcache_minted(lc), 5);
  rp__leafcache_set_time(lc, now + 6 * DAY + 1);
  renewed = rp_leafcache_ctx(lc, "b.example");
  assert_non_null(renewed);
  assert_ptr_not_equal(renewed, old);
  assert_int_equal(rp_leafcache_minted(lc), 6);
  assert_true(labs(from_now(X509_get0_notAfter(SSL_CTX_get0_certificate(renewed))) -
                   (13L * DAY + 1)) <= 60);
  assert_non_null(SSL_CTX_get0_certificate(old));
  SSL_CTX_free(old);
  SSL_CTX_free(renewed);
  assert_ptr_equal(touch(lc, "b.example"), renewed);
  assert_int_equal(rp_leafcache_minted(lc), 6);
  /* A clock that went back before notBefore re-mints too. */
  rp__leafcache_set_time(lc, now - DAY);
  touch(lc, "b.example");
  assert_int_equal(rp_leafcache_minted(lc), 7);

  rp_leafcache_destroy(lc);
}

/* ---- handshakes ---- */

struct hs {
  const char *sni;           /* NULL: none */
  const char *verify_name;   /* host or IP the client checks */
  const unsigned char *alpn; /* wire format, NULL: no ALPN */
  size_t alpn_len;
  int client_min, client_max; /* 0: library default */
  bool trust_ca;
};

struct hs_result {
  bool ok;
  char alpn[32];
  int version;
  unsigned long client_err;
};

static void pump_handshake(SSL *client, SSL *server, struct hs_result *r) {
  bool client_done = false, server_done = false;
  int rc;

  for (int round = 0; round < 64 && !(client_done && server_done); round++) {
    if (!client_done) {
      rc = SSL_do_handshake(client);
      if (rc == 1)
        client_done = true;
      else if (SSL_get_error(client, rc) != SSL_ERROR_WANT_READ) {
        r->client_err = ERR_peek_last_error();
        break;
      }
    }
    if (!server_done) {
      rc = SSL_do_handshake(server);
      if (rc == 1)
        server_done = true;
      else if (SSL_get_error(server, rc) != SSL_ERROR_WANT_READ)
        break;
    }
  }
  /* Let the client read what the server sent last (an alert or tickets). */
  if (client_done && server_done) {
    char b;
    rc = SSL_read(client, &b, 1);
    assert_true(rc <= 0);
    assert_int_equal(SSL_get_error(client, rc), SSL_ERROR_WANT_READ);
    r->ok = true;
  } else if (!client_done && r->client_err == 0) {
    rc = SSL_do_handshake(client);
    if (rc != 1)
      r->client_err = ERR_peek_last_error();
  }
}

static SSL_CTX *client_ctx(X509 *ca_cert, const struct hs *h) {
  SSL_CTX *cctx = SSL_CTX_new(TLS_client_method());

  assert_non_null(cctx);
  SSL_CTX_set_verify(cctx, SSL_VERIFY_PEER, NULL);
  if (h->trust_ca)
    assert_int_equal(X509_STORE_add_cert(SSL_CTX_get_cert_store(cctx), ca_cert), 1);
  if (h->client_min != 0) {
    SSL_CTX_set_security_level(cctx, 0);
    assert_int_equal(SSL_CTX_set_min_proto_version(cctx, h->client_min), 1);
  }
  if (h->client_max != 0)
    assert_int_equal(SSL_CTX_set_max_proto_version(cctx, h->client_max), 1);
  return cctx;
}

/* One full handshake (no resumption) between a client on cctx set up by h
 * and a server SSL on sctx. */
static struct hs_result handshake_with(SSL_CTX *sctx, SSL_CTX *cctx, const struct hs *h) {
  struct hs_result r = {0};
  SSL *client, *server;
  BIO *cbio = NULL, *sbio = NULL;
  const unsigned char *sel = NULL;
  unsigned int sel_len = 0;
  X509_VERIFY_PARAM *param;

  client = SSL_new(cctx);
  server = SSL_new(sctx);
  assert_non_null(client);
  assert_non_null(server);
  assert_int_equal(BIO_new_bio_pair(&cbio, 0, &sbio, 0), 1);
  SSL_set_bio(client, cbio, cbio);
  SSL_set_bio(server, sbio, sbio);
  SSL_set_connect_state(client);
  SSL_set_accept_state(server);
  if (h->sni != NULL)
    assert_int_equal(SSL_set_tlsext_host_name(client, h->sni), 1);
  param = SSL_get0_param(client);
  if (strchr(h->verify_name, ':') != NULL ||
      strspn(h->verify_name, "0123456789.") == strlen(h->verify_name))
    assert_int_equal(X509_VERIFY_PARAM_set1_ip_asc(param, h->verify_name), 1);
  else
    assert_int_equal(SSL_set1_host(client, h->verify_name), 1);
  if (h->alpn != NULL)
    assert_int_equal(SSL_set_alpn_protos(client, h->alpn, (unsigned)h->alpn_len), 0);

  pump_handshake(client, server, &r);
  if (r.ok) {
    assert_int_equal(SSL_get_verify_result(client), X509_V_OK);
    SSL_get0_alpn_selected(client, &sel, &sel_len);
    assert_true(sel_len < sizeof r.alpn);
    if (sel_len > 0)
      memcpy(r.alpn, sel, sel_len);
    r.alpn[sel_len] = '\0';
    r.version = SSL_version(client);
  }
  ERR_clear_error();
  SSL_free(client);
  SSL_free(server);
  return r;
}

static struct hs_result handshake(SSL_CTX *sctx, X509 *ca_cert, const struct hs *h) {
  SSL_CTX *cctx = client_ctx(ca_cert, h);
  struct hs_result r = handshake_with(sctx, cctx, h);

  SSL_CTX_free(cctx);
  return r;
}

#define ALPN_BOTH "\x02h2\x08http/1.1"
#define ALPN_H2   "\x02h2"
#define ALPN_MANY "\x06spdy/3\x02h2\x08http/1.0\x08http/1.1"

static void test_handshake_alpn(void **state) {
  struct fixture *f = *state;
  SSL_CTX *ctx = rp_leafcache_ctx(f->lc, "registry-1.docker.io");
  struct hs h = {"registry-1.docker.io",
                 "registry-1.docker.io",
                 (const unsigned char *)ALPN_BOTH,
                 sizeof ALPN_BOTH - 1,
                 0,
                 0,
                 true};
  struct hs_result r;

  assert_non_null(ctx);
  r = handshake(ctx, f->ca_cert, &h);
  assert_true(r.ok);
  assert_string_equal(r.alpn, "http/1.1");
  assert_int_equal(r.version, TLS1_3_VERSION);

  h.alpn = (const unsigned char *)ALPN_MANY;
  h.alpn_len = sizeof ALPN_MANY - 1;
  r = handshake(ctx, f->ca_cert, &h);
  assert_true(r.ok);
  assert_string_equal(r.alpn, "http/1.1");

  /* Only h2 offered: fatal no_application_protocol. */
  h.alpn = (const unsigned char *)ALPN_H2;
  h.alpn_len = sizeof ALPN_H2 - 1;
  r = handshake(ctx, f->ca_cert, &h);
  assert_false(r.ok);
  assert_int_equal(ERR_GET_REASON(r.client_err), SSL_R_TLSV1_ALERT_NO_APPLICATION_PROTOCOL);

  /* No ALPN at all is fine. */
  h.alpn = NULL;
  r = handshake(ctx, f->ca_cert, &h);
  assert_true(r.ok);
  assert_string_equal(r.alpn, "");

  /* TLS 1.2 with ALPN. */
  h.alpn = (const unsigned char *)ALPN_BOTH;
  h.alpn_len = sizeof ALPN_BOTH - 1;
  h.client_max = TLS1_2_VERSION;
  r = handshake(ctx, f->ca_cert, &h);
  assert_true(r.ok);
  assert_int_equal(r.version, TLS1_2_VERSION);
  assert_string_equal(r.alpn, "http/1.1");

  /* TLS 1.1 is refused. */
  h.client_min = TLS1_VERSION;
  h.client_max = TLS1_1_VERSION;
  r = handshake(ctx, f->ca_cert, &h);
  assert_false(r.ok);

  /* A client that does not trust the CA fails verification. */
  h.client_min = h.client_max = 0;
  h.trust_ca = false;
  r = handshake(ctx, f->ca_cert, &h);
  assert_false(r.ok);
  assert_int_equal(ERR_GET_REASON(r.client_err), SSL_R_CERTIFICATE_VERIFY_FAILED);

  /* The leaf is for its host only. */
  h.trust_ca = true;
  h.verify_name = "auth.docker.io";
  r = handshake(ctx, f->ca_cert, &h);
  assert_false(r.ok);
  SSL_CTX_free(ctx);

  /* An IP literal, no SNI (clients send none for addresses). */
  ctx = rp_leafcache_ctx(f->lc, "::1");
  assert_non_null(ctx);
  h.sni = NULL;
  h.verify_name = "::1";
  r = handshake(ctx, f->ca_cert, &h);
  assert_true(r.ok);
  assert_string_equal(r.alpn, "http/1.1");
  SSL_CTX_free(ctx);
}

/* What the TLS stream does: start on the base context, switch in the
 * servername callback. */
static int on_servername(SSL *ssl, int *alert, void *arg) {
  struct rp_leafcache *lc = arg;
  const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
  SSL_CTX *ctx;

  if (name == NULL)
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  ctx = rp_leafcache_ctx(lc, name);
  if (ctx == NULL)
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  SSL_set_SSL_CTX(ssl, ctx);
  SSL_CTX_free(ctx);
  return SSL_TLSEXT_ERR_OK;
}

static void test_handshake_base_ctx(void **state) {
  struct fixture *f = *state;
  SSL_CTX *base = rp_leafcache_base_ctx(f->lc);
  struct hs h = {"quay.io", "quay.io", (const unsigned char *)ALPN_BOTH, sizeof ALPN_BOTH - 1, 0,
                 0,         true};
  struct hs_result r;

  assert_non_null(base);
  assert_null(SSL_CTX_get0_certificate(base));
  SSL_CTX_set_tlsext_servername_callback(base, on_servername);
  SSL_CTX_set_tlsext_servername_arg(base, f->lc);
  r = handshake(base, f->ca_cert, &h);
  assert_true(r.ok);
  assert_string_equal(r.alpn, "http/1.1");

  h.client_max = TLS1_2_VERSION;
  r = handshake(base, f->ca_cert, &h);
  assert_true(r.ok);
  assert_string_equal(r.alpn, "http/1.1");

  h.client_max = 0;
  h.alpn = (const unsigned char *)ALPN_H2;
  h.alpn_len = sizeof ALPN_H2 - 1;
  r = handshake(base, f->ca_cert, &h);
  assert_false(r.ok);

  /* No SNI: the base context has no certificate to offer. */
  h.sni = NULL;
  h.alpn = NULL;
  r = handshake(base, f->ca_cert, &h);
  assert_false(r.ok);
  SSL_CTX_set_tlsext_servername_callback(base, NULL);
}

/* ---- rates ---- */

static double seconds_since(const struct timespec *t0) {
  struct timespec t1;

  clock_gettime(CLOCK_MONOTONIC, &t1);
  return (double)(t1.tv_sec - t0->tv_sec) + (double)(t1.tv_nsec - t0->tv_nsec) / 1e9;
}

static void test_rates(void **state) {
  struct fixture *f = *state;
  struct rp_leafcache *lc = NULL;
  struct hs h = {"h0.example.com",
                 "h0.example.com",
                 (const unsigned char *)ALPN_BOTH,
                 sizeof ALPN_BOTH - 1,
                 0,
                 0,
                 true};
  struct timespec t0;
  char host[64];
  SSL_CTX *ctx, *cctx;
  const int mints = 1000, shakes = 200;
  double s;

  assert_int_equal(rp_leafcache_create(f->ca, (size_t)mints, &lc), 0);
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (int i = 0; i < mints; i++) {
    snprintf(host, sizeof host, "h%d.example.com", i);
    ctx = rp_leafcache_ctx(lc, host);
    assert_non_null(ctx);
    SSL_CTX_free(ctx);
  }
  s = seconds_since(&t0);
  assert_int_equal(rp_leafcache_minted(lc), (uint64_t)mints);
  print_message("leaf mint: %.0f mints/s (%.3f ms each, %d hosts)\n", mints / s, s * 1e3 / mints,
                mints);

  ctx = rp_leafcache_ctx(lc, "h0.example.com");
  assert_non_null(ctx);
  cctx = client_ctx(f->ca_cert, &h);
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (int i = 0; i < shakes; i++)
    assert_true(handshake_with(ctx, cctx, &h).ok);
  s = seconds_since(&t0);
  print_message("full TLS 1.3 handshake, client and server in one thread: %.0f/s (%.3f ms "
                "each)\n",
                shakes / s, s * 1e3 / shakes);
  SSL_CTX_free(cctx);
  SSL_CTX_free(ctx);
  rp_leafcache_destroy(lc);
}

/* ---- `regproxy ca` ---- */

/* Run `regproxy --ca-dir DIR args...` through the configuration loader and
 * rp_cli_ca, capturing stdout into out. */
static int run_cli(const char *ca_dir, const char *const *args, size_t nargs, char *out,
                   size_t size) {
  struct rp_config *cfg = NULL;
  char path[] = "/tmp/rp_test_tls_out.XXXXXX";
  char *argv[16] = {"regproxy", "--config", "", "--ca-dir", (char *)ca_dir};
  char *envp[] = {"HOME=/nonexistent", NULL};
  char *err = NULL;
  int argc = 5;
  int fd = mkstemp(path);
  int saved;
  int rc;
  ssize_t n;

  assert_true(fd >= 0);
  assert_true(nargs + argc < sizeof argv / sizeof argv[0]);
  for (size_t i = 0; i < nargs; i++)
    argv[argc++] = (char *)args[i];
  if (rp_config_load(&cfg, argc, argv, envp, &err) != 0)
    fail_msg("config: %s", err);
  fflush(stdout);
  saved = dup(STDOUT_FILENO);
  assert_true(saved >= 0);
  assert_true(dup2(fd, STDOUT_FILENO) >= 0);
  rc = rp_cli_ca(cfg);
  fflush(stdout);
  assert_true(dup2(saved, STDOUT_FILENO) >= 0);
  close(saved);
  n = pread(fd, out, size - 1, 0);
  assert_true(n >= 0);
  out[n] = '\0';
  close(fd);
  unlink(path);
  rp_config_destroy(cfg);
  return rc;
}

/* The name constraints of the CA certificate in dir, as constraints_text. */
static const char *dir_constraints(const char *dir) {
  static char text[2048];
  char path[192];
  FILE *fp;
  X509 *x;

  snprintf(path, sizeof path, "%s/ca.crt", dir);
  fp = fopen(path, "r");
  assert_non_null(fp);
  x = PEM_read_X509(fp, NULL, NULL, NULL);
  fclose(fp);
  assert_non_null(x);
  if (X509_get_ext_by_NID(x, NID_name_constraints, -1) < 0)
    snprintf(text, sizeof text, "none");
  else
    constraints_text(x, text, sizeof text);
  X509_free(x);
  return text;
}

static void test_cli_ca(void **state) {
  static char out[65536];
  static char first[65536];
  char base[64], dir[128], want[192];
  const char *init[] = {"ca", "init"};
  const char *cert[] = {"ca", "cert"};
  const char *path[] = {"ca", "path"};
  const char *bad[] = {"ca", "rotate"};
  const char *extra[] = {"ca", "path", "x"};
  const char *init_ghcr[] = {"ca", "init", "--mitm", "ghcr.io"};
  const char *init_more[] = {"ca", "init", "--mitm", "ghcr.io,quay.io:8443"};
  const char *force_more[] = {"ca", "init", "--force", "--mitm", "ghcr.io,quay.io:8443"};
  const char *unconstrained[] = {"ca", "init", "--unconstrained", "--mitm", "*"};
  const char *force_any[] = {"ca", "init", "--mitm", "*", "--force", "--unconstrained"};
  const char *init_off[] = {"ca", "init", "--mitm", ""};
  const char *path_force[] = {"ca", "path", "--force"};
  const char *star[] = {"ca", "init", "--mitm", "*"};

  temp_dir(base, sizeof base);
  snprintf(dir, sizeof dir, "%s/ca", base);
  assert_int_equal(run_cli(dir, cert, 2, out, sizeof out), 2);
  assert_int_equal(run_cli(dir, path, 2, out, sizeof out), 2);
  /* Interception off: a CA for the default mitm list. */
  assert_int_equal(run_cli(dir, init_off, 4, out, sizeof out), 0);
  snprintf(want, sizeof want, "%s/ca.crt\n", dir);
  assert_string_equal(out, want);
  assert_non_null(strstr(dir_constraints(dir), "permitted DNS:registry-1.docker.io,"));
  assert_non_null(strstr(dir_constraints(dir), ",DNS:pkg.dev,"));
  assert_int_equal(run_cli(dir, init, 2, out, sizeof out), 0);
  assert_string_equal(out, want);
  assert_int_equal(run_cli(dir, path, 2, out, sizeof out), 0);
  assert_string_equal(out, want);
  assert_int_equal(run_cli(dir, cert, 2, out, sizeof out), 0);
  want[strlen(want) - 1] = '\0';
  assert_string_equal(out, read_text(want));
  assert_non_null(strstr(out, "-----BEGIN CERTIFICATE-----"));
  assert_int_equal(run_cli(dir, bad, 2, out, sizeof out), 2);
  assert_int_equal(run_cli(dir, init, 1, out, sizeof out), 2);
  assert_int_equal(run_cli(dir, extra, 3, out, sizeof out), 2);
  assert_int_equal(run_cli(dir, path_force, 3, out, sizeof out), 2);
  rm_tree(dir);

  /* init for one list; a wider list needs --force, which makes a new CA. */
  assert_int_equal(run_cli(dir, init_ghcr, 4, out, sizeof out), 0);
  assert_string_equal(dir_constraints(dir), "permitted DNS:ghcr.io; excluded IP:0.0.0.0/0,IP:::/0");
  assert_int_equal(run_cli(dir, cert, 2, first, sizeof first), 0);
  assert_int_equal(run_cli(dir, init_ghcr, 4, out, sizeof out), 0);
  assert_int_equal(run_cli(dir, init_more, 4, out, sizeof out), 2);
  assert_string_equal(out, "");
  assert_int_equal(run_cli(dir, star, 4, out, sizeof out), 2);
  assert_int_equal(run_cli(dir, unconstrained, 5, out, sizeof out), 2);
  assert_int_equal(run_cli(dir, cert, 2, out, sizeof out), 0);
  assert_string_equal(out, first);
  assert_int_equal(run_cli(dir, force_more, 5, out, sizeof out), 0);
  assert_string_equal(dir_constraints(dir),
                      "permitted DNS:ghcr.io,DNS:quay.io; excluded IP:0.0.0.0/0,IP:::/0");
  assert_int_equal(run_cli(dir, cert, 2, out, sizeof out), 0);
  assert_string_not_equal(out, first);
  assert_int_equal(run_cli(dir, init_more, 4, out, sizeof out), 0);
  /* --force --unconstrained: any list, "*" too. */
  assert_int_equal(run_cli(dir, force_any, 6, out, sizeof out), 0);
  assert_string_equal(dir_constraints(dir), "none");
  assert_int_equal(run_cli(dir, star, 4, out, sizeof out), 0);
  assert_int_equal(run_cli(dir, init_more, 4, out, sizeof out), 0);

  /* A broken CA is a configuration error. */
  snprintf(want, sizeof want, "%s/ca.key", dir);
  assert_int_equal(chmod(want, 0644), 0);
  assert_int_equal(run_cli(dir, path, 2, out, sizeof out), 2);
  rm_tree(base);
}

static void test_destroy_null(void **state) {
  struct rp_leafcache *lc = (struct rp_leafcache *)1;

  rp_ca_destroy(NULL);
  rp_leafcache_destroy(NULL);
  assert_int_equal(rp_leafcache_create(NULL, 8, &lc), RP_EINVAL);
  assert_null(lc);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_ca_create_and_reload),
      cmocka_unit_test(test_ca_refusals),
      cmocka_unit_test(test_ca_constraints_built),
      cmocka_unit_test(test_ca_check_names),
      cmocka_unit_test(test_ca_replace),
      cmocka_unit_test_setup_teardown(test_leaf_mint, setup, teardown),
      cmocka_unit_test_setup_teardown(test_leaf_long_and_bad_names, setup, teardown),
      cmocka_unit_test(test_leaf_name_constraints),
      cmocka_unit_test_setup_teardown(test_leaf_cache_lru, setup, teardown),
      cmocka_unit_test_setup_teardown(test_handshake_alpn, setup, teardown),
      cmocka_unit_test_setup_teardown(test_handshake_base_ctx, setup, teardown),
      cmocka_unit_test_setup_teardown(test_rates, setup, teardown),
      cmocka_unit_test(test_cli_ca),
      cmocka_unit_test(test_destroy_null),
  };

  return cmocka_run_group_tests(tests, NULL, NULL);
}
