/* Where values come from and in which order: the defaults, the command line,
 * the config file, the REGPROXY_* environment and the proxy environment; the
 * entry points that load a configuration.
 *
 * Layers are applied from the lowest precedence to the highest (defaults,
 * config file, REGPROXY_*, flags), each value parsed and checked as it is
 * applied so an error names the exact flag, variable or file:line it came
 * from; HTTPS_PROXY/HTTP_PROXY/NO_PROXY are consulted last and only for keys
 * nothing else set, which gives them their place just above the defaults
 * without refusing a bad variable that would not be used anyway. */

#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config/internal.h"
#include "regproxy/config.h"
#include "regproxy/error.h"

static const char *env_get(char **envp, const char *name) {
  size_t n = strlen(name);
  for (char **e = envp; e != NULL && *e != NULL; e++) {
    if (strncmp(*e, name, n) == 0 && (*e)[n] == '=') {
      return *e + n + 1;
    }
  }
  return NULL;
}

/* ---- the layers ----------------------------------------------------------- */

/* $HOME, else the password database; *out stays NULL when neither knows. */
static int home_dir(char **envp, char **out) {
  const char *h = env_get(envp, "HOME");
  struct passwd pw, *res = NULL;
  char buf[4096];

  *out = NULL;
  if (h == NULL || h[0] == '\0') {
    if (getpwuid_r(geteuid(), &pw, buf, sizeof buf, &res) != 0 || res == NULL ||
        res->pw_dir == NULL || res->pw_dir[0] == '\0') {
      return 0;
    }
    h = res->pw_dir;
  }
  *out = strdup(h);
  return *out != NULL ? 0 : RP_ENOMEM;
}

/* $XDG_x_HOME/rel_xdg, else ~/rel_home; root gets root_path. *out stays
 * NULL when there is no home directory. */
static int xdg_default(struct rp__load *ld, const char *xdg, const char *rel_xdg,
                       const char *rel_home, const char *root_path, char **out) {
  const char *x = env_get(ld->envp, xdg);
  int euid = ld->opts->euid >= 0 ? ld->opts->euid : (int)geteuid();

  if (euid == 0) {
    *out = strdup(root_path);
  } else if (x != NULL && x[0] == '/') {
    /* The XDG spec says relative values are to be ignored. */
    *out = rp__aprintf("%s/%s", x, rel_xdg);
  } else if (ld->home != NULL) {
    *out = rp__aprintf("%s/%s", ld->home, rel_home);
  } else {
    *out = NULL;
    return 0;
  }
  return *out != NULL ? 0 : RP_ENOMEM;
}

/* The certs.d directories the engines read, those that exist: a user's
 * podman reads ~/.config/containers/certs.d before the system ones. */
static int certs_dir_defaults(struct rp__load *ld) {
  struct rp_config *cfg = ld->cfg;
  int euid = ld->opts->euid >= 0 ? ld->opts->euid : (int)geteuid();
  const char *sys[] = {"/etc/docker/certs.d", "/etc/containers/certs.d"};
  struct stat st;
  int rc;

  cfg->upstream_certs_dir_default = true;
  if (euid != 0 && ld->home != NULL) {
    char *p = rp__aprintf("%s/.config/containers/certs.d", ld->home);
    if (p == NULL) {
      return RP_ENOMEM;
    }
    rc = stat(p, &st) == 0 && S_ISDIR(st.st_mode) ? rp__strv_push(&cfg->upstream_certs_dir, p) : 0;
    free(p);
    if (rc != 0) {
      return rc;
    }
  }
  for (size_t i = 0; i < sizeof sys / sizeof sys[0]; i++) {
    if (stat(sys[i], &st) == 0 && S_ISDIR(st.st_mode)) {
      rc = rp__strv_push(&cfg->upstream_certs_dir, sys[i]);
      if (rc != 0) {
        return rc;
      }
    }
  }
  return 0;
}

