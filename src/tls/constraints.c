/* The CA's name constraints (RFC 5280 §4.2.1.10, issue 8): a new CA may
 * sign only for the mitm registries, so that its key, if stolen, cannot
 * impersonate any other site to the machines that trust it. Nothing but the
 * certificate records them: at start-up they are read back from it and every
 * mitm entry must lie inside.
 *
 * Entries become permitted subtrees:
 *   "foo.com", ".foo.com", "*.foo.com" -> dNSName "foo.com" (the name and
 *       its subdomains). The leading-dot form ".foo.com" (subdomains only) is
 *       a Go and OpenSSL reading, not RFC 5280's; the plain form means the
 *       same to every verifier, at the price of also permitting foo.com.
 *   an IP -> iPAddress with a full mask; a CIDR -> that range; IPv4 as 8
 *       bytes, IPv6 as 32 (verifiers compare only addresses of the same size).
 *   ports do not matter; "*" cannot be expressed and is refused.
 * A name type without a permitted subtree is not constrained at all, so a
 * list without IP entries excludes 0.0.0.0/0 and ::/0, and one without domain
 * entries excludes the empty dNSName, which Go (matchDomainConstraint) and
 * OpenSSL (nc_dns) both read as every name. Tested with both. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "regproxy/error.h"
#include "regproxy/rules.h"
#include "tls/internal.h"

#define DNS_NAME_MAX  253
#define DNS_LABEL_MAX 63
/* How much of the permitted list an error message quotes. */
#define LIST_SHOWN_MAX 512

/* A name constraint or a host-list entry in one comparable form. */
struct subtree {
  bool is_ip;
  /* DNS: "" every name, ".x" the subdomains of x, "x" x and its subdomains. */
  char dns[DNS_NAME_MAX + 2];
  /* IP: 4 or 16 address bytes and as many mask bytes, addr masked. */
  size_t len;
  uint8_t addr[16];
  uint8_t mask[16];
};

/* ---- building ---------------------------------------------------------- */

/* A host name as Go's constraint parser accepts it and leaves are minted:
 * non-empty labels of letters, digits, '-' and '_'. */
static bool valid_dns_name(const char *name) {
  size_t len = strlen(name);
  size_t label = 0;

  if (len == 0 || len > DNS_NAME_MAX)
    return false;
  for (size_t i = 0; i <= len; i++) {
    char c = name[i];

    if (c == '.' || c == '\0') {
      if (label == 0 || label > DNS_LABEL_MAX)
        return false;
      label = 0;
      continue;
    }
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_'))
      return false;
    label++;
  }
  return true;
}

static void entry_subtree(const struct rp_hostlist_entry *e, struct subtree *t) {
  memset(t, 0, sizeof(*t));
  if (!e->is_net) {
    snprintf(t->dns, sizeof(t->dns), "%s", e->domain);
    return;
  }
  t->is_ip = true;
  t->len = e->is4 ? 4 : 16;
  memcpy(t->addr, e->addr + 16 - t->len, t->len);
  memcpy(t->mask, e->mask + 16 - t->len, t->len);
}

/* Case-insensitive suffix test. */
static bool ends_with(const char *s, size_t slen, const char *suffix, size_t len) {
  return slen >= len && strncasecmp(s + slen - len, suffix, len) == 0;
}

/* Is every name of a also a name of b? */
static bool dns_subset(const char *a, const char *b) {
  size_t la = strlen(a);
  size_t lb = strlen(b);

  if (lb == 0)
    return true;
  if (la == 0)
    return false;
  if (b[0] == '.')
    return ends_with(a, la, b, lb);
  if (la == lb)
    return strcasecmp(a, b) == 0;
  return ends_with(a, la, b, lb) && a[la - lb - 1] == '.';
}

static bool ip_subset(const struct subtree *a, const struct subtree *b) {
  if (a->len != b->len)
    return false;
  for (size_t i = 0; i < a->len; i++) {
    if ((b->mask[i] & ~a->mask[i]) != 0 || ((a->addr[i] ^ b->addr[i]) & b->mask[i]) != 0)
      return false;
  }
  return true;
}

static bool subset(const struct subtree *a, const struct subtree *b) {
  if (a->is_ip != b->is_ip)
    return false;
  return a->is_ip ? ip_subset(a, b) : dns_subset(a->dns, b->dns);
}

/* Subtrees of names and of address ranges meet only when one holds the
 * other. */
