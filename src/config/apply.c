/* Applying one value to one option: parse it by the option's type, store it
 * in the configuration, and on failure say which flag, variable or file:line
 * it came from. Lists are replaced by each layer, and only a repeated flag
 * adds to them; a YAML sequence reports its bad item's own line. */

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config/internal.h"
#include "regproxy/config.h"
#include "regproxy/error.h"
#include "regproxy/log.h"
#include "regproxy/rules.h"

/* ---- applying values ---------------------------------------------------- */

int rp__config_fail(struct rp__load *ld, const struct rp__opt *o, const struct rp__origin *org,
                    const char *fmt, ...) {
  char name[64];
  char *msg;
  va_list ap;

  va_start(ap, fmt);
  msg = rp__vaprintf(fmt, ap);
  va_end(ap);
  if (msg == NULL) {
    return RP_ENOMEM;
  }
  switch (org->src) {
  case RP_SRC_FLAG:
    rp__opt_flag_name(o, name, sizeof name);
    *ld->err = rp__aprintf("%s: %s", name, msg);
    break;
  case RP_SRC_ENV:
  case RP_SRC_PROXY_ENV: *ld->err = rp__aprintf("%s: %s", org->name, msg); break;
  case RP_SRC_FILE:
    *ld->err = rp__aprintf("%s:%u: key %s: %s", org->file, org->line, o->key, msg);
    break;
  default: *ld->err = rp__aprintf("%s: %s", o->key, msg); break;
  }
  free(msg);
  return *ld->err != NULL ? RP_ECONFIG : RP_ENOMEM;
}

static int replace_str(struct rp__load *ld, const struct rp__opt *o, char *value) {
  char **slot = rp__config_field(ld->cfg, o->off);
  free(*slot);
  *slot = value;
  return 0;
}

/* "~" and "~/x" use $HOME; "" stays "" (none). */
int rp__expand_path(struct rp__load *ld, const struct rp__opt *o, const struct rp__origin *org,
                    const char *v, char **out) {
  char shown[80];
  *out = NULL;
  if (v[0] == '~' && (v[1] == '/' || v[1] == '\0')) {
    if (ld->home == NULL) {
      rp__show(v, shown, sizeof shown);
      return rp__config_fail(ld, o, org, "cannot expand '%s': HOME is not set", shown);
    }
    *out = rp__aprintf("%s%s", ld->home, v + 1);
  } else if (v[0] == '~') {
    rp__show(v, shown, sizeof shown);
    return rp__config_fail(ld, o, org, "'~user' paths are not supported: '%s'", shown);
  } else if (v[0] != '/' && org->src == RP_SRC_FILE && strrchr(org->file, '/') != NULL) {
    /* A relative path in a config file means next to that file, so
     * "proxy_auth_file: htpasswd" in /etc/regproxy/regproxy.yml works
     * whatever the working directory. */
    const char *slash = strrchr(org->file, '/');
    *out = rp__aprintf("%.*s/%s", (int)(slash - org->file), org->file, v);
  } else {
    *out = strdup(v);
  }
  return *out != NULL ? 0 : RP_ENOMEM;
}

static int set_path(struct rp__load *ld, const struct rp__opt *o, const struct rp__origin *org,
                    const char *v) {
  char shown[80];
  char *path = NULL;
  int rc;

  if (v[0] == '\0') {
    if (o->flags & OF_NONEMPTY) {
      return rp__config_fail(ld, o, org, "empty path");
    }
    return replace_str(ld, o, NULL);
  }
  rc = rp__expand_path(ld, o, org, v, &path);
  if (rc != 0) {
    return rc;
  }
  if ((o->flags & OF_MUST_EXIST) && access(path, R_OK) != 0) {
    int e = errno;
    rp__show(path, shown, sizeof shown);
    free(path);
    return rp__config_fail(ld, o, org, "cannot read '%s': %s", shown, strerror(e));
  }
  return replace_str(ld, o, path);
}

static int set_url(struct rp__load *ld, const struct rp__opt *o, const struct rp__origin *org,
                   const char *v) {
  struct rp_config *cfg = ld->cfg;
  struct rp__proxy_url u;
  char why[160];
  char shown[80];
  int rc;

  memset(&u, 0, sizeof u);
  if (v[0] != '\0') {
    rc = rp__proxy_url_parse(v, &u, why, sizeof why);
    if (rc == RP_EPARSE) {
      rp__show(v, shown, sizeof shown);
      return rp__config_fail(ld, o, org, "bad proxy URL '%s': %s", shown, why);
    }
    if (rc != 0) {
      return rc;
    }
  }
  free(cfg->parent_proxy);
  free(cfg->parent_proxy_host);
  free(cfg->parent_proxy_userinfo);
  cfg->parent_proxy = u.url;
  cfg->parent_proxy_host = u.host;
  cfg->parent_proxy_port = u.port;
  cfg->parent_proxy_tls = u.tls;
  cfg->parent_proxy_userinfo = u.userinfo;
  return 0;
}