static int apply_defaults(struct rp__load *ld) {
  struct rp_config *cfg = ld->cfg;
  struct rp__origin org;
  const char *dc;
  char *path;
  int rc;

  memset(&org, 0, sizeof org);
  org.src = RP_SRC_DEFAULT;
  for (size_t i = 0; i < RP__N_OPTS; i++) {
    if (rp__opts[i].def != NULL) {
      rc = rp__apply_text(ld, &rp__opts[i], &org, rp__opts[i].def, false);
      if (rc != 0) {
        return rc;
      }
    }
  }
  /* Missing HOME leaves these NULL; rp__config_finish() then asks for the flag. */
  rc = xdg_default(ld, "XDG_CACHE_HOME", "regproxy", ".cache/regproxy", "/var/cache/regproxy",
                   &cfg->cache_dir);
  if (rc != 0) {
    return rc;
  }
  rc = xdg_default(ld, "XDG_DATA_HOME", "regproxy/ca", ".local/share/regproxy/ca",
                   "/var/lib/regproxy/ca", &cfg->ca_dir);
  if (rc != 0) {
    return rc;
  }
  rc = certs_dir_defaults(ld);
  if (rc != 0) {
    return rc;
  }
  dc = env_get(ld->envp, "DOCKER_CONFIG");
  if (dc != NULL && dc[0] != '\0') {
    path = rp__aprintf("%s/config.json", dc);
  } else if (ld->home != NULL) {
    path = rp__aprintf("%s/.docker/config.json", ld->home);
  } else {
    return 0;
  }
  if (path == NULL) {
    return RP_ENOMEM;
  }
  if (access(path, R_OK) == 0) {
    cfg->registry_auth = path;
  } else {
    free(path);
  }
  return 0;
}

static int scan_argv(struct rp__load *ld, int argc, char **argv) {
  struct rp_config *cfg = ld->cfg;
  bool ended = false;
  int rc;

  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *name, *eq, *value;
    const struct rp__opt *o;
    size_t nlen;
    char shown[80];

    if (a == NULL) {
      break;
    }
    if (!ended && strcmp(a, "--") == 0) {
      ended = true;
      continue;
    }
    if (ended || a[0] != '-' || a[1] == '\0') {
      rc = rp__strv_push(&cfg->args, a);
      if (rc != 0) {
        return rc;
      }
      continue;
    }
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      cfg->want_help = true;
      continue;
    }
    if (strcmp(a, "-V") == 0 || strcmp(a, "--version") == 0) {
      cfg->want_version = true;
      continue;
    }
    rp__show(a, shown, sizeof shown);
    if (a[1] != '-') {
      *ld->err = rp__aprintf("unknown option '%s' (see --help)", shown);
      return *ld->err != NULL ? RP_ECONFIG : RP_ENOMEM;
    }
    name = a + 2;
    eq = strchr(name, '=');
    nlen = eq != NULL ? (size_t)(eq - name) : strlen(name);
    o = rp__opt_find_flag(name, nlen);
    if (o == NULL) {
      char alt[64];
      const struct rp__opt *hint = NULL;
      if (nlen < sizeof alt) {
        for (size_t k = 0; k < nlen; k++) {
          alt[k] = name[k] == '_' ? '-' : name[k];
        }
        hint = memchr(name, '_', nlen) != NULL ? rp__opt_find_flag(alt, nlen) : NULL;
      }
      if (eq != NULL) {
        char n2[80];
        snprintf(n2, sizeof n2, "--%.*s", (int)(nlen > 60 ? 60 : nlen), name);
        rp__show(n2, shown, sizeof shown);
      }
      if (hint != NULL) {
        char fl[64];
        rp__opt_flag_name(hint, fl, sizeof fl);
        *ld->err = rp__aprintf("unknown option '%s' (did you mean %s?)", shown, fl);
      } else {
        *ld->err = rp__aprintf("unknown option '%s' (see --help)", shown);
      }
      return *ld->err != NULL ? RP_ECONFIG : RP_ENOMEM;
    }
    if (eq != NULL) {
      value = eq + 1;
    } else if (o->type == OT_BOOL) {
      /* "--tproxy" alone means on; "--access-check off" takes the word. */
      bool b;
      value = "on";
      if (i + 1 < argc && argv[i + 1] != NULL && rp__parse_bool(argv[i + 1], &b)) {
        value = argv[++i];
      }
    } else if (i + 1 < argc && argv[i + 1] != NULL) {
      value = argv[++i];
    } else {
      char fl[64];
      rp__opt_flag_name(o, fl, sizeof fl);
      *ld->err = rp__aprintf("%s: missing value", fl);
      return *ld->err != NULL ? RP_ECONFIG : RP_ENOMEM;
    }
    {
      struct rp__flagval *grown = realloc(ld->flags, (ld->n_flags + 1) * sizeof *grown);
      if (grown == NULL) {
        return RP_ENOMEM;
      }
      ld->flags = grown;
      ld->flags[ld->n_flags].o = o;
      ld->flags[ld->n_flags].value = value;
      ld->n_flags++;
    }
  }
  return 0;
}

