/* The option table: every option's key (and so its --flag and REGPROXY_*
 * variable), type, default and help line; finding an option by any of its
 * three names; freeing what the table points at; --help and the man page's
 * OPTIONS section, both printed from the table so they cannot disagree. */

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/internal.h"
#include "regproxy/config.h"
#include "regproxy/error.h"
#include "regproxy/rules.h"

static const char *const group_titles[G_LAST] = {
    "General",  "Listeners and clients", "Routing",        "Cache and registries",
    "Timeouts", "The local CA",          "regproxy setup",
};

#define F(field) offsetof(struct rp_config, field)

const struct rp__opt rp__opts[] = {
    {"config", OT_PATH, OF_NO_KEY | OF_CONFIG, F(config_file), 0, NULL,
     RP_CONFIG_DEFAULT_PATH " if present", "FILE", "YAML config file (\"\" = none)", G_GENERAL, 0,
     0},
    {"log_level", OT_LOGLEVEL, 0, F(log_level), 0, "info", NULL, "LEVEL",
     "debug, info, warn or error", G_GENERAL, 0, 0},
    {"log_format", OT_LOGFORMAT, 0, F(log_format), 0, "logfmt", NULL, "FORMAT", "logfmt or json",
     G_GENERAL, 0, 0},

    {"listen", OT_LISTEN, 0, F(listen), F(n_listen), "127.0.0.1:2080", NULL, "ADDR:PORT",
     "proxy + mirror + admin listener (repeatable)", G_LISTEN, 0, 0},
    {"transparent", OT_LISTEN, 0, F(transparent), F(n_transparent), NULL, "off", "ADDR:PORT",
     "listener for REDIRECT'ed traffic (repeatable)", G_LISTEN, 0, 0},
    {"tproxy", OT_BOOL, 0, F(tproxy), 0, "off", NULL, "on|off",
     "transparent listeners use TPROXY (IP_TRANSPARENT)", G_LISTEN, 0, 0},
    {"mark", OT_MARK, 0, F(mark), F(mark_set), "off", NULL, "N",
     "SO_MARK on outgoing sockets (off or 0 = none)", G_LISTEN, 0, 0},
    {"allow", OT_ACL, 0, F(allow), F(acl), "127.0.0.0/8,::1", "loopback (127.0.0.0/8,::1)", "LIST",
     "client ACL: IPs and CIDRs", G_LISTEN, 0, 0},
    {"admin_allow", OT_ACL, 0, F(admin_allow), F(admin_acl), "127.0.0.0/8,::1",
     "loopback (127.0.0.0/8,::1)", "LIST",
     "clients that may read /, /status.json, /metrics, /cache/*: IPs, CIDRs", G_LISTEN, 0, 0},
    {"proxy_auth_file", OT_PATH, OF_MUST_EXIST, F(proxy_auth_file), 0, NULL, "off", "FILE",
     "htpasswd file; clients must send Proxy-Authorization: Basic", G_LISTEN, 0, 0},
    {"max_connections", OT_UINT, 0, F(max_connections), 0, "10000", NULL, "N",
     "client connections served at once", G_LISTEN, 1, 1000000},
    {"server_names", OT_NAMES, 0, F(server_names), 0, NULL, "none", "LIST",
     "extra Host names the admin endpoints answer to", G_LISTEN, 0, 0},

    {"mitm", OT_HOSTLIST, 0, F(mitm), F(mitm_list), RP_CONFIG_DEFAULT_MITM, NULL, "LIST",
     "hosts to intercept (TLS terminated, registry cache); a new CA may sign only for these",
     G_ROUTING, 0, 0},
    {"no_proxy", OT_HOSTLIST, OF_LOOPBACK_DIRECT, F(no_proxy), F(no_proxy_list), "", "$NO_PROXY",
     "LIST", "destinations reached directly, never intercepted", G_ROUTING, 0, 0},
    {"parent_proxy", OT_URL, 0, F(parent_proxy), 0, NULL, "$HTTPS_PROXY, else $HTTP_PROXY", "URL",
     "upstream proxy, http://[user:pass@]host[:port] (\"\" = none)", G_ROUTING, 0, 0},
    {"connect_ports", OT_PORTSET, 0, F(connect_ports), F(connect_portset), NULL,
     "any while only loopback is allowed, else 443 + mitm/connect_to ports", "LIST",
     "ports CONNECT may reach, e.g. 443,8443,5000-5010", G_ROUTING, 0, 0},
    {"connect_to", OT_CONNECT_TO, 0, F(connect_to), F(n_connect_to), NULL, "none",
     "HOST:PORT:ADDR:PORT", "connection override like curl --connect-to (repeatable)", G_ROUTING, 0,
     0},
    {"upstream_ca", OT_PATH, OF_MUST_EXIST, F(upstream_ca), 0, NULL, "system bundle", "FILE",
     "extra CA bundle trusted for upstream TLS", G_ROUTING, 0, 0},
    {"upstream_certs_dir", OT_PATHS, 0, F(upstream_certs_dir), 0, NULL,
     "/etc/docker/certs.d, /etc/containers/certs.d if present; non-root: "
     "~/.config/containers/certs.d first",
     "DIR",
     "per-registry upstream CAs (*.crt) and client certificates (X.cert + X.key) in "
     "DIR/<host[:port]>/, as the engines read them (repeatable)",
     G_ROUTING, 0, 0},

    {"cache_dir", OT_PATH, OF_NONEMPTY, F(cache_dir), 0, NULL,
     "$XDG_CACHE_HOME/regproxy, root: /var/cache/regproxy", "DIR", "cache root", G_CACHE, 0, 0},
    {"cache_max_size", OT_SIZE, OF_NONZERO, F(cache_max_size), 0, "20G", NULL, "SIZE",
     "eviction bound", G_CACHE, 0, 0},
    {"orphan_fill_max", OT_SIZE, 0, F(orphan_fill_max), 0, "2G", NULL, "SIZE",
     "largest fill completed after its last client left", G_CACHE, 0, 0},
    {"ca_dir", OT_PATH, OF_NONEMPTY, F(ca_dir), 0, NULL,
     "$XDG_DATA_HOME/regproxy/ca, root: /var/lib/regproxy/ca", "DIR", "CA certificate and key",
     G_CACHE, 0, 0},
    {"registry_auth", OT_PATH, OF_MUST_EXIST, F(registry_auth), 0, NULL,
     "~/.docker/config.json if present", "FILE",
     "upstream credentials (docker config format) for mirror mode and prefetch", G_CACHE, 0, 0},
    {"mirror_default", OT_STRING, 0, F(mirror_default), 0, "docker.io", NULL, "REGISTRY",
     "registry for origin-form /v2/ requests without ?ns=", G_CACHE, 0, 0},
    {"upstream_mirrors", OT_MIRRORS, 0, F(upstream_mirrors), 0, NULL, "none",
     "REGISTRY=URL[,URL...]",
     "fetch REGISTRY's blobs and manifests by digest from these registry mirrors first (a "
     "site tier), then from REGISTRY itself (repeatable; the variable separates items with ';')",
     G_CACHE, 0, 0},
    {"tag_ttl", OT_DURATION, 0, F(tag_ttl_ms), 0, "0", NULL, "DURATION",
     "answer tags from memory this long without asking upstream", G_CACHE, 0, 0},
    {"access_ttl", OT_DURATION, 0, F(access_ttl_ms), 0, "10m", NULL, "DURATION",
     "how long a confirmed credential may read a private repository", G_CACHE, 0, 0},
    {"access_check", OT_BOOL, 0, F(access_check), 0, "on", NULL, "on|off",
     "off serves every cached object to every allowed client", G_CACHE, 0, 0},

    {"header_timeout", OT_DURATION, OF_NONZERO, F(header_timeout_ms), 0, "30s", NULL, "DURATION",
     "whole request head must arrive within this (then 408)", G_TIMEOUTS, 0, 0},
    {"idle_timeout", OT_DURATION, OF_NONZERO, F(idle_timeout_ms), 0, "120s", NULL, "DURATION",
     "idle keep-alive client connections close after this", G_TIMEOUTS, 0, 0},
    {"tunnel_idle_timeout", OT_DURATION, OF_NONZERO, F(tunnel_idle_timeout_ms), 0, "1h", NULL,
     "DURATION", "tunnels with no bytes either way close after this", G_TIMEOUTS, 0, 0},
    {"connect_timeout", OT_DURATION, OF_NONZERO, F(connect_timeout_ms), 0, "15s", NULL, "DURATION",
     "upstream connects time out after this", G_TIMEOUTS, 0, 0},
    {"shutdown_grace", OT_DURATION, 0, F(shutdown_grace_ms), 0, "30s", NULL, "DURATION",
     "how long SIGTERM lets transfers finish", G_TIMEOUTS, 0, 0},

    {"force", OT_BOOL, OF_NO_KEY | OF_NO_ENV, F(ca_force), 0, "off", NULL, NULL,
     "ca init: replace the CA with a new one (clients must trust it again)", G_CA, 0, 0},
    {"unconstrained", OT_BOOL, OF_NO_KEY | OF_NO_ENV, F(ca_unconstrained), 0, "off", NULL, NULL,
     "a CA created now may sign for any host (no name constraints)", G_CA, 0, 0},

    {"dry_run", OT_BOOL, OF_NO_KEY | OF_NO_ENV, F(dry_run), 0, "off", NULL, NULL,
     "print what setup would change, change nothing", G_SETUP, 0, 0},
    {"root", OT_PATH, OF_NO_KEY | OF_NO_ENV, F(root), 0, NULL, "/", "DIR",
     "write into DIR as if it were /", G_SETUP, 0, 0},
    {"mirror", OT_BOOL, OF_NO_KEY | OF_NO_ENV, F(setup_mirror), 0, "off", NULL, NULL,
     "setup containerd: hosts.toml mirror entries (no proxy, no CA) instead", G_SETUP, 0, 0},
    {"interface", OT_STRING, OF_NO_KEY | OF_NO_ENV, F(setup_interface), 0, NULL, "all", "IF",
     "setup gateway: the LAN interface whose traffic is redirected", G_SETUP, 0, 0},
};