static int rules_error(struct rp__load *ld, const struct rp__opt *o, const struct rp__origin *org,
                       const char *v, int rc, char *perr) {
  char shown[80];
  if (rc != RP_ENOMEM) {
    rp__show(v, shown, sizeof shown);
    rc = perr != NULL ? rp__config_fail(ld, o, org, "%s", perr)
                      : rp__config_fail(ld, o, org, "bad list '%s'", shown);
  }
  free(perr);
  return rc;
}

/* Host lists, the ACL and port sets are validated by parsing them with the
 * rules module; the parsed form replaces the previous one with the text. */
static int set_rules(struct rp__load *ld, const struct rp__opt *o, const struct rp__origin *org,
                     const char *v) {
  struct rp_config *cfg = ld->cfg;
  char *perr = NULL;
  char *text = NULL;
  int rc;

  if (o->type == OT_PORTSET && (v[0] == '\0' || strcasecmp(v, "default") == 0)) {
    struct rp_portset **slot = rp__config_field(cfg, o->off2);
    rp_portset_destroy(*slot);
    *slot = NULL;
    return replace_str(ld, o, NULL);
  }
  text = strdup(v);
  if (text == NULL) {
    return RP_ENOMEM;
  }
  if (o->type == OT_HOSTLIST) {
    struct rp_hostlist **slot = rp__config_field(cfg, o->off2);
    struct rp_hostlist *list = NULL;
    unsigned flags = (o->flags & OF_LOOPBACK_DIRECT) ? RP_HOSTLIST_LOOPBACK_DIRECT : 0;
    rc = rp_hostlist_parse(v, flags, &list, &perr);
    if (rc == 0) {
      rp_hostlist_destroy(*slot);
      *slot = list;
    }
  } else if (o->type == OT_ACL) {
    struct rp_acl **slot = rp__config_field(cfg, o->off2);
    struct rp_acl *acl = NULL;
    rc = rp_acl_parse(v, &acl, &perr);
    if (rc == 0) {
      rp_acl_destroy(*slot);
      *slot = acl;
    }
  } else {
    struct rp_portset **slot = rp__config_field(cfg, o->off2);
    struct rp_portset *set = NULL;
    rc = rp_portset_parse(v, &set, &perr);
    if (rc == 0) {
      rp_portset_destroy(*slot);
      *slot = set;
    }
  }
  if (rc != 0) {
    free(text);
    return rules_error(ld, o, org, v, rc, perr);
  }
  free(perr);
  return replace_str(ld, o, text);
}