static int read_config_file(struct rp__load *ld) {
  struct rp_config *cfg = ld->cfg;
  const struct rp__config_opts *ko = ld->opts;
  struct rp__yaml_doc doc;
  struct rp__origin org;
  const struct rp__opt *copt = NULL;
  const char *path = NULL;
  int rc;

  memset(&doc, 0, sizeof doc);
  memset(&org, 0, sizeof org);
  for (size_t i = 0; i < RP__N_OPTS; i++) {
    if (rp__opts[i].flags & OF_CONFIG) {
      copt = &rp__opts[i];
    }
  }
  if (ko->yaml_buf != NULL) {
    cfg->config_file = strdup(ko->yaml_name != NULL ? ko->yaml_name : "<config>");
    if (cfg->config_file == NULL) {
      return RP_ENOMEM;
    }
    rc = rp__yaml_read_buffer(cfg->config_file, ko->yaml_buf, ko->yaml_len, &doc, ld->err);
    goto apply;
  }
  for (size_t i = 0; i < ld->n_flags; i++) {
    if (ld->flags[i].o == copt) {
      path = ld->flags[i].value;
      org.src = RP_SRC_FLAG;
    }
  }
  if (path == NULL) {
    path = env_get(ld->envp, "REGPROXY_CONFIG");
    org.src = RP_SRC_ENV;
    snprintf(org.name, sizeof org.name, "REGPROXY_CONFIG");
  }
  if (path != NULL) {
    if (path[0] == '\0') {
      return 0; /* explicitly none */
    }
    rc = rp__expand_path(ld, copt, &org, path, &cfg->config_file);
    if (rc != 0) {
      return rc;
    }
  } else {
    path = ko->default_config != NULL ? ko->default_config : RP_CONFIG_DEFAULT_PATH;
    if (access(path, F_OK) != 0) {
      return 0;
    }
    cfg->config_file = strdup(path);
    if (cfg->config_file == NULL) {
      return RP_ENOMEM;
    }
  }
  rc = rp__yaml_read_file(cfg->config_file, &doc, ld->err);
apply:
  for (size_t i = 0; rc == 0 && i < doc.n; i++) {
    rc = rp__apply_yaml_entry(ld, &doc.entries[i]);
  }
  rp__yaml_doc_clear(&doc);
  return rc;
}

static int apply_env(struct rp__load *ld) {
  char name[64];
  int rc;

  /* Unknown REGPROXY_* variables are typos that would silently do nothing. */
  for (char **e = ld->envp; e != NULL && *e != NULL; e++) {
    const char *eq;
    size_t n;
    if (strncmp(*e, "REGPROXY_", 9) != 0) {
      continue;
    }
    eq = strchr(*e, '=');
    n = eq != NULL ? (size_t)(eq - *e) : strlen(*e);
    /* REGPROXY_NO_SPLICE is a switch for comparisons, not an option
     * (tunnel.c, docs/architecture.md). */
    if ((n == 12 && strncmp(*e, "REGPROXY_BIN", 12) == 0) ||
        (n == 18 && strncmp(*e, "REGPROXY_NO_SPLICE", 18) == 0) ||
        strncmp(*e, "REGPROXY_TEST", 13) == 0) {
      continue;
    }
    if (rp__opt_find_env(*e + 9, n - 9) == NULL) {
      char shown[80];
      char raw[72];
      snprintf(raw, sizeof raw, "%.*s", (int)(n > 64 ? 64 : n), *e);
      rp__show(raw, shown, sizeof shown);
      *ld->err = rp__aprintf("%s: unknown variable (no such regproxy option)", shown);
      return *ld->err != NULL ? RP_ECONFIG : RP_ENOMEM;
    }
  }
  for (size_t i = 0; i < RP__N_OPTS; i++) {
    const struct rp__opt *o = &rp__opts[i];
    const char *v;
    struct rp__origin org;
    if (o->flags & (OF_NO_ENV | OF_CONFIG)) {
      continue;
    }
    rp__opt_env_name(o, name, sizeof name);
    v = env_get(ld->envp, name);
    if (v == NULL) {
      continue;
    }
    memset(&org, 0, sizeof org);
    org.src = RP_SRC_ENV;
    snprintf(org.name, sizeof org.name, "%s", name);
    rc = rp__apply_text(ld, o, &org, v, true);
    if (rc != 0) {
      return rc;
    }
  }
  return 0;
}

static int apply_flags(struct rp__load *ld) {
  struct rp__origin org;
  int rc;

  memset(&org, 0, sizeof org);
  org.src = RP_SRC_FLAG;
  for (size_t i = 0; i < ld->n_flags; i++) {
    if (ld->flags[i].o->flags & OF_CONFIG) {
      continue;
    }
    rc = rp__apply_text(ld, ld->flags[i].o, &org, ld->flags[i].value, false);
    if (rc != 0) {
      return rc;
    }
  }
  return 0;
}

/* The first non-empty variable of names[], as Go's httpproxy getEnvAny. */
static const char *env_any(char **envp, const char *const *names, size_t n, const char **which) {
  for (size_t i = 0; i < n; i++) {
    const char *v = env_get(envp, names[i]);
    if (v != NULL && v[0] != '\0') {
      *which = names[i];
      return v;
    }
  }
  return NULL;
}