static bool intersects(const struct subtree *a, const struct subtree *b) {
  return subset(a, b) || subset(b, a);
}

static GENERAL_NAME *subtree_name(const struct subtree *t) {
  GENERAL_NAME *gen = GENERAL_NAME_new();
  ASN1_STRING *s = NULL;
  unsigned char buf[32];

  if (gen == NULL)
    goto fail;
  if (t->is_ip) {
    memcpy(buf, t->addr, t->len);
    memcpy(buf + t->len, t->mask, t->len);
    s = ASN1_OCTET_STRING_new();
    if (s == NULL || ASN1_OCTET_STRING_set(s, buf, (int)(2 * t->len)) != 1)
      goto fail;
    GENERAL_NAME_set0_value(gen, GEN_IPADD, s);
  } else {
    s = ASN1_IA5STRING_new();
    if (s == NULL || ASN1_STRING_set(s, t->dns, (int)strlen(t->dns)) != 1)
      goto fail;
    GENERAL_NAME_set0_value(gen, GEN_DNS, s);
  }
  return gen;
fail:
  ASN1_STRING_free(s);
  GENERAL_NAME_free(gen);
  return NULL;
}

static int push_subtree(STACK_OF(GENERAL_SUBTREE) * *stack, const struct subtree *t) {
  GENERAL_SUBTREE *sub = NULL;
  GENERAL_NAME *gen = subtree_name(t);
  int rc = RP_ENOMEM;

  if (gen == NULL)
    goto out;
  if (*stack == NULL)
    *stack = sk_GENERAL_SUBTREE_new_null();
  sub = GENERAL_SUBTREE_new();
  if (*stack == NULL || sub == NULL)
    goto out;
  GENERAL_NAME_free(sub->base);
  sub->base = gen;
  gen = NULL;
  if (sk_GENERAL_SUBTREE_push(*stack, sub) <= 0)
    goto out;
  sub = NULL;
  rc = 0;
out:
  GENERAL_SUBTREE_free(sub);
  GENERAL_NAME_free(gen);
  return rc;
}

/* The entry's subtree, or why no constraint can express it. */
static int entry_to_subtree(const struct rp_hostlist_entry *e, struct subtree *t, char **err) {
  entry_subtree(e, t);
  if (t->is_ip)
    return 0;
  /* ".foo.com" is permitted as "foo.com" (see the top of the file). */
  if (t->dns[0] == '.')
    memmove(t->dns, t->dns + 1, strlen(t->dns));
  if (!valid_dns_name(t->dns))
    return rp__tls_fail(err, RP_ECONFIG,
                        "mitm entry \"%s\" is not a host name a CA can be limited to (remove it "
                        "from mitm, or create the CA with --unconstrained)",
                        e->text);
  return 0;
}

int rp__ca_add_constraints(X509 *x, const struct rp_hostlist *names, char **err) {
  NAME_CONSTRAINTS *nc = NULL;
  struct subtree *trees = NULL;
  struct rp_hostlist_entry e;
  struct subtree t;
  size_t n = rp_hostlist_count(names);
  size_t n_dns = 0;
  size_t n_ip = 0;
  int rc = RP_ENOMEM;

  if (rp_hostlist_has_star(names))
    return rp__tls_fail(err, RP_ECONFIG,
                        "mitm entry \"*\" matches every host, which a CA with name constraints "
                        "cannot sign for: create the CA with --unconstrained");
  nc = NAME_CONSTRAINTS_new();
  trees = calloc(n > 0 ? n : 1, sizeof(*trees));
  if (nc == NULL || trees == NULL)
    goto out;
  for (size_t i = 0; i < n; i++) {
    rp_hostlist_entry(names, i, &e);
    rc = entry_to_subtree(&e, &trees[i], err);
    if (rc != 0)
      goto out;
  }
  rc = RP_ENOMEM;
  /* An entry inside another one (a port variant, a subdomain, a smaller
   * range) adds nothing; of two equal entries the first stays. */
  for (size_t i = 0; i < n; i++) {
    bool redundant = false;

    for (size_t j = 0; j < n && !redundant; j++)
      redundant =
          j != i && subset(&trees[i], &trees[j]) && (j < i || !subset(&trees[j], &trees[i]));
    if (redundant)
      continue;
    if (push_subtree(&nc->permittedSubtrees, &trees[i]) != 0)
      goto out;
    if (trees[i].is_ip)
      n_ip++;
    else
      n_dns++;
  }
  if (n_dns == 0) {
    memset(&t, 0, sizeof(t));
    if (push_subtree(&nc->excludedSubtrees, &t) != 0)
      goto out;
  }
  if (n_ip == 0) {
    memset(&t, 0, sizeof(t));
    t.is_ip = true;
    t.len = 4;
    if (push_subtree(&nc->excludedSubtrees, &t) != 0)
      goto out;
    t.len = 16;
    if (push_subtree(&nc->excludedSubtrees, &t) != 0)
      goto out;
  }
  if (X509_add1_ext_i2d(x, NID_name_constraints, nc, 1, X509V3_ADD_DEFAULT) != 1)
    goto out;
  rc = 0;
out:
  NAME_CONSTRAINTS_free(nc);
  free(trees);
  return rc;
}

