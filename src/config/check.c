/* Checks across options, made once every layer is applied: a listener to
 * serve on, the directories, a parent proxy that is not regproxy itself, the
 * CA's names; and the start-up check of non-loopback listeners. */

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "config/internal.h"
#include "regproxy/config.h"
#include "regproxy/error.h"
#include "regproxy/rules.h"

/* ---- final checks ----------------------------------------------------------- */

static bool ip_equal(const char *a, const char *b) {
  unsigned char x[16], y[16];
  if (inet_pton(AF_INET, a, x) == 1 && inet_pton(AF_INET, b, y) == 1) {
    return memcmp(x, y, 4) == 0;
  }
  if (inet_pton(AF_INET6, a, x) == 1 && inet_pton(AF_INET6, b, y) == 1) {
    return memcmp(x, y, 16) == 0;
  }
  return false;
}

static bool is_wildcard(const char *h) {
  return ip_equal(h, "0.0.0.0") || ip_equal(h, "::");
}

static bool is_loopback_host(const char *h) {
  unsigned char a[16];
  static const unsigned char v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (inet_pton(AF_INET, h, a) == 1) {
    return a[0] == 127;
  }
  if (inet_pton(AF_INET6, h, a) == 1) {
    return ip_equal(h, "::1") || (memcmp(a, v4mapped, 12) == 0 && a[12] == 127);
  }
  return false;
}

static bool is_localhost_name(const char *h) {
  return strcasecmp(h, "localhost") == 0 || strcasecmp(h, "localhost.") == 0;
}

/* Does a parent proxy at phost:pport reach our listener l? */
static bool points_at(const char *phost, uint16_t pport, const struct rp_listen_addr *l) {
  char hostname[256];
  if (pport != l->port) {
    return false;
  }
  if (strcasecmp(phost, l->host) == 0 || ip_equal(phost, l->host)) {
    return true;
  }
  if (is_localhost_name(phost)) {
    return is_loopback_host(l->host) || is_wildcard(l->host);
  }
  if (is_wildcard(l->host)) {
    if (is_loopback_host(phost) || is_wildcard(phost)) {
      return true;
    }
    if (gethostname(hostname, sizeof hostname) == 0) {
      hostname[sizeof hostname - 1] = '\0';
      return strcasecmp(hostname, phost) == 0;
    }
  }
  return false;
}

static int check_parent(struct rp__load *ld) {
  struct rp_config *cfg = ld->cfg;
  const struct rp__opt *pp = rp__opt_find_key("parent_proxy");
  size_t pi = rp__opt_index(pp);
  const struct rp_listen_addr *hit = NULL;

  if (cfg->parent_proxy_host == NULL) {
    return 0;
  }
  for (size_t i = 0; i < cfg->n_listen && hit == NULL; i++) {
    if (points_at(cfg->parent_proxy_host, cfg->parent_proxy_port, &cfg->listen[i])) {
      hit = &cfg->listen[i];
    }
  }
  for (size_t i = 0; i < cfg->n_transparent && hit == NULL; i++) {
    if (points_at(cfg->parent_proxy_host, cfg->parent_proxy_port, &cfg->transparent[i])) {
      hit = &cfg->transparent[i];
    }
  }
  if (hit == NULL) {
    return 0;
  }
  if (ld->src[pi] == RP_SRC_PROXY_ENV) {
    /* A shell that exports HTTPS_PROXY for its tools exports it for us too. */
    char *msg = rp__aprintf("%s=%s points at regproxy's own listener %s; ignored",
                            ld->where[pi].name, cfg->parent_proxy, hit->text);
    int rc;
    if (msg == NULL) {
      return RP_ENOMEM;
    }
    rc = rp__strv_push(&cfg->warnings, msg);
    free(msg);
    if (rc != 0) {
      return rc;
    }
    free(cfg->parent_proxy);
    free(cfg->parent_proxy_host);
    free(cfg->parent_proxy_userinfo);
    cfg->parent_proxy = NULL;
    cfg->parent_proxy_host = NULL;
    cfg->parent_proxy_userinfo = NULL;
    cfg->parent_proxy_port = 0;
    cfg->parent_proxy_tls = false;
    return 0;
  }
  return rp__config_fail(ld, pp, &ld->where[pi], "%s points at regproxy's own listener %s",
                         cfg->parent_proxy, hit->text);
}

int rp__config_finish(struct rp__load *ld) {
  struct rp_config *cfg = ld->cfg;
  const struct rp__opt *lo = rp__opt_find_key("listen");
  const char *ca_names;
  int rc;

  if (cfg->n_listen == 0 && cfg->n_transparent == 0) {
    return rp__config_fail(ld, lo, &ld->where[rp__opt_index(lo)],
                           "no listener (listen and transparent are both empty)");
  }
  if (cfg->cache_dir == NULL) {
    *ld->err = rp__aprintf("cache_dir: no default (HOME is not set); use --cache-dir");
    return *ld->err != NULL ? RP_ECONFIG : RP_ENOMEM;
  }
  if (cfg->ca_dir == NULL) {
    *ld->err = rp__aprintf("ca_dir: no default (HOME is not set); use --ca-dir");
    return *ld->err != NULL ? RP_ECONFIG : RP_ENOMEM;
  }
  rc = check_parent(ld);
  if (rc != 0) {
    return rc;
  }
  /* A CA is made for the mitm list; with interception off, for the
   * default one, so that turning it on later needs no new CA. */
  ca_names = cfg->mitm;
  if (rp_hostlist_count(cfg->mitm_list) == 0 && !rp_hostlist_has_star(cfg->mitm_list)) {
    ca_names = RP_CONFIG_DEFAULT_MITM;
  }
  rc = rp_hostlist_parse(ca_names, 0, &cfg->ca_names, NULL);
  if (rc != 0) {
    return rc;
  }
  cfg->parent_proxy_source = ld->src[rp__opt_index(rp__opt_find_key("parent_proxy"))];
  cfg->allow_source = ld->src[rp__opt_index(rp__opt_find_key("allow"))];
  cfg->cache_max_size_source = ld->src[rp__opt_index(rp__opt_find_key("cache_max_size"))];
  cfg->upstream_certs_dir_default =
      ld->src[rp__opt_index(rp__opt_find_key("upstream_certs_dir"))] == RP_SRC_DEFAULT;
  return 0;
}

int rp_config_check_listeners(const struct rp_config *cfg, char **err) {
  const struct rp_listen_addr *lists[2] = {cfg->listen, cfg->transparent};
  const size_t counts[2] = {cfg->n_listen, cfg->n_transparent};
  static const char *const flags[2] = {"--listen", "--transparent"};

  if (cfg->allow_source != RP_SRC_DEFAULT) {
    return 0;
  }
  for (size_t k = 0; k < 2; k++) {
    for (size_t i = 0; i < counts[k]; i++) {
      if (!is_loopback_host(lists[k][i].host)) {
        *err = rp__aprintf("%s %s: a listener on a non-loopback address needs an explicit "
                           "allow (--allow, allow: in the config file, or REGPROXY_ALLOW)",
                           flags[k], lists[k][i].text);
        return *err != NULL ? RP_ECONFIG : RP_ENOMEM;
      }
    }
  }
  return 0;
}