_Static_assert(sizeof rp__opts / sizeof rp__opts[0] == RP__N_OPTS,
               "RP__N_OPTS counts the option table");

size_t rp__opt_index(const struct rp__opt *o) {
  return (size_t)(o - rp__opts);
}

void *rp__config_field(struct rp_config *cfg, size_t off) {
  return (char *)cfg + off;
}

bool rp__opt_is_list(const struct rp__opt *o) {
  return o->type == OT_LISTEN || o->type == OT_CONNECT_TO || o->type == OT_NAMES ||
         o->type == OT_PATHS || o->type == OT_MIRRORS;
}

/* Flags spelled otherwise than their key (contract §4): a repeatable flag
 * names one item, its key the list. */
static const struct {
  const char *flag, *key;
} flag_aliases[] = {{"upstream-mirror", "upstream_mirrors"}};

void rp__opt_flag_name(const struct rp__opt *o, char *buf, size_t size) {
  size_t i = 0;
  for (size_t k = 0; k < sizeof flag_aliases / sizeof flag_aliases[0]; k++) {
    if (strcmp(flag_aliases[k].key, o->key) == 0) {
      snprintf(buf, size, "--%s", flag_aliases[k].flag);
      return;
    }
  }
  buf[i++] = '-';
  buf[i++] = '-';
  for (const char *k = o->key; *k != '\0' && i + 1 < size; k++) {
    buf[i++] = *k == '_' ? '-' : *k;
  }
  buf[i] = '\0';
}