/* Parse v into a scalar option. */
static int set_scalar(struct rp__load *ld, const struct rp__opt *o, const struct rp__origin *org,
                      const char *v) {
  struct rp_config *cfg = ld->cfg;
  char shown[80];
  uint64_t u = 0;
  bool b;
  int n;

  rp__show(v, shown, sizeof shown);
  switch (o->type) {
  case OT_STRING: {
    /* mirror_default: a registry name, optionally with a port. */
    char *copy;
    if (v[0] == '\0' || strspn(v, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                  "0123456789.-_:") != strlen(v)) {
      return rp__config_fail(ld, o, org, "bad registry name '%s'", shown);
    }
    copy = strdup(v);
    if (copy == NULL) {
      return RP_ENOMEM;
    }
    rp__lower(copy);
    return replace_str(ld, o, copy);
  }
  case OT_PATH: return set_path(ld, o, org, v);
  case OT_SIZE:
    if (rp_config_parse_size(v, &u) != 0) {
      return rp__config_fail(ld, o, org, "bad size '%s' (e.g. 1024, 512M, 20G)", shown);
    }
    if (u == 0 && (o->flags & OF_NONZERO)) {
      return rp__config_fail(ld, o, org, "must be greater than 0");
    }
    *(uint64_t *)rp__config_field(cfg, o->off) = u;
    return 0;
  case OT_DURATION:
    if (rp_config_parse_duration(v, &u) != 0) {
      return rp__config_fail(ld, o, org, "bad duration '%s' (e.g. 250ms, 30s, 10m, 1h, 1d)", shown);
    }
    if (u == 0 && (o->flags & OF_NONZERO)) {
      return rp__config_fail(ld, o, org, "must be greater than 0");
    }
    *(uint64_t *)rp__config_field(cfg, o->off) = u;
    return 0;
  case OT_BOOL:
    if (!rp__parse_bool(v, &b)) {
      return rp__config_fail(ld, o, org, "bad boolean '%s' (on|off|true|false|yes|no)", shown);
    }
    *(bool *)rp__config_field(cfg, o->off) = b;
    return 0;
  case OT_UINT: {
    const char *p = v;
    if (!rp__take_u64(&p, &u) || *p != '\0') {
      return rp__config_fail(ld, o, org, "bad number '%s'", shown);
    }
    if (u < o->min || u > o->max) {
      return rp__config_fail(ld, o, org, "%s out of range %llu-%llu", shown,
                             (unsigned long long)o->min, (unsigned long long)o->max);
    }
    *(unsigned *)rp__config_field(cfg, o->off) = (unsigned)u;
    return 0;
  }
  case OT_MARK: {
    const char *p = v;
    if (v[0] == '\0' || strcasecmp(v, "off") == 0) {
      u = 0;
    } else if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X') && p[2] != '\0') {
      u = 0;
      for (p += 2; *p != '\0' && rp__hexval(*p) >= 0 && u <= UINT32_MAX; p++) {
        u = u * 16 + (uint64_t)rp__hexval(*p);
      }
      if (*p != '\0' || u > UINT32_MAX) {
        return rp__config_fail(ld, o, org, "bad mark '%s' (a 32-bit number or off)", shown);
      }
    } else if (!rp__take_u64(&p, &u) || *p != '\0' || u > UINT32_MAX) {
      return rp__config_fail(ld, o, org, "bad mark '%s' (a 32-bit number or off)", shown);
    }
    *(uint32_t *)rp__config_field(cfg, o->off) = (uint32_t)u;
    *(bool *)rp__config_field(cfg, o->off2) = u != 0;
    return 0;
  }
  case OT_HOSTLIST:
  case OT_ACL:
  case OT_PORTSET: return set_rules(ld, o, org, v);
  case OT_LOGLEVEL:
  case OT_LOGFORMAT: {
    char word[16];
    size_t len = strlen(v);
    if (len >= sizeof word) {
      len = sizeof word - 1;
    }
    memcpy(word, v, len);
    word[len] = '\0';
    rp__lower(word);
    n = len == strlen(v)
            ? (o->type == OT_LOGLEVEL ? rp_log_level_parse(word) : rp_log_format_parse(word))
            : -1;
    if (n < 0) {
      return rp__config_fail(ld, o, org,
                             o->type == OT_LOGLEVEL
                                 ? "bad log level '%s' (debug, info, warn, error)"
                                 : "bad log format '%s' (logfmt, json)",
                             shown);
    }
    *(int *)rp__config_field(cfg, o->off) = n;
    return 0;
  }
  case OT_URL: return set_url(ld, o, org, v);
  default: return RP_EINVAL;
  }
}

static void list_reset(struct rp__load *ld, const struct rp__opt *o) {
  struct rp_config *cfg = ld->cfg;
  switch (o->type) {
  case OT_LISTEN: {
    struct rp_listen_addr **a = rp__config_field(cfg, o->off);
    size_t *n = rp__config_field(cfg, o->off2);
    rp__listen_free(*a, *n);
    *a = NULL;
    *n = 0;
    break;
  }
  case OT_CONNECT_TO: {
    struct rp_connect_to **c = rp__config_field(cfg, o->off);
    size_t *n = rp__config_field(cfg, o->off2);
    rp__connect_to_free(*c, *n);
    *c = NULL;
    *n = 0;
    break;
  }
  default: rp__strv_clear(rp__config_field(cfg, o->off)); break;
  }
}

/* Append one item to a list option. server_names items are themselves
 * comma-separated. */