/* ---- reading back -------------------------------------------------------- */

/* A DNS or IP constraint of the certificate; false for other name types
 * and for names no host can match (embedded NULs, absurd lengths). */
static bool cert_subtree(const GENERAL_SUBTREE *sub, struct subtree *t) {
  const GENERAL_NAME *gen = sub->base;
  const ASN1_STRING *s;
  int len;

  memset(t, 0, sizeof(*t));
  if (gen == NULL)
    return false;
  if (gen->type == GEN_DNS) {
    s = gen->d.dNSName;
    len = ASN1_STRING_length(s);
    if (len < 0 || (size_t)len >= sizeof(t->dns) ||
        memchr(ASN1_STRING_get0_data(s), '\0', (size_t)len) != NULL)
      return false;
    memcpy(t->dns, ASN1_STRING_get0_data(s), (size_t)len);
    return true;
  }
  if (gen->type == GEN_IPADD) {
    s = gen->d.iPAddress;
    len = ASN1_STRING_length(s);
    if (len != 8 && len != 32)
      return false;
    t->is_ip = true;
    t->len = (size_t)len / 2;
    memcpy(t->mask, ASN1_STRING_get0_data(s) + t->len, t->len);
    for (size_t i = 0; i < t->len; i++)
      t->addr[i] = ASN1_STRING_get0_data(s)[i] & t->mask[i];
    return true;
  }
  return false;
}

/* A subtree as text: the name, or address/prefix (address/mask when the
 * mask has holes). */
static void subtree_text(const struct subtree *t, char *buf, size_t size) {
  char addr[INET6_ADDRSTRLEN];
  char mask[INET6_ADDRSTRLEN];
  unsigned bits = 0;
  bool contiguous = true;

  if (!t->is_ip) {
    if (t->dns[0] == '\0') {
      snprintf(buf, size, "every name");
      return;
    }
    snprintf(buf, size, "%s", t->dns);
    for (char *p = buf; *p != '\0'; p++) {
      if (*p < 0x21 || *p > 0x7e)
        *p = '?';
    }
    return;
  }
  for (size_t i = 0; i < t->len; i++) {
    for (int k = 7; k >= 0; k--) {
      if ((t->mask[i] >> k) & 1) {
        contiguous = contiguous && bits == i * 8 + (unsigned)(7 - k);
        bits++;
      }
    }
  }
  inet_ntop(t->len == 4 ? AF_INET : AF_INET6, t->addr, addr, sizeof(addr));
  if (contiguous) {
    snprintf(buf, size, "%s/%u", addr, bits);
  } else {
    inet_ntop(t->len == 4 ? AF_INET : AF_INET6, t->mask, mask, sizeof(mask));
    snprintf(buf, size, "%s/%s", addr, mask);
  }
}

/* The names the CA may sign for, comma-separated, cut to fit. */
static void permitted_text(const NAME_CONSTRAINTS *nc, char *buf, size_t size) {
  struct subtree t;
  char one[DNS_NAME_MAX + 2 + 2 * INET6_ADDRSTRLEN];
  size_t used = 0;
  int n = sk_GENERAL_SUBTREE_num(nc->permittedSubtrees);

  buf[0] = '\0';
  for (int i = 0; i < n; i++) {
    if (!cert_subtree(sk_GENERAL_SUBTREE_value(nc->permittedSubtrees, i), &t))
      continue;
    subtree_text(&t, one, sizeof(one));
    if (used + strlen(one) + 6 >= size) {
      snprintf(buf + used, size - used, "%s...", used > 0 ? ", " : "");
      return;
    }
    used += (size_t)snprintf(buf + used, size - used, "%s%s", used > 0 ? ", " : "", one);
  }
  if (used == 0)
    snprintf(buf, size, "no host of that kind");
}