static int apply_proxy_env(struct rp__load *ld) {
  static const char *const https_names[] = {"HTTPS_PROXY", "https_proxy"};
  static const char *const http_names[] = {"HTTP_PROXY", "http_proxy"};
  static const char *const no_names[] = {"NO_PROXY", "no_proxy"};
  const struct rp__opt *pp = rp__opt_find_key("parent_proxy");
  const struct rp__opt *np = rp__opt_find_key("no_proxy");
  const char *which = NULL;
  const char *v;
  const char *cgi;
  struct rp__origin org;
  int rc;

  memset(&org, 0, sizeof org);
  org.src = RP_SRC_PROXY_ENV;
  if (ld->src[rp__opt_index(pp)] == RP_SRC_DEFAULT) {
    v = env_any(ld->envp, https_names, 2, &which);
    /* Like Go, HTTP_PROXY is not trusted when running as a CGI program
     * (httpoxy: a request header can set it). */
    cgi = env_get(ld->envp, "REQUEST_METHOD");
    if (v == NULL && (cgi == NULL || cgi[0] == '\0')) {
      v = env_any(ld->envp, http_names, 2, &which);
    }
    if (v != NULL) {
      snprintf(org.name, sizeof org.name, "%s", which);
      rc = rp__apply_text(ld, pp, &org, v, false);
      if (rc != 0) {
        return rc;
      }
    }
  }
  if (ld->src[rp__opt_index(np)] == RP_SRC_DEFAULT) {
    v = env_any(ld->envp, no_names, 2, &which);
    if (v != NULL) {
      snprintf(org.name, sizeof org.name, "%s", which);
      rc = rp__apply_text(ld, np, &org, v, false);
      if (rc != 0) {
        return rc;
      }
    }
  }
  return 0;
}

/* ---- entry points -------------------------------------------------------------- */

int rp__config_load_ex(struct rp_config **out, int argc, char **argv, char **envp,
                       const struct rp__config_opts *kopts, char **err) {
  struct rp__load *ld = NULL;
  struct rp_config *cfg = NULL;
  char *dummy = NULL;
  int rc;

  if (err == NULL) {
    err = &dummy;
  }
  *err = NULL;
  if (out == NULL || kopts == NULL) {
    return RP_EINVAL;
  }
  *out = NULL;
  ld = calloc(1, sizeof *ld);
  cfg = calloc(1, sizeof *cfg);
  if (ld == NULL || cfg == NULL) {
    rc = RP_ENOMEM;
    goto out;
  }
  ld->cfg = cfg;
  ld->envp = envp;
  ld->opts = kopts;
  ld->err = err;
  rc = home_dir(envp, &ld->home);
  if (rc != 0) {
    goto out;
  }
  rc = apply_defaults(ld);
  if (rc != 0) {
    goto out;
  }
  rc = scan_argv(ld, argc, argv);
  if (rc != 0 || cfg->want_help || cfg->want_version) {
    goto out;
  }
  rc = read_config_file(ld);
  if (rc != 0) {
    goto out;
  }
  rc = apply_env(ld);
  if (rc != 0) {
    goto out;
  }
  rc = apply_flags(ld);
  if (rc != 0) {
    goto out;
  }
  rc = apply_proxy_env(ld);
  if (rc != 0) {
    goto out;
  }
  rc = rp__config_finish(ld);
out:
  if (rc == 0) {
    *out = cfg;
    cfg = NULL;
  }
  rp_config_destroy(cfg);
  if (ld != NULL) {
    free(ld->flags);
    free(ld->home);
    free(ld);
  }
  free(dummy);
  return rc;
}

int rp_config_load(struct rp_config **out, int argc, char **argv, char **envp, char **err) {
  struct rp__config_opts kopts;
  memset(&kopts, 0, sizeof kopts);
  kopts.euid = -1;
  return rp__config_load_ex(out, argc, argv, envp, &kopts, err);
}

int rp__config_load_yaml_buffer(struct rp_config **out, const char *name, const void *buf,
                                size_t len, char **err) {
  static char prog[] = "regproxy";
  char *argv[] = {prog, NULL};
  char *envp[] = {NULL};
  struct rp__config_opts kopts;

  memset(&kopts, 0, sizeof kopts);
  kopts.euid = 0; /* fixed defaults, independent of the caller */
  kopts.yaml_name = name;
  kopts.yaml_buf = buf != NULL ? buf : "";
  kopts.yaml_len = buf != NULL ? len : 0;
  return rp__config_load_ex(out, 1, argv, envp, &kopts, err);
}