static int list_add(struct rp__load *ld, const struct rp__opt *o, const struct rp__origin *org,
                    const char *v) {
  struct rp_config *cfg = ld->cfg;
  char why[128];
  char shown[80];
  int rc;

  /* An empty item (a YAML null, "--transparent ''") adds nothing, so a list
   * can be emptied; "off" reads naturally for the transparent listeners. */
  if (v[0] == '\0' || (o->type == OT_LISTEN && strcasecmp(v, "off") == 0)) {
    return 0;
  }
  rp__show(v, shown, sizeof shown);
  if (o->type == OT_LISTEN) {
    struct rp_listen_addr **a = rp__config_field(cfg, o->off);
    size_t *n = rp__config_field(cfg, o->off2);
    struct rp_listen_addr item;
    struct rp_listen_addr *grown;
    rc = rp__listen_parse(v, &item, why, sizeof why);
    if (rc == RP_EPARSE) {
      return rp__config_fail(ld, o, org, "bad address '%s': %s", shown, why);
    }
    if (rc != 0) {
      return rc;
    }
    grown = realloc(*a, (*n + 1) * sizeof **a);
    if (grown == NULL) {
      free(item.text);
      return RP_ENOMEM;
    }
    *a = grown;
    (*a)[(*n)++] = item;
    return 0;
  }
  if (o->type == OT_CONNECT_TO) {
    struct rp_connect_to **c = rp__config_field(cfg, o->off);
    size_t *n = rp__config_field(cfg, o->off2);
    struct rp_connect_to item;
    struct rp_connect_to *grown;
    rc = rp__connect_to_parse(v, &item, why, sizeof why);
    if (rc == RP_EPARSE) {
      return rp__config_fail(ld, o, org, "bad connect_to '%s': %s", shown, why);
    }
    if (rc != 0) {
      return rc;
    }
    grown = realloc(*c, (*n + 1) * sizeof **c);
    if (grown == NULL) {
      free(item.host);
      free(item.to_addr);
      return RP_ENOMEM;
    }
    *c = grown;
    (*c)[(*n)++] = item;
    return 0;
  }
  if (o->type == OT_PATHS) {
    char *path = NULL;
    struct stat st;
    rc = rp__expand_path(ld, o, org, v, &path);
    if (rc != 0) {
      return rc;
    }
    errno = 0;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode) || access(path, R_OK | X_OK) != 0) {
      int e = errno != 0 ? errno : ENOTDIR;
      rp__show(path, shown, sizeof shown);
      free(path);
      return rp__config_fail(ld, o, org, "cannot read directory '%s': %s", shown, strerror(e));
    }
    rc = rp__strv_push(rp__config_field(cfg, o->off), path);
    free(path);
    return rc;
  }
  if (o->type == OT_MIRRORS) {
    char *item = NULL;
    rc = rp__mirrors_parse(v, &item, why, sizeof why);
    if (rc == RP_EPARSE) {
      return rp__config_fail(ld, o, org, "bad upstream mirror '%s': %s", shown, why);
    }
    if (rc != 0) {
      return rc;
    }
    rc = rp__strv_push(rp__config_field(cfg, o->off), item);
    free(item);
    return rc;
  }
  /* OT_NAMES */
  for (const char *p = v;;) {
    size_t len = strcspn(p, ",");
    const char *s = p;
    size_t slen = len;
    while (slen > 0 && isspace((unsigned char)*s)) {
      s++;
      slen--;
    }
    while (slen > 0 && isspace((unsigned char)s[slen - 1])) {
      slen--;
    }
    if (slen > 0) {
      char *name;
      if (!rp__valid_hostname(s, slen)) {
        return rp__config_fail(ld, o, org, "bad host name in '%s'", shown);
      }
      name = strndup(s, slen);
      if (name == NULL) {
        return RP_ENOMEM;
      }
      rp__lower(name);
      rc = rp__strv_push(rp__config_field(cfg, o->off), name);
      free(name);
      if (rc != 0) {
        return rc;
      }
    }
    if (p[len] == '\0') {
      break;
    }
    p += len + 1;
  }
  return 0;
}

/* Start a new value for list option o from org: every layer replaces the
 * lower layers' list, and only a flag repeated on the command line adds. */
static void list_begin(struct rp__load *ld, const struct rp__opt *o, const struct rp__origin *org) {
  size_t i = rp__opt_index(o);
  if (!(org->src == RP_SRC_FLAG && ld->src[i] == RP_SRC_FLAG)) {
    list_reset(ld, o);
  }
}

static void record(struct rp__load *ld, const struct rp__opt *o, const struct rp__origin *org) {
  size_t i = rp__opt_index(o);
  ld->src[i] = org->src;
  ld->where[i] = *org;
}

/* Apply one text value (flag, environment variable or default). split: an
 * environment list is comma-separated. */
int rp__apply_text(struct rp__load *ld, const struct rp__opt *o, const struct rp__origin *org,
                   const char *v, bool split) {
  int rc = 0;

  if (!rp__opt_is_list(o)) {
    rc = set_scalar(ld, o, org, v);
  } else {
    list_begin(ld, o, org);
    if (!split || o->type == OT_NAMES) {
      rc = list_add(ld, o, org, v);
    } else {
      /* upstream_mirrors items hold commas themselves: the variable
       * separates them with ';'. */
      const char *sep = o->type == OT_MIRRORS ? ";" : ",";
      for (const char *p = v; rc == 0;) {
        size_t len = strcspn(p, sep);
        const char *s = p;
        size_t slen = len;
        while (slen > 0 && isspace((unsigned char)*s)) {
          s++;
          slen--;
        }
        while (slen > 0 && isspace((unsigned char)s[slen - 1])) {
          slen--;
        }
        if (slen > 0) {
          char *item = strndup(s, slen);
          if (item == NULL) {
            return RP_ENOMEM;
          }
          rc = list_add(ld, o, org, item);
          free(item);
        }
        if (p[len] == '\0') {
          break;
        }
        p += len + 1;
      }
    }
  }
  if (rc == 0) {
    record(ld, o, org);
  }
  return rc;
}