enum cover { COVERED, NOT_PERMITTED, EXCLUDED };

/* Does nc let the CA sign for every name of t? A name type with no permitted
 * subtree is unconstrained (RFC 5280); no excluded subtree of its type may
 * meet t anywhere (the first one that does goes to *excluded). */
static enum cover cover(const NAME_CONSTRAINTS *nc, const struct subtree *t,
                        struct subtree *excluded) {
  const int type = t->is_ip ? GEN_IPADD : GEN_DNS;
  const GENERAL_SUBTREE *sub;
  struct subtree c;
  bool any = false;
  bool inside = false;

  for (int i = 0; i < sk_GENERAL_SUBTREE_num(nc->permittedSubtrees) && !inside; i++) {
    sub = sk_GENERAL_SUBTREE_value(nc->permittedSubtrees, i);
    if (sub->base == NULL || sub->base->type != type)
      continue;
    any = true;
    inside = cert_subtree(sub, &c) && subset(t, &c);
  }
  if (any && !inside)
    return NOT_PERMITTED;
  for (int i = 0; i < sk_GENERAL_SUBTREE_num(nc->excludedSubtrees); i++) {
    sub = sk_GENERAL_SUBTREE_value(nc->excludedSubtrees, i);
    if (sub->base == NULL || sub->base->type != type)
      continue;
    /* An excluded name that no host could match excludes nothing. */
    if (cert_subtree(sub, &c) && intersects(t, &c)) {
      *excluded = c;
      return EXCLUDED;
    }
  }
  return COVERED;
}

#define REISSUE_HINT                                                                               \
  "re-issue it for this mitm list with `regproxy ca init --force` (same --config and --mitm; add " \
  "--unconstrained for a CA that may sign for any host), then make every client trust the new "    \
  "CA (`regproxy setup docker|containerd|podman`, or copy it into the system store and run "       \
  "update-ca-certificates)"

int rp_ca_check_names(const struct rp_ca *ca, const struct rp_hostlist *mitm, char **err) {
  NAME_CONSTRAINTS *nc;
  struct rp_hostlist_entry e;
  struct subtree t;
  struct subtree ex;
  char list[LIST_SHOWN_MAX];
  char what[DNS_NAME_MAX + 2 + 2 * INET6_ADDRSTRLEN];
  enum cover verdict = COVERED;
  int crit = -1;
  int rc = 0;

  if (err != NULL)
    *err = NULL;
  nc = X509_get_ext_d2i(ca->cert, NID_name_constraints, &crit, NULL);
  if (nc == NULL) {
    if (crit == -1)
      return 0;
    ERR_clear_error();
    return rp__tls_fail(err, RP_ECONFIG, "%s: cannot read its name constraints", ca->cert_path);
  }
  if (rp_hostlist_has_star(mitm)) {
    rc = rp__tls_fail(err, RP_ECONFIG,
                      "mitm entry \"*\" matches every host, but the CA in %s has name "
                      "constraints: " REISSUE_HINT,
                      ca->cert_path);
    goto out;
  }
  for (size_t i = 0; i < rp_hostlist_count(mitm) && verdict == COVERED; i++) {
    rp_hostlist_entry(mitm, i, &e);
    entry_subtree(&e, &t);
    verdict = cover(nc, &t, &ex);
  }
  if (verdict == NOT_PERMITTED) {
    permitted_text(nc, list, sizeof(list));
    rc = rp__tls_fail(err, RP_ECONFIG,
                      "mitm entry \"%s\" is outside the name constraints of the CA in %s (it "
                      "may sign only for %s): " REISSUE_HINT,
                      e.text, ca->cert_path, list);
  } else if (verdict == EXCLUDED) {
    subtree_text(&ex, what, sizeof(what));
    rc = rp__tls_fail(err, RP_ECONFIG,
                      "mitm entry \"%s\" is outside the name constraints of the CA in %s (they "
                      "exclude %s): " REISSUE_HINT,
                      e.text, ca->cert_path, what);
  }
out:
  NAME_CONSTRAINTS_free(nc);
  return rc;
}

bool rp_ca_constrained(const struct rp_ca *ca) {
  return X509_get_ext_by_NID(ca->cert, NID_name_constraints, -1) >= 0;
}