void rp__opt_env_name(const struct rp__opt *o, char *buf, size_t size) {
  snprintf(buf, size, "REGPROXY_");
  for (size_t i = strlen(buf), k = 0; o->key[k] != '\0' && i + 1 < size; i++, k++) {
    buf[i] = (char)toupper((unsigned char)o->key[k]);
    buf[i + 1] = '\0';
  }
}

/* Does name[0..len) spell key with sep in place of '_'? */
static bool key_matches(const char *key, const char *name, size_t len, char sep, bool upper) {
  size_t i = 0;
  for (; i < len && key[i] != '\0'; i++) {
    char want = key[i] == '_' ? sep : key[i];
    if (upper) {
      want = (char)toupper((unsigned char)want);
    }
    if (name[i] != want) {
      return false;
    }
  }
  return i == len && key[i] == '\0';
}

const struct rp__opt *rp__opt_find_flag(const char *name, size_t len) {
  for (size_t k = 0; k < sizeof flag_aliases / sizeof flag_aliases[0]; k++) {
    if (strlen(flag_aliases[k].flag) == len && memcmp(flag_aliases[k].flag, name, len) == 0) {
      return rp__opt_find_key(flag_aliases[k].key);
    }
  }
  for (size_t i = 0; i < RP__N_OPTS; i++) {
    if (key_matches(rp__opts[i].key, name, len, '-', false)) {
      return &rp__opts[i];
    }
  }
  return NULL;
}

const struct rp__opt *rp__opt_find_key(const char *name) {
  for (size_t i = 0; i < RP__N_OPTS; i++) {
    if (key_matches(rp__opts[i].key, name, strlen(name), '_', false)) {
      return &rp__opts[i];
    }
  }
  return NULL;
}