/* A list written as a YAML sequence failed to parse as a whole: if one item
 * fails on its own, report that item's line instead of the key's. The
 * load is failing anyway, so parsing items into cfg does no harm. */
static int blame_item(struct rp__load *ld, const struct rp__opt *o, const struct rp__yaml_entry *e,
                      int rc) {
  struct rp__origin org;

  memset(&org, 0, sizeof org);
  org.src = RP_SRC_FILE;
  org.file = ld->cfg->config_file;
  for (size_t i = 0; i < e->n_values; i++) {
    char *whole = *ld->err;
    int item_rc;
    *ld->err = NULL;
    org.line = e->values[i].line;
    item_rc = set_scalar(ld, o, &org, e->values[i].text);
    if (item_rc != 0) {
      free(whole);
      return item_rc;
    }
    *ld->err = whole;
  }
  return rc;
}

int rp__apply_yaml_entry(struct rp__load *ld, const struct rp__yaml_entry *e) {
  struct rp__origin org;
  const struct rp__opt *o;
  char shown[80];
  int rc = 0;

  memset(&org, 0, sizeof org);
  org.src = RP_SRC_FILE;
  org.file = ld->cfg->config_file;
  org.line = e->line;
  rp__show(e->key, shown, sizeof shown);
  o = rp__opt_find_key(e->key);
  if (o == NULL) {
    char alt[64];
    size_t n = strlen(e->key);
    if (n < sizeof alt) {
      for (size_t i = 0; i <= n; i++) {
        alt[i] = e->key[i] == '-' ? '_' : e->key[i];
      }
      if (strchr(e->key, '-') != NULL && rp__opt_find_key(alt) != NULL) {
        *ld->err = rp__aprintf("%s:%u: key %s: unknown key (did you mean %s?)", org.file, org.line,
                               shown, alt);
        return *ld->err != NULL ? RP_ECONFIG : RP_ENOMEM;
      }
    }
    *ld->err = rp__aprintf("%s:%u: key %s: unknown key", org.file, org.line, shown);
    return *ld->err != NULL ? RP_ECONFIG : RP_ENOMEM;
  }
  if (o->flags & OF_NO_KEY) {
    return rp__config_fail(ld, o, &org, "only valid on the command line%s",
                           (o->flags & OF_NO_ENV) ? "" : " or in the environment");
  }
  if (ld->file_line[rp__opt_index(o)] != 0) {
    return rp__config_fail(ld, o, &org, "duplicate key (first at line %u)",
                           ld->file_line[rp__opt_index(o)]);
  }
  ld->file_line[rp__opt_index(o)] = e->line;

  if (rp__opt_is_list(o)) {
    list_begin(ld, o, &org);
    for (size_t i = 0; i < e->n_values && rc == 0; i++) {
      org.line = e->values[i].line;
      rc = list_add(ld, o, &org, e->values[i].text);
    }
    org.line = e->line;
  } else if (e->is_seq) {
    if (o->type != OT_HOSTLIST && o->type != OT_ACL && o->type != OT_PORTSET) {
      return rp__config_fail(ld, o, &org, "wrong node type: expected a scalar, got a sequence");
    }
    /* A list key written as a YAML sequence: join it with commas. */
    size_t len = 1;
    char *joined;
    for (size_t i = 0; i < e->n_values; i++) {
      len += strlen(e->values[i].text) + 1;
    }
    joined = malloc(len);
    if (joined == NULL) {
      return RP_ENOMEM;
    }
    joined[0] = '\0';
    for (size_t i = 0; i < e->n_values; i++) {
      if (i > 0) {
        strcat(joined, ",");
      }
      strcat(joined, e->values[i].text);
    }
    rc = set_scalar(ld, o, &org, joined);
    free(joined);
    if (rc == RP_ECONFIG) {
      rc = blame_item(ld, o, e, rc);
    }
  } else {
    rc = set_scalar(ld, o, &org, e->values[0].text);
  }
  if (rc == 0) {
    record(ld, o, &org);
  }
  return rc;
}