const struct rp__opt *rp__opt_find_env(const char *name, size_t len) {
  for (size_t i = 0; i < RP__N_OPTS; i++) {
    if (!(rp__opts[i].flags & OF_NO_ENV) && key_matches(rp__opts[i].key, name, len, '_', true)) {
      return &rp__opts[i];
    }
  }
  return NULL;
}

void rp_config_destroy(struct rp_config *cfg) {
  if (cfg == NULL) {
    return;
  }
  for (size_t i = 0; i < RP__N_OPTS; i++) {
    const struct rp__opt *o = &rp__opts[i];
    switch (o->type) {
    case OT_STRING:
    case OT_PATH:
    case OT_URL: free(*(char **)rp__config_field(cfg, o->off)); break;
    case OT_HOSTLIST:
      free(*(char **)rp__config_field(cfg, o->off));
      rp_hostlist_destroy(*(struct rp_hostlist **)rp__config_field(cfg, o->off2));
      break;
    case OT_ACL:
      free(*(char **)rp__config_field(cfg, o->off));
      rp_acl_destroy(*(struct rp_acl **)rp__config_field(cfg, o->off2));
      break;
    case OT_PORTSET:
      free(*(char **)rp__config_field(cfg, o->off));
      rp_portset_destroy(*(struct rp_portset **)rp__config_field(cfg, o->off2));
      break;
    case OT_LISTEN:
      rp__listen_free(*(struct rp_listen_addr **)rp__config_field(cfg, o->off),
                      *(size_t *)rp__config_field(cfg, o->off2));
      break;
    case OT_CONNECT_TO:
      rp__connect_to_free(*(struct rp_connect_to **)rp__config_field(cfg, o->off),
                          *(size_t *)rp__config_field(cfg, o->off2));
      break;
    case OT_NAMES:
    case OT_PATHS:
    case OT_MIRRORS: rp__strv_clear(rp__config_field(cfg, o->off)); break;
    default: break;
    }
  }
  free(cfg->parent_proxy_host);
  free(cfg->parent_proxy_userinfo);
  rp_hostlist_destroy(cfg->ca_names);
  rp__strv_clear(&cfg->args);
  rp__strv_clear(&cfg->warnings);
  free(cfg);
}

/* ---- --help ---------------------------------------------------------------- */

/* How values are spelled; --help and the man page both print these. */
#define VALUES_SIZE     "1024, 2k, 512M, 20G, 1T"
#define VALUES_DURATION "250ms, 30s, 10m, 1h, 1d, 0"
#define VALUES_BOOL     "on|off|true|false|yes|no"

void rp__config_usage_write(FILE *fp) {
  fputs("usage:\n"
        "  regproxy [run] [options]          run the proxy (default)\n"
        "  regproxy ca init|cert|path        create the CA if missing / print its PEM / print "
        "its path\n"
        "                                    (init --force: a new CA for the current mitm list;\n"
        "                                    --unconstrained: one that may sign for any host)\n"
        "  regproxy setup docker|containerd|podman [--dry-run] [--root DIR]\n"
        "  regproxy setup containerd --mirror [--dry-run] [--root DIR]\n"
        "                                    hosts.toml per mitm registry pointing at the\n"
        "                                    mirror listener: no proxy environment, no CA\n"
        "  regproxy cache ls|du|verify|gc|rm <digest>\n"
        "                                    list / total / re-hash (removing bad objects) /\n"
        "                                    evict to --cache-max-size / remove one object; asks\n"
        "                                    the running regproxy when one holds --cache-dir;\n"
        "                                    verify and gc show progress on stderr\n"
        "  regproxy prefetch <image-ref>...  warm the cache (all platforms), with progress;\n"
        "                                    through the running regproxy when one holds\n"
        "                                    --cache-dir (credentials: --registry-auth)\n"
        "  regproxy --version | --help\n"
        "\n"
        "Every option is also a config-file key (--cache-max-size <-> cache_max_size) and an\n"
        "environment variable (REGPROXY_CACHE_MAX_SIZE); lists in the environment are\n"
        "comma-separated. Precedence: flag > REGPROXY_* environment > config file >\n"
        "HTTPS_PROXY/HTTP_PROXY/NO_PROXY environment > default. Sizes: " VALUES_SIZE ".\n"
        "Durations: " VALUES_DURATION ". Booleans: " VALUES_BOOL ".\n",
        fp);
  for (int g = 0; g < G_LAST; g++) {
    fprintf(fp, "\n%s:\n", group_titles[g]);
    if (g == G_GENERAL) {
      fprintf(fp, "  %-36s %s\n", "-h, --help", "show this help");
      fprintf(fp, "  %-36s %s\n", "-V, --version", "show the version");
    }
    for (size_t i = 0; i < RP__N_OPTS; i++) {
      const struct rp__opt *o = &rp__opts[i];
      char left[96];
      char fl[64];
      const char *shown = o->shown != NULL ? o->shown : o->def;
      if (o->group != (enum opt_group)g) {
        continue;
      }
      rp__opt_flag_name(o, fl, sizeof fl);
      if (o->metavar != NULL) {
        snprintf(left, sizeof left, "%s %s", fl, o->metavar);
      } else {
        snprintf(left, sizeof left, "%s", fl);
      }
      fprintf(fp, "  %-36s %s [default: %s]\n", left, o->help, shown != NULL ? shown : "none");
    }
  }
}

void rp_config_usage(void) {
  rp__config_usage_write(stdout);
}

/* ---- the man page's OPTIONS section (scdoc) ---------------------------------- */

/* Write s with scdoc's markup characters (backslash, star, underscore)
 * escaped, so that help texts like "SO_MARK" print as they are. */
static void scdoc_put(FILE *fp, const char *s) {
  for (; *s != '\0'; s++) {
    if (*s == '\\' || *s == '*' || *s == '_') {
      fputc('\\', fp);
    }
    fputc(*s, fp);
  }
}

/* One option as an scdoc term: the flag in bold, its metavar underlined,
 * then an indented paragraph. */
static void scdoc_term(FILE *fp, const char *flag, const char *metavar, const char *help) {
  fputc('*', fp);
  scdoc_put(fp, flag);
  fputc('*', fp);
  if (metavar != NULL) {
    fputs(" _", fp);
    scdoc_put(fp, metavar);
    fputc('_', fp);
  }
  fputs("\n\t", fp);
  scdoc_put(fp, help);
}

void rp__config_scdoc_write(FILE *fp) {
  fputs("# OPTIONS\n"
        "\n"
        "Every option below is also a config-file key and a *REGPROXY\\_<KEY>* environment\n"
        "variable, as each entry says; lists in the environment are comma-separated.\n"
        "Precedence: flag > *REGPROXY\\_\\** environment > config file >\n"
        "*HTTPS\\_PROXY*/*HTTP\\_PROXY*/*NO\\_PROXY* environment > default.\n"
        "A flag takes its value as the next argument or after *=*; a boolean flag alone\n"
        "means on.\n"
        "\n",
        fp);
  fputs("Sizes: " VALUES_SIZE ". Durations: " VALUES_DURATION ". Booleans: ", fp);
  scdoc_put(fp, VALUES_BOOL);
  fputs(".\n", fp);
  for (int g = 0; g < G_LAST; g++) {
    fprintf(fp, "\n## %s\n", group_titles[g]);
    if (g == G_GENERAL) {
      fputs("\n", fp);
      scdoc_term(fp, "-h, --help", NULL, "Show the usage and every option, then exit.");
      fputs("\n\n", fp);
      scdoc_term(fp, "-V, --version", NULL, "Show the version, then exit.");
      fputs("\n", fp);
    }
    for (size_t i = 0; i < RP__N_OPTS; i++) {
      const struct rp__opt *o = &rp__opts[i];
      const char *shown = o->shown != NULL ? o->shown : o->def;
      char fl[64];
      char env[64];
      if (o->group != (enum opt_group)g) {
        continue;
      }
      rp__opt_flag_name(o, fl, sizeof fl);
      rp__opt_env_name(o, env, sizeof env);
      fputs("\n", fp);
      scdoc_term(fp, fl, o->metavar, o->help);
      /* One name a line ("++" breaks it): a long variable name at the end
       * of a filled line would be hyphenated. */
      fputs(".\n\n\tDefault: ", fp);
      scdoc_put(fp, shown != NULL ? shown : "none");
      fputs(".", fp);
      if (!(o->flags & OF_NO_KEY)) {
        fputs("++\nConfig key: *", fp);
        scdoc_put(fp, o->key);
        fputs("*.", fp);
      }
      if (!(o->flags & OF_NO_ENV)) {
        fputs("++\nEnvironment: *", fp);
        scdoc_put(fp, env);
        fputs("*.", fp);
      }
      if ((o->flags & OF_NO_KEY) && (o->flags & OF_NO_ENV)) {
        fputs(" Command line only.", fp);
      }
      fputs("\n", fp);
    }
  }
}
