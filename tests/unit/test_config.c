/* Unit tests for src/config: value parsers, defaults, the layers and their
 * precedence, the YAML reader, error messages, the shipped
 * conf/regproxy.yml and --help. Data files live in $RP_TEST_DATA/config. */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "config/internal.h"
#include "regproxy/config.h"
#include "regproxy/error.h"
#include "regproxy/log.h"

#define A(...) ((const char *const[]){__VA_ARGS__, NULL})
#define NONE   ((const char *const[]){NULL})

#define NONROOT 1000

static const char *data_dir(void) {
  const char *d = getenv("RP_TEST_DATA");
  return d != NULL ? d : "tests/data";
}

static void data_path(char *buf, size_t size, const char *rel) {
  snprintf(buf, size, "%s/config/%s", data_dir(), rel);
}

/* Load with argv = "regproxy" + args, the environment env, no default
 * config file, and optionally a YAML buffer as the config file. */
static int load_full(struct rp_config **cfg, char **err, const char *const *args,
                     const char *const *env, int euid, const char *yaml) {
  char *argv[64];
  char *envp[64];
  int argc = 0;
  size_t n = 0;
  struct rp__config_opts o;

  argv[argc++] = (char *)"regproxy";
  for (size_t i = 0; args != NULL && args[i] != NULL; i++) {
    argv[argc++] = (char *)args[i];
  }
  argv[argc] = NULL;
  for (size_t i = 0; env != NULL && env[i] != NULL; i++) {
    envp[n++] = (char *)env[i];
  }
  envp[n] = NULL;
  memset(&o, 0, sizeof o);
  o.euid = euid;
  o.default_config = "/nonexistent/regproxy/regproxy.yml";
  if (yaml != NULL) {
    o.yaml_name = "test.yml";
    o.yaml_buf = yaml;
    o.yaml_len = strlen(yaml);
  }
  *err = NULL;
  return rp__config_load_ex(cfg, argc, argv, envp, &o, err);
}

static struct rp_config *load_ok(const char *const *args, const char *const *env,
                                 const char *yaml) {
  struct rp_config *cfg = NULL;
  char *err = NULL;
  int rc = load_full(&cfg, &err, args, env, NONROOT, yaml);
  if (rc != 0) {
    fail_msg("load failed: %d %s", rc, err != NULL ? err : "(no message)");
  }
  assert_null(err);
  assert_non_null(cfg);
  return cfg;
}

/* Load must fail with RP_ECONFIG and a message containing want. */
static void load_err(const char *const *args, const char *const *env, const char *yaml,
                     const char *want) {
  struct rp_config *cfg = NULL;
  char *err = NULL;
  int rc = load_full(&cfg, &err, args, env, NONROOT, yaml);
  if (rc != RP_ECONFIG || err == NULL || strstr(err, want) == NULL) {
    fail_msg("want RP_ECONFIG with \"%s\", got rc=%d err=%s", want, rc,
             err != NULL ? err : "(null)");
  }
  assert_null(cfg);
  free(err);
}

/* ---- value parsers ---------------------------------------------------- */

static void test_parse_size(void **state) {
  static const struct {
    const char *in;
    int ok;
    uint64_t want;
  } t[] = {
      {"0", 1, 0},
      {"1024", 1, 1024},
      {"2k", 1, 2048},
      {"2K", 1, 2048},
      {"2KB", 1, 2048},
      {"2kib", 1, 2048},
      {"512M", 1, 512ull << 20},
      {"20G", 1, 20ull << 30},
      {"100GiB", 1, 100ull << 30},
      {"1T", 1, 1ull << 40},
      {"1p", 1, 1ull << 50},
      {"1024B", 1, 1024},
      {"16383P", 1, 16383ull << 50},
      {"", 0, 0},
      {"G", 0, 0},
      {"-1", 0, 0},
      {"1.5G", 0, 0},
      {"20 G", 0, 0},
      {" 20G", 0, 0},
      {"20X", 0, 0},
      {"20GBB", 0, 0},
      {"20iB", 0, 0},
      {"16384P", 0, 0},
      {"18446744073709551616", 0, 0},
      {"99999999999999999999999", 0, 0},
  };
  (void)state;
  for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
    uint64_t v = 12345;
    int rc = rp_config_parse_size(t[i].in, &v);
    if (t[i].ok) {
      if (rc != 0 || v != t[i].want) {
        fail_msg("size '%s': rc=%d v=%llu", t[i].in, rc, (unsigned long long)v);
      }
    } else if (rc == 0) {
      fail_msg("size '%s' should be refused", t[i].in);
    }
  }
}

static void test_parse_duration(void **state) {
  static const struct {
    const char *in;
    int ok;
    uint64_t want;
  } t[] = {
      {"0", 1, 0},
      {"0s", 1, 0},
      {"250ms", 1, 250},
      {"30s", 1, 30000},
      {"10m", 1, 600000},
      {"1h", 1, 3600000},
      {"1d", 1, 86400000},
      {"1h30m", 1, 5400000},
      {"2m3s4ms", 1, 123004},
      {"120s", 1, 120000},
      {"", 0, 0},
      {"30", 0, 0},
      {"s", 0, 0},
      {"1.5h", 0, 0},
      {"10 m", 0, 0},
      {"10M", 0, 0},
      {"-1s", 0, 0},
      {"1w", 0, 0},
      {"1h30", 0, 0},
      {"99999999999999999999d", 0, 0},
      {"4000d", 0, 0}, /* over ten years */
  };
  (void)state;
  for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
    uint64_t v = 12345;
    int rc = rp_config_parse_duration(t[i].in, &v);
    if (t[i].ok) {
      if (rc != 0 || v != t[i].want) {
        fail_msg("duration '%s': rc=%d v=%llu", t[i].in, rc, (unsigned long long)v);
      }
    } else if (rc == 0) {
      fail_msg("duration '%s' should be refused", t[i].in);
    }
  }
}

static void test_parse_listen(void **state) {
  static const struct {
    const char *in;
    int ok;
    const char *host;
    uint16_t port;
  } t[] = {
      {"127.0.0.1:2080", 1, "127.0.0.1", 2080},
      {"[::1]:2080", 1, "::1", 2080},
      {":2080", 1, "0.0.0.0", 2080},
      {"0.0.0.0:80", 1, "0.0.0.0", 80},
      {"[::]:443", 1, "::", 443},
      {"10.1.2.3:65535", 1, "10.1.2.3", 65535},
      {"127.0.0.1:0", 1, "127.0.0.1", 0},
      {"127.0.0.1", 0, NULL, 0},
      {"127.0.0.1:", 0, NULL, 0},
      {"127.0.0.1:65536", 0, NULL, 0},
      {"127.0.0.1:http", 0, NULL, 0},
      {"localhost:2080", 0, NULL, 0},
      {"::1:2080", 0, NULL, 0},
      {"[::1]2080", 0, NULL, 0},
      {"[::1:2080", 0, NULL, 0},
      {"[]:2080", 0, NULL, 0},
      {"[127.0.0.1]:2080", 0, NULL, 0},
      {"256.0.0.1:80", 0, NULL, 0},
      {"", 0, NULL, 0},
  };
  (void)state;
  for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
    struct rp_listen_addr a;
    int rc = rp_config_parse_listen(t[i].in, &a);
    if (t[i].ok) {
      if (rc != 0 || strcmp(a.host, t[i].host) != 0 || a.port != t[i].port ||
          strcmp(a.text, t[i].in) != 0) {
        fail_msg("listen '%s': rc=%d host=%s port=%u", t[i].in, rc, rc == 0 ? a.host : "-",
                 rc == 0 ? a.port : 0);
      }
      free(a.text);
    } else if (rc != RP_EPARSE) {
      fail_msg("listen '%s' should be refused (rc=%d)", t[i].in, rc);
    } else {
      assert_null(a.text);
    }
  }
}

static void test_parse_connect_to(void **state) {
  /* The forms curl's --connect-to accepts (docs/cmdline-opts/connect-to.md). */
  static const struct {
    const char *in;
    int ok;
    const char *host;
    uint16_t port;
    const char *to;
    uint16_t to_port;
  } t[] = {
      {"example.com:443:127.0.0.1:8443", 1, "example.com", 443, "127.0.0.1", 8443},
      {"Example.COM:443:Other.Host:443", 1, "example.com", 443, "Other.Host", 443},
      {"::127.0.0.1:8443", 1, "", 0, "127.0.0.1", 8443},
      {"example.com:443::8443", 1, "example.com", 443, "", 8443},
      {"example.com:443:mirror:", 1, "example.com", 443, "mirror", 0},
      {"example.com:443:mirror", 1, "example.com", 443, "mirror", 0},
      {":::", 1, "", 0, "", 0},
      {"[::1]:443:[fd00::2]:8443", 1, "::1", 443, "fd00::2", 8443},
      {"example.com::[::1]:", 1, "example.com", 0, "::1", 0},
      {"example.com:443", 0, NULL, 0, NULL, 0},
      {"example.com", 0, NULL, 0, NULL, 0},
      {"example.com:x:a:1", 0, NULL, 0, NULL, 0},
      {"example.com:0:a:1", 0, NULL, 0, NULL, 0},
      {"example.com:443:a:70000", 0, NULL, 0, NULL, 0},
      {"example.com:443:a:1:2", 0, NULL, 0, NULL, 0},
      {"[::1:443:a:1", 0, NULL, 0, NULL, 0},
      {"[nothex]:443:a:1", 0, NULL, 0, NULL, 0},
      {"exa mple.com:443:a:1", 0, NULL, 0, NULL, 0},
      {"", 0, NULL, 0, NULL, 0},
  };
  (void)state;
  for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
    struct rp_connect_to c;
    int rc = rp_config_parse_connect_to(t[i].in, &c);
    if (t[i].ok) {
      if (rc != 0 || strcmp(c.host, t[i].host) != 0 || c.port != t[i].port ||
          strcmp(c.to_addr, t[i].to) != 0 || c.to_port != t[i].to_port) {
        fail_msg("connect_to '%s': rc=%d", t[i].in, rc);
      }
      free(c.host);
      free(c.to_addr);
    } else if (rc != RP_EPARSE) {
      fail_msg("connect_to '%s' should be refused (rc=%d)", t[i].in, rc);
    }
  }
}

static void test_parent_proxy_urls(void **state) {
  static const struct {
    const char *in;
    const char *url; /* NULL: refused */
    const char *host;
    uint16_t port;
    const char *userinfo;
  } t[] = {
      {"http://squid.example:3128", "http://squid.example:3128", "squid.example", 3128, NULL},
      {"http://squid.example", "http://squid.example:80", "squid.example", 80, NULL},
      {"http://squid.example:", "http://squid.example:80", "squid.example", 80, NULL},
      {"http://squid.example/", "http://squid.example:80", "squid.example", 80, NULL},
      {"HTTP://Squid.Example:8080", "http://squid.example:8080", "squid.example", 8080, NULL},
      {"https://proxy.corp", "https://proxy.corp:443", "proxy.corp", 443, NULL},
      {"squid:3128", "http://squid:3128", "squid", 3128, NULL},
      {"10.0.0.1:3128", "http://10.0.0.1:3128", "10.0.0.1", 3128, NULL},
      {"http://[fd00::1]:3128", "http://[fd00::1]:3128", "fd00::1", 3128, NULL},
      {"http://[fd00::1]", "http://[fd00::1]:80", "fd00::1", 80, NULL},
      {"http://u:p%40ss@squid:3128", "http://u:p%40ss@squid:3128", "squid", 3128, "u:p@ss"},
      {"http://a@b@squid:1", "http://a@b@squid:1", "squid", 1, "a@b"},
      {"socks5://127.0.0.1:1080", NULL, NULL, 0, NULL},
      {"ftp://x", NULL, NULL, 0, NULL},
      {"http://", NULL, NULL, 0, NULL},
      {"http://:3128", NULL, NULL, 0, NULL},
      {"http://squid:99999", NULL, NULL, 0, NULL},
      {"http://squid:0", NULL, NULL, 0, NULL},
      {"http://squid/path", NULL, NULL, 0, NULL},
      {"http://squid?x", NULL, NULL, 0, NULL},
      {"http://[::1:3128", NULL, NULL, 0, NULL},
      {"http://u:%zz@squid", NULL, NULL, 0, NULL},
      {"http://u:%00@squid", NULL, NULL, 0, NULL},
      {"http://sq uid", NULL, NULL, 0, NULL},
  };
  (void)state;
  for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
    struct rp_config *cfg = NULL;
    char *err = NULL;
    int rc = load_full(&cfg, &err, A("--parent-proxy", t[i].in), A("HOME=/home/t"), NONROOT, NULL);
    if (t[i].url == NULL) {
      if (rc != RP_ECONFIG || strncmp(err, "--parent-proxy: ", 16) != 0) {
        fail_msg("parent '%s' should be refused (rc=%d, %s)", t[i].in, rc, err);
      }
      free(err);
      continue;
    }
    if (rc != 0) {
      fail_msg("parent '%s': %s", t[i].in, err);
    }
    assert_string_equal(cfg->parent_proxy, t[i].url);
    assert_string_equal(cfg->parent_proxy_host, t[i].host);
    assert_int_equal(cfg->parent_proxy_port, t[i].port);
    assert_int_equal(cfg->parent_proxy_tls, strncmp(t[i].url, "https", 5) == 0);
    if (t[i].userinfo == NULL) {
      assert_null(cfg->parent_proxy_userinfo);
    } else {
      assert_string_equal(cfg->parent_proxy_userinfo, t[i].userinfo);
    }
    assert_int_equal(cfg->parent_proxy_source, RP_SRC_FLAG);
    rp_config_destroy(cfg);
  }
}

/* ---- defaults ---------------------------------------------------------------- */

static void check_common_defaults(const struct rp_config *cfg) {
  assert_int_equal(cfg->n_listen, 1);
  assert_string_equal(cfg->listen[0].text, "127.0.0.1:2080");
  assert_string_equal(cfg->listen[0].host, "127.0.0.1");
  assert_int_equal(cfg->listen[0].port, 2080);
  assert_int_equal(cfg->n_transparent, 0);
  assert_false(cfg->tproxy);
  assert_false(cfg->mark_set);
  assert_int_equal(cfg->cache_max_size, 20ull << 30);
  assert_int_equal(cfg->orphan_fill_max, 2ull << 30);
  assert_string_equal(cfg->mitm,
                      "registry-1.docker.io,index.docker.io,ghcr.io,quay.io,registry.k8s.io,"
                      "gcr.io,.pkg.dev,mcr.microsoft.com,public.ecr.aws,nvcr.io,"
                      "registry.gitlab.com");
  assert_non_null(cfg->mitm_list);
  assert_string_equal(cfg->no_proxy, "");
  assert_non_null(cfg->no_proxy_list);
  assert_null(cfg->parent_proxy);
  assert_int_equal(cfg->parent_proxy_source, RP_SRC_DEFAULT);
  assert_string_equal(cfg->allow, "127.0.0.0/8,::1");
  assert_non_null(cfg->acl);
  assert_int_equal(cfg->allow_source, RP_SRC_DEFAULT);
  assert_string_equal(cfg->admin_allow, "127.0.0.0/8,::1");
  assert_non_null(cfg->admin_acl);
  assert_null(cfg->connect_ports);
  assert_null(cfg->connect_portset);
  assert_null(cfg->proxy_auth_file);
  assert_int_equal(cfg->n_connect_to, 0);
  assert_null(cfg->upstream_ca);
  assert_string_equal(cfg->mirror_default, "docker.io");
  assert_int_equal(cfg->server_names.n, 0);
  assert_int_equal(cfg->tag_ttl_ms, 0);
  assert_int_equal(cfg->access_ttl_ms, 600000);
  assert_true(cfg->access_check);
  assert_int_equal(cfg->header_timeout_ms, 30000);
  assert_int_equal(cfg->idle_timeout_ms, 120000);
  assert_int_equal(cfg->tunnel_idle_timeout_ms, 3600000);
  assert_int_equal(cfg->connect_timeout_ms, 15000);
  assert_int_equal(cfg->shutdown_grace_ms, 30000);
  assert_int_equal(cfg->max_connections, 10000);
  assert_int_equal(cfg->log_level, RP_LOG_INFO);
  assert_int_equal(cfg->log_format, RP_LOG_LOGFMT);
  assert_null(cfg->config_file);
  assert_false(cfg->dry_run);
  assert_null(cfg->root);
  assert_false(cfg->ca_force);
  assert_false(cfg->ca_unconstrained);
  assert_true(rp_hostlist_match(cfg->ca_names, "registry-1.docker.io", 443));
  assert_true(rp_hostlist_match(cfg->ca_names, "europe-docker.pkg.dev", 443));
  assert_int_equal(rp_hostlist_count(cfg->ca_names), rp_hostlist_count(cfg->mitm_list));
  assert_int_equal(cfg->args.n, 0);
  assert_int_equal(cfg->warnings.n, 0);
  assert_false(cfg->want_help);
  assert_false(cfg->want_version);
}

static void test_defaults_user(void **state) {
  struct rp_config *cfg = load_ok(NONE, A("HOME=/home/t", "PATH=/bin"), NULL);
  (void)state;
  check_common_defaults(cfg);
  assert_string_equal(cfg->cache_dir, "/home/t/.cache/regproxy");
  assert_string_equal(cfg->ca_dir, "/home/t/.local/share/regproxy/ca");
  assert_null(cfg->registry_auth); /* /home/t/.docker/config.json does not exist */
  rp_config_destroy(cfg);
}

static void test_defaults_xdg(void **state) {
  struct rp_config *cfg;
  (void)state;
  cfg = load_ok(NONE, A("HOME=/home/t", "XDG_CACHE_HOME=/xdg/cache", "XDG_DATA_HOME=/xdg/data"),
                NULL);
  assert_string_equal(cfg->cache_dir, "/xdg/cache/regproxy");
  assert_string_equal(cfg->ca_dir, "/xdg/data/regproxy/ca");
  rp_config_destroy(cfg);
  /* Relative XDG values are ignored, as the XDG spec says. */
  cfg = load_ok(NONE, A("HOME=/home/t", "XDG_CACHE_HOME=rel", "XDG_DATA_HOME="), NULL);
  assert_string_equal(cfg->cache_dir, "/home/t/.cache/regproxy");
  assert_string_equal(cfg->ca_dir, "/home/t/.local/share/regproxy/ca");
  rp_config_destroy(cfg);
}

static void test_defaults_root(void **state) {
  struct rp_config *cfg = NULL;
  char *err = NULL;
  (void)state;
  assert_int_equal(load_full(&cfg, &err, NONE, A("HOME=/root", "XDG_CACHE_HOME=/x"), 0, NULL), 0);
  check_common_defaults(cfg);
  assert_string_equal(cfg->cache_dir, "/var/cache/regproxy");
  assert_string_equal(cfg->ca_dir, "/var/lib/regproxy/ca");
  rp_config_destroy(cfg);
}

static void test_defaults_registry_auth(void **state) {
  char home[512], env_home[600], want[600], dc[600], env_dc[700];
  struct rp_config *cfg;
  (void)state;
  data_path(home, sizeof home, "home");
  snprintf(env_home, sizeof env_home, "HOME=%s", home);
  snprintf(want, sizeof want, "%s/.docker/config.json", home);
  cfg = load_ok(NONE, A(env_home), NULL);
  assert_string_equal(cfg->registry_auth, want);
  rp_config_destroy(cfg);
  /* DOCKER_CONFIG wins over ~/.docker, as for the docker CLI. */
  snprintf(dc, sizeof dc, "%s/.docker", home);
  snprintf(env_dc, sizeof env_dc, "DOCKER_CONFIG=%s", dc);
  cfg = load_ok(NONE, A("HOME=/home/t", env_dc), NULL);
  assert_string_equal(cfg->registry_auth, want);
  rp_config_destroy(cfg);
  cfg = load_ok(NONE, A(env_home, "DOCKER_CONFIG=/nonexistent"), NULL);
  assert_null(cfg->registry_auth);
  rp_config_destroy(cfg);
}

/* ---- flags ------------------------------------------------------------------------ */

static void test_flags(void **state) {
  struct rp_config *cfg;
  (void)state;
  cfg = load_ok(A("--cache-max-size", "1G", "--orphan-fill-max=512M", "--tproxy", "--mark", "7",
                  "--access-check", "off", "--log-level=debug", "--log-format", "json",
                  "--max-connections", "20", "--tag-ttl", "1m", "--cache-dir", "/c", "--ca-dir=/ca",
                  "--mirror-default", "GHCR.io", "--no-proxy", ".corp", "--mitm", "ghcr.io",
                  "--allow", "10.0.0.0/8", "--admin-allow", "10.1.0.0/16, ::1", "--connect-ports",
                  "443,8443", "--server-names", "a.lan,B.lan", "--shutdown-grace", "0"),
                A("HOME=/home/t"), NULL);
  assert_int_equal(cfg->cache_max_size, 1ull << 30);
  assert_int_equal(cfg->orphan_fill_max, 512ull << 20);
  assert_true(cfg->tproxy);
  assert_true(cfg->mark_set);
  assert_int_equal(cfg->mark, 7);
  assert_false(cfg->access_check);
  assert_int_equal(cfg->log_level, RP_LOG_DEBUG);
  assert_int_equal(cfg->log_format, RP_LOG_JSON);
  assert_int_equal(cfg->max_connections, 20);
  assert_int_equal(cfg->tag_ttl_ms, 60000);
  assert_string_equal(cfg->cache_dir, "/c");
  assert_string_equal(cfg->ca_dir, "/ca");
  assert_string_equal(cfg->mirror_default, "ghcr.io");
  assert_string_equal(cfg->no_proxy, ".corp");
  assert_string_equal(cfg->mitm, "ghcr.io");
  assert_string_equal(cfg->allow, "10.0.0.0/8");
  assert_int_equal(cfg->allow_source, RP_SRC_FLAG);
  assert_string_equal(cfg->admin_allow, "10.1.0.0/16, ::1");
  assert_non_null(cfg->admin_acl);
  assert_string_equal(cfg->connect_ports, "443,8443");
  assert_non_null(cfg->connect_portset);
  assert_int_equal(cfg->server_names.n, 2);
  assert_string_equal(cfg->server_names.v[0], "a.lan");
  assert_string_equal(cfg->server_names.v[1], "b.lan");
  assert_null(cfg->server_names.v[2]);
  assert_int_equal(cfg->shutdown_grace_ms, 0);
  assert_int_equal(cfg->args.n, 0);
  rp_config_destroy(cfg);

  /* A bool flag takes a following bool word, else means on. */
  cfg = load_ok(A("--tproxy", "no", "--access-check", "run"), A("HOME=/home/t"), NULL);
  assert_false(cfg->tproxy);
  assert_true(cfg->access_check);
  assert_int_equal(cfg->args.n, 1);
  assert_string_equal(cfg->args.v[0], "run");
  rp_config_destroy(cfg);

  /* The last of a repeated single-valued flag wins; mark off/0 is unset;
   * log words are case-insensitive. */
  cfg = load_ok(A("--tag-ttl", "1m", "--tag-ttl", "2m", "--mark", "0x10", "--mark", "off",
                  "--log-level", "WARN", "--log-format=JSON"),
                A("HOME=/home/t"), NULL);
  assert_int_equal(cfg->tag_ttl_ms, 120000);
  assert_false(cfg->mark_set);
  assert_int_equal(cfg->log_level, RP_LOG_WARN);
  assert_int_equal(cfg->log_format, RP_LOG_JSON);
  rp_config_destroy(cfg);

  /* An empty connect_ports or "default" keeps the default policy. */
  cfg = load_ok(A("--connect-ports", "443", "--connect-ports", "default"), A("HOME=/home/t"), NULL);
  assert_null(cfg->connect_ports);
  assert_null(cfg->connect_portset);
  rp_config_destroy(cfg);
}

static void test_flag_errors(void **state) {
  static const struct {
    const char *a1, *a2;
    const char *want;
  } t[] = {
      {"--cache-max-size", "x", "--cache-max-size: bad size 'x'"},
      {"--cache-max-size=lots", NULL, "--cache-max-size: bad size 'lots'"},
      {"--cache-max-size", "0", "--cache-max-size: must be greater than 0"},
      {"--idle-timeout", "30", "--idle-timeout: bad duration '30'"},
      {"--connect-timeout", "0", "--connect-timeout: must be greater than 0"},
      {"--access-check=maybe", NULL, "--access-check: bad boolean 'maybe'"},
      {"--max-connections", "0", "--max-connections: 0 out of range 1-1000000"},
      {"--max-connections", "1x", "--max-connections: bad number '1x'"},
      {"--mark", "4294967296", "--mark: bad mark '4294967296'"},
      {"--mark", "0xzz", "--mark: bad mark '0xzz'"},
      {"--log-level", "loud", "--log-level: bad log level 'loud'"},
      {"--log-level", "debugdebugdebugdebug", "--log-level: bad log level 'debugdebugdebugdebug'"},
      {"--log-format", "xml", "--log-format: bad log format 'xml'"},
      {"--listen", "localhost:1", "--listen: bad address 'localhost:1': not an IPv4 address"},
      {"--transparent", "1.2.3.4", "--transparent: bad address '1.2.3.4': expected ADDR:PORT"},
      {"--connect-to", "a:1", "--connect-to: bad connect_to 'a:1'"},
      {"--allow", "nope", "--allow: "},
      {"--admin-allow", "10.0.0.0/33", "--admin-allow: "},
      {"--admin-allow=example.com", NULL, "--admin-allow: "},
      {"--mirror-default", "a/b", "--mirror-default: bad registry name 'a/b'"},
      {"--server-names", "a b", "--server-names: bad host name in 'a b'"},
      {"--cache-dir", "", "--cache-dir: empty path"},
      {"--upstream-ca", "/nonexistent/ca.pem",
       "--upstream-ca: cannot read '/nonexistent/ca.pem': No such file or directory"},
      {"--cache-dir", "~bob/x", "--cache-dir: '~user' paths are not supported"},
      {"--bogus", NULL, "unknown option '--bogus'"},
      {"--bogus=1", NULL, "unknown option '--bogus'"},
      {"--cache_max_size", "1G",
       "unknown option '--cache_max_size' (did you mean --cache-max-size?)"},
      {"-x", NULL, "unknown option '-x'"},
      {"--help=yes", NULL, "unknown option '--help'"},
      {"--cache-max-size", NULL, "--cache-max-size: missing value"},
      {"--config", NULL, "--config: missing value"},
      {"--config", "/nonexistent/r.yml",
       "/nonexistent/r.yml: cannot open config file: No such file or directory"},
      {"--listen", "", "--listen: no listener"},
  };
  (void)state;
  for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
    if (t[i].a2 != NULL) {
      load_err(A(t[i].a1, t[i].a2), A("HOME=/home/t"), NULL, t[i].want);
    } else {
      load_err(A(t[i].a1), A("HOME=/home/t"), NULL, t[i].want);
    }
  }
}

static void test_positional(void **state) {
  struct rp_config *cfg;
  (void)state;
  cfg = load_ok(A("ca", "--ca-dir", "/x", "init"), A("HOME=/home/t"), NULL);
  assert_int_equal(cfg->args.n, 2);
  assert_string_equal(cfg->args.v[0], "ca");
  assert_string_equal(cfg->args.v[1], "init");
  assert_string_equal(cfg->ca_dir, "/x");
  rp_config_destroy(cfg);

  cfg = load_ok(A("prefetch", "-", "--", "--listen", "alpine:3.18"), A("HOME=/home/t"), NULL);
  assert_int_equal(cfg->args.n, 4);
  assert_string_equal(cfg->args.v[1], "-");
  assert_string_equal(cfg->args.v[2], "--listen");
  assert_string_equal(cfg->args.v[3], "alpine:3.18");
  assert_null(cfg->args.v[4]);
  assert_int_equal(cfg->n_listen, 1);
  rp_config_destroy(cfg);

  cfg = load_ok(A("setup", "docker", "--dry-run", "--root", "/tmp/root"), A("HOME=/home/t"), NULL);
  assert_int_equal(cfg->args.n, 2);
  assert_true(cfg->dry_run);
  assert_string_equal(cfg->root, "/tmp/root");
  rp_config_destroy(cfg);

  /* A CA is made for the mitm list; with interception off, for the default
   * list (contract §2). */
  cfg = load_ok(A("ca", "init", "--force", "--unconstrained", "--mitm", "Registry.LAN:5000"),
                A("HOME=/home/t"), NULL);
  assert_int_equal(cfg->args.n, 2);
  assert_true(cfg->ca_force);
  assert_true(cfg->ca_unconstrained);
  assert_int_equal(rp_hostlist_count(cfg->ca_names), 1);
  assert_true(rp_hostlist_match(cfg->ca_names, "registry.lan", 5000));
  rp_config_destroy(cfg);
  cfg = load_ok(A("ca", "init", "--mitm", " , "), A("HOME=/home/t"), NULL);
  assert_int_equal(rp_hostlist_count(cfg->mitm_list), 0);
  assert_int_equal(rp_hostlist_count(cfg->ca_names), 11);
  assert_true(rp_hostlist_match(cfg->ca_names, "ghcr.io", 443));
  rp_config_destroy(cfg);
  cfg = load_ok(A("--mitm", "*"), A("HOME=/home/t"), NULL);
  assert_true(rp_hostlist_has_star(cfg->ca_names));
  rp_config_destroy(cfg);
}

static void test_help_version(void **state) {
  struct rp_config *cfg;
  (void)state;
  cfg = load_ok(A("-h"), A("HOME=/home/t"), NULL);
  assert_true(cfg->want_help);
  rp_config_destroy(cfg);
  cfg = load_ok(A("--version"), A("HOME=/home/t"), NULL);
  assert_true(cfg->want_version);
  rp_config_destroy(cfg);
  /* Help works even when the environment or the file is broken. */
  cfg = load_ok(A("setup", "--help", "--config", "/nonexistent.yml"),
                A("HOME=/home/t", "REGPROXY_TYPO=1"), NULL);
  assert_true(cfg->want_help);
  assert_false(cfg->want_version);
  assert_int_equal(cfg->args.n, 1);
  rp_config_destroy(cfg);
  cfg = load_ok(A("-V"), A("HOME=/home/t"), "cache_max_size: nonsense");
  assert_true(cfg->want_version);
  rp_config_destroy(cfg);
  /* But an unknown flag is still an error. */
  load_err(A("--help", "--nope"), A("HOME=/home/t"), NULL, "unknown option '--nope'");
}

static void test_repeatable(void **state) {
  struct rp_config *cfg;
  (void)state;
  /* Flags accumulate and replace the file's and environment's list. */
  cfg = load_ok(A("--listen", "127.0.0.1:1", "--listen=[::1]:2", "--connect-to", "a:1:b:2",
                  "--connect-to", "::c:"),
                A("HOME=/home/t", "REGPROXY_LISTEN=127.0.0.1:9"),
                "listen: [127.0.0.1:7, 127.0.0.1:8]\nconnect_to: x:1:y:2\n");
  assert_int_equal(cfg->n_listen, 2);
  assert_string_equal(cfg->listen[0].text, "127.0.0.1:1");
  assert_string_equal(cfg->listen[1].host, "::1");
  assert_int_equal(cfg->n_connect_to, 2);
  assert_string_equal(cfg->connect_to[0].host, "a");
  assert_string_equal(cfg->connect_to[1].to_addr, "c");
  rp_config_destroy(cfg);

  /* The environment's comma list replaces the file's. */
  cfg = load_ok(NONE, A("HOME=/home/t", "REGPROXY_LISTEN=127.0.0.1:9, [::1]:9"),
                "listen: [127.0.0.1:7, 127.0.0.1:8]\n");
  assert_int_equal(cfg->n_listen, 2);
  assert_string_equal(cfg->listen[0].text, "127.0.0.1:9");
  assert_string_equal(cfg->listen[1].text, "[::1]:9");
  rp_config_destroy(cfg);

  /* A single scalar in the file is a one-element list; "off" empties. */
  cfg = load_ok(NONE, A("HOME=/home/t"), "listen: 127.0.0.1:7\ntransparent: off\n");
  assert_int_equal(cfg->n_listen, 1);
  assert_int_equal(cfg->listen[0].port, 7);
  assert_int_equal(cfg->n_transparent, 0);
  rp_config_destroy(cfg);

  /* Transparent-only is a valid set of listeners. */
  cfg = load_ok(A("--listen", "", "--transparent", "127.0.0.1:3129"), A("HOME=/home/t"), NULL);
  assert_int_equal(cfg->n_listen, 0);
  assert_int_equal(cfg->n_transparent, 1);
  rp_config_destroy(cfg);
}

/* ---- environment --------------------------------------------------------------- */

static void test_env(void **state) {
  struct rp_config *cfg;
  (void)state;
  cfg = load_ok(NONE,
                A("HOME=/home/t", "REGPROXY_CACHE_MAX_SIZE=5G", "REGPROXY_ACCESS_CHECK=no",
                  "REGPROXY_MITM=ghcr.io,quay.io", "REGPROXY_BIN=/usr/bin/regproxy",
                  "REGPROXY_TEST_PORT=1234", "REGPROXY_TESTING=1", "REGPROXY_ALLOW=10.0.0.1",
                  "REGPROXY_ADMIN_ALLOW=10.0.0.2", "REGPROXY_SERVER_NAMES=a.lan, b.lan",
                  "REGPROXY_CONNECT_TO=a:1:b:2,c:3:d:4"),
                NULL);
  assert_int_equal(cfg->cache_max_size, 5ull << 30);
  assert_false(cfg->access_check);
  assert_string_equal(cfg->mitm, "ghcr.io,quay.io");
  assert_int_equal(cfg->allow_source, RP_SRC_ENV);
  assert_string_equal(cfg->admin_allow, "10.0.0.2");
  assert_int_equal(cfg->server_names.n, 2);
  assert_string_equal(cfg->server_names.v[1], "b.lan");
  assert_int_equal(cfg->n_connect_to, 2);
  assert_int_equal(cfg->connect_to[1].to_port, 4);
  rp_config_destroy(cfg);

  load_err(NONE, A("HOME=/home/t", "REGPROXY_CACHE_MAX_SIZE=x"), NULL,
           "REGPROXY_CACHE_MAX_SIZE: bad size 'x'");
  load_err(NONE, A("HOME=/home/t", "REGPROXY_CACHE_MAX_SISE=1G"), NULL,
           "REGPROXY_CACHE_MAX_SISE: unknown variable");
  load_err(NONE, A("HOME=/home/t", "REGPROXY_DRY_RUN=1"), NULL,
           "REGPROXY_DRY_RUN: unknown variable");
  load_err(NONE, A("HOME=/home/t", "REGPROXY_cache_max_size=1G"), NULL,
           "REGPROXY_cache_max_size: unknown variable");
  load_err(NONE, A("HOME=/home/t", "REGPROXY_LISTEN=127.0.0.1"), NULL,
           "REGPROXY_LISTEN: bad address '127.0.0.1'");
  load_err(
      NONE, A("HOME=/home/t", "REGPROXY_PARENT_PROXY=socks5://x:1"), NULL,
      "REGPROXY_PARENT_PROXY: bad proxy URL 'socks5://x:1': unsupported proxy scheme 'socks5'");
}

static void test_config_file_selection(void **state) {
  char good[512], env[600], msg[600];
  struct rp_config *cfg = NULL;
  struct rp__config_opts o;
  char *err = NULL;
  char *argv[] = {(char *)"regproxy", NULL};
  char *envp[] = {(char *)"HOME=/home/t", NULL};
  (void)state;
  data_path(good, sizeof good, "good.yml");
  snprintf(env, sizeof env, "REGPROXY_CONFIG=%s", good);

  cfg = load_ok(NONE, A("HOME=/home/t", env), NULL);
  assert_string_equal(cfg->config_file, good);
  assert_int_equal(cfg->max_connections, 512);
  rp_config_destroy(cfg);

  /* --config beats REGPROXY_CONFIG; "" means no file at all. */
  cfg = load_ok(A("--config", ""), A("HOME=/home/t", env), NULL);
  assert_null(cfg->config_file);
  assert_int_equal(cfg->max_connections, 10000);
  rp_config_destroy(cfg);

  load_err(NONE, A("HOME=/home/t", "REGPROXY_CONFIG=/nonexistent/x.yml"), NULL,
           "/nonexistent/x.yml: cannot open config file");

  /* The default path is read when it exists, and silently skipped if not. */
  memset(&o, 0, sizeof o);
  o.euid = NONROOT;
  o.default_config = good;
  assert_int_equal(rp__config_load_ex(&cfg, 1, argv, envp, &o, &err), 0);
  assert_string_equal(cfg->config_file, good);
  rp_config_destroy(cfg);
  o.default_config = "/nonexistent/regproxy.yml";
  assert_int_equal(rp__config_load_ex(&cfg, 1, argv, envp, &o, &err), 0);
  assert_null(cfg->config_file);
  rp_config_destroy(cfg);

  /* A directory is not a config file. */
  data_path(msg, sizeof msg, "home");
  o.default_config = msg;
  assert_int_equal(rp__config_load_ex(&cfg, 1, argv, envp, &o, &err), RP_ECONFIG);
  assert_non_null(strstr(err, "cannot read config file"));
  free(err);
}

/* ---- precedence -------------------------------------------------------------- */

static void test_precedence(void **state) {
  struct rp_config *cfg;
  (void)state;
  /* Each key set by a different set of layers; the highest must win. */
  cfg = load_ok(A("--tag-ttl", "4m"),
                A("HOME=/home/t", "REGPROXY_TAG_TTL=3m", "REGPROXY_ACCESS_TTL=3m",
                  "HTTPS_PROXY=http://envproxy:1", "NO_PROXY=.env"),
                "tag_ttl: 2m\naccess_ttl: 2m\nidle_timeout: 2m\n"
                "parent_proxy: http://fileproxy:2\n");
  assert_int_equal(cfg->tag_ttl_ms, 4 * 60000);                 /* flag */
  assert_int_equal(cfg->access_ttl_ms, 3 * 60000);              /* env */
  assert_int_equal(cfg->idle_timeout_ms, 2 * 60000);            /* file */
  assert_int_equal(cfg->header_timeout_ms, 30000);              /* default */
  assert_string_equal(cfg->parent_proxy, "http://fileproxy:2"); /* file > HTTPS_PROXY */
  assert_int_equal(cfg->parent_proxy_source, RP_SRC_FILE);
  assert_string_equal(cfg->no_proxy, ".env"); /* NO_PROXY > default */
  rp_config_destroy(cfg);

  cfg = load_ok(A("--parent-proxy", "http://flag:3"),
                A("HOME=/home/t", "REGPROXY_PARENT_PROXY=http://env:4"),
                "parent_proxy: http://file:5\n");
  assert_string_equal(cfg->parent_proxy, "http://flag:3");
  assert_int_equal(cfg->parent_proxy_source, RP_SRC_FLAG);
  rp_config_destroy(cfg);

  cfg = load_ok(NONE, A("HOME=/home/t", "REGPROXY_PARENT_PROXY=http://env:4"),
                "parent_proxy: http://file:5\nallow: 10.0.0.0/8\n");
  assert_string_equal(cfg->parent_proxy, "http://env:4");
  assert_int_equal(cfg->parent_proxy_source, RP_SRC_ENV);
  assert_int_equal(cfg->allow_source, RP_SRC_FILE);
  rp_config_destroy(cfg);

  /* An explicit "" beats HTTPS_PROXY: no parent at all. */
  cfg = load_ok(A("--parent-proxy="), A("HOME=/home/t", "HTTPS_PROXY=http://envproxy:1"), NULL);
  assert_null(cfg->parent_proxy);
  assert_null(cfg->parent_proxy_host);
  assert_int_equal(cfg->parent_proxy_source, RP_SRC_FLAG);
  rp_config_destroy(cfg);

  /* A bad value in a lower layer is still an error (typos must not hide). */
  load_err(A("--tag-ttl", "1m"), A("HOME=/home/t"), "tag_ttl: soon\n",
           "test.yml:1: key tag_ttl: bad duration 'soon'");
}

static void test_proxy_env(void **state) {
  static const struct {
    const char *env[4];
    const char *want; /* NULL: none */
  } t[] = {
      {{"HTTPS_PROXY=http://a:1", "https_proxy=http://b:2", "HTTP_PROXY=http://c:3", NULL},
       "http://a:1"},
      {{"https_proxy=http://b:2", "HTTP_PROXY=http://c:3", NULL, NULL}, "http://b:2"},
      {{"HTTPS_PROXY=", "https_proxy=http://b:2", NULL, NULL}, "http://b:2"},
      {{"HTTP_PROXY=http://c:3", "http_proxy=http://d:4", NULL, NULL}, "http://c:3"},
      {{"http_proxy=squid:3128", NULL, NULL, NULL}, "http://squid:3128"},
      {{"HTTP_PROXY=http://c:3", "REQUEST_METHOD=GET", NULL, NULL}, NULL},
      {{"HTTPS_PROXY=http://a:1", "REQUEST_METHOD=GET", NULL, NULL}, "http://a:1"},
      {{"HTTPS_PROXY=", "HTTP_PROXY=", NULL, NULL}, NULL},
  };
  struct rp_config *cfg;
  (void)state;
  for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
    const char *env[6] = {"HOME=/home/t", t[i].env[0], t[i].env[1], t[i].env[2], t[i].env[3], NULL};
    cfg = load_ok(NONE, env, NULL);
    if (t[i].want == NULL) {
      assert_null(cfg->parent_proxy);
      assert_int_equal(cfg->parent_proxy_source, RP_SRC_DEFAULT);
    } else {
      assert_string_equal(cfg->parent_proxy, t[i].want);
      assert_int_equal(cfg->parent_proxy_source, RP_SRC_PROXY_ENV);
    }
    rp_config_destroy(cfg);
  }

  cfg = load_ok(NONE, A("HOME=/home/t", "no_proxy=.lower", "NO_PROXY="), NULL);
  assert_string_equal(cfg->no_proxy, ".lower");
  rp_config_destroy(cfg);
  cfg = load_ok(NONE, A("HOME=/home/t", "NO_PROXY=.upper", "no_proxy=.lower"), NULL);
  assert_string_equal(cfg->no_proxy, ".upper");
  rp_config_destroy(cfg);

  /* A bad HTTPS_PROXY is reported under its own name when it is used... */
  load_err(NONE, A("HOME=/home/t", "HTTPS_PROXY=socks5://x:1"), NULL,
           "HTTPS_PROXY: bad proxy URL 'socks5://x:1': unsupported proxy scheme 'socks5'");
  /* ...and ignored when a higher layer sets parent_proxy anyway. */
  cfg = load_ok(A("--parent-proxy", "http://p:1"), A("HOME=/home/t", "HTTPS_PROXY=socks5://x:1"),
                NULL);
  assert_string_equal(cfg->parent_proxy, "http://p:1");
  rp_config_destroy(cfg);
}

static void test_parent_self(void **state) {
  static const struct {
    const char *listen;
    const char *parent;
    int self;
  } t[] = {
      {"127.0.0.1:2080", "http://127.0.0.1:2080", 1},
      {"127.0.0.1:2080", "http://localhost:2080", 1},
      {"127.0.0.1:2080", "127.0.0.1:2080", 1},
      {"[::1]:2080", "http://[::1]:2080", 1},
      {"[::1]:2080", "http://localhost:2080", 1},
      {":2080", "http://127.0.0.1:2080", 1},
      {"[::]:2080", "http://[::1]:2080", 1},
      {"127.0.0.1:2080", "http://127.0.0.1:3128", 0},
      {"127.0.0.1:2080", "http://127.0.0.2:2080", 0},
      {"127.0.0.1:2080", "http://squid.example:2080", 0},
  };
  (void)state;
  for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
    struct rp_config *cfg = NULL;
    char *err = NULL;
    char env[128];
    int rc;
    snprintf(env, sizeof env, "HTTPS_PROXY=%s", t[i].parent);
    /* From the environment: ignored with a warning. */
    cfg = load_ok(A("--listen", t[i].listen), A("HOME=/home/t", env), NULL);
    if (t[i].self) {
      assert_null(cfg->parent_proxy);
      assert_null(cfg->parent_proxy_host);
      assert_int_equal(cfg->warnings.n, 1);
      assert_non_null(strstr(cfg->warnings.v[0], "HTTPS_PROXY="));
      assert_non_null(strstr(cfg->warnings.v[0], "own listener"));
    } else {
      assert_non_null(cfg->parent_proxy);
      assert_int_equal(cfg->warnings.n, 0);
    }
    rp_config_destroy(cfg);
    /* Explicit: refused. */
    rc = load_full(&cfg, &err, A("--listen", t[i].listen, "--parent-proxy", t[i].parent),
                   A("HOME=/home/t"), NONROOT, NULL);
    if (t[i].self) {
      assert_int_equal(rc, RP_ECONFIG);
      assert_non_null(strstr(err, "--parent-proxy: "));
      assert_non_null(strstr(err, "points at regproxy's own listener"));
      free(err);
    } else {
      assert_int_equal(rc, 0);
      rp_config_destroy(cfg);
    }
  }
  /* The transparent listeners count too. */
  load_err(A("--transparent", "127.0.0.1:3129", "--parent-proxy", "localhost:3129"),
           A("HOME=/home/t"), NULL, "own listener 127.0.0.1:3129");
}

static void test_check_listeners(void **state) {
  const struct {
    const char *const *args;
    int ok;
  } t[] = {
      {A("--listen", "127.0.0.1:1"), 1},
      {A("--listen", "[::1]:1"), 1},
      {A("--listen", "127.0.0.5:1"), 1},
      {A("--listen", "0.0.0.0:1"), 0},
      {A("--listen", ":1"), 0},
      {A("--listen", "[::]:1"), 0},
      {A("--transparent", "10.0.0.1:1"), 0},
      {A("--listen", "0.0.0.0:1", "--allow", "127.0.0.1"), 1},
      {A("--listen", "0.0.0.0:1", "--allow", "10.0.0.0/8"), 1},
  };
  (void)state;
  for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
    struct rp_config *cfg = load_ok(t[i].args, A("HOME=/home/t"), NULL);
    char *err = NULL;
    int rc = rp_config_check_listeners(cfg, &err);
    if (t[i].ok) {
      assert_int_equal(rc, 0);
      assert_null(err);
    } else {
      assert_int_equal(rc, RP_ECONFIG);
      assert_non_null(strstr(err, "needs an explicit allow"));
      free(err);
    }
    rp_config_destroy(cfg);
  }
}

/* ---- YAML files -------------------------------------------------------------- */

static void test_yaml_good(void **state) {
  char path[512], arg[600], dir[512], want[700];
  struct rp_config *cfg;
  (void)state;
  data_path(path, sizeof path, "good.yml");
  data_path(dir, sizeof dir, "");
  snprintf(arg, sizeof arg, "--config=%s", path);
  cfg = load_ok(A(arg), A("HOME=/home/t"), NULL);
  assert_string_equal(cfg->config_file, path);
  assert_int_equal(cfg->n_listen, 2);
  assert_string_equal(cfg->listen[1].host, "::1");
  assert_int_equal(cfg->listen[1].port, 3128);
  assert_int_equal(cfg->n_transparent, 1);
  assert_string_equal(cfg->transparent[0].host, "0.0.0.0");
  assert_true(cfg->tproxy);
  assert_true(cfg->mark_set);
  assert_int_equal(cfg->mark, 0x1f);
  assert_string_equal(cfg->cache_dir, "/srv/regproxy/cache");
  assert_int_equal(cfg->cache_max_size, 100ull << 30);
  assert_int_equal(cfg->orphan_fill_max, 512ull << 20);
  assert_string_equal(cfg->ca_dir, "/srv/regproxy/ca");
  assert_string_equal(cfg->mitm, "registry-1.docker.io,.pkg.dev,registry.example.com:5000");
  assert_string_equal(cfg->no_proxy, "localhost,.internal.example,10.0.0.0/8");
  assert_string_equal(cfg->parent_proxy, "http://user:p%40ss@squid.example:3128");
  assert_string_equal(cfg->parent_proxy_userinfo, "user:p@ss");
  assert_int_equal(cfg->parent_proxy_source, RP_SRC_FILE);
  assert_string_equal(cfg->allow, "127.0.0.1,10.0.0.0/8,::1");
  assert_int_equal(cfg->allow_source, RP_SRC_FILE);
  assert_string_equal(cfg->admin_allow, "127.0.0.1,10.0.0.5");
  assert_string_equal(cfg->connect_ports, "443,8443,5000-5010");
  /* Relative paths in the file are relative to the file's directory. */
  snprintf(want, sizeof want, "%shtpasswd", dir);
  assert_string_equal(cfg->proxy_auth_file, want);
  snprintf(want, sizeof want, "%sca.pem", dir);
  assert_string_equal(cfg->upstream_ca, want);
  snprintf(want, sizeof want, "%shome/.docker/config.json", dir);
  assert_string_equal(cfg->registry_auth, want);
  assert_int_equal(cfg->n_connect_to, 2);
  assert_string_equal(cfg->connect_to[0].host, "registry-1.docker.io");
  assert_int_equal(cfg->connect_to[0].port, 443);
  assert_string_equal(cfg->connect_to[0].to_addr, "127.0.0.1");
  assert_int_equal(cfg->connect_to[0].to_port, 8443);
  assert_string_equal(cfg->connect_to[1].host, "");
  assert_string_equal(cfg->connect_to[1].to_addr, "mirror.local");
  assert_int_equal(cfg->connect_to[1].to_port, 0);
  assert_string_equal(cfg->mirror_default, "registry.example.com:5000");
  assert_int_equal(cfg->server_names.n, 2);
  assert_string_equal(cfg->server_names.v[1], "proxy.example");
  assert_int_equal(cfg->tag_ttl_ms, 300000);
  assert_int_equal(cfg->access_ttl_ms, 5400000);
  assert_false(cfg->access_check);
  assert_int_equal(cfg->header_timeout_ms, 10000);
  assert_int_equal(cfg->idle_timeout_ms, 60000);
  assert_int_equal(cfg->tunnel_idle_timeout_ms, 7200000);
  assert_int_equal(cfg->connect_timeout_ms, 2500);
  assert_int_equal(cfg->shutdown_grace_ms, 0);
  assert_int_equal(cfg->max_connections, 512);
  assert_int_equal(cfg->log_level, RP_LOG_DEBUG);
  assert_int_equal(cfg->log_format, RP_LOG_JSON);
  rp_config_destroy(cfg);
}

static void test_yaml_empty_files(void **state) {
  static const char *const files[] = {"empty.yml", "comments_only.yml", "empty_doc.yml"};
  (void)state;
  for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
    char path[512];
    struct rp_config *cfg;
    data_path(path, sizeof path, files[i]);
    cfg = load_ok(A("--config", path), A("HOME=/home/t"), NULL);
    assert_string_equal(cfg->config_file, path);
    assert_int_equal(cfg->n_listen, 1);
    assert_int_equal(cfg->cache_max_size, 20ull << 30);
    rp_config_destroy(cfg);
  }
}

static void test_yaml_bad_files(void **state) {
  static const struct {
    const char *file;
    const char *want; /* after "<dir>/config/" */
  } t[] = {
      {"bad_unknown_key.yml", "bad_unknown_key.yml:2: key cache_max_sise: unknown key"},
      {"bad_dash_key.yml",
       "bad_dash_key.yml:1: key cache-max-size: unknown key (did you mean cache_max_size?)"},
      {"bad_size.yml", "bad_size.yml:3: key cache_max_size: bad size 'lots'"},
      {"bad_duplicate.yml", "bad_duplicate.yml:3: key tag_ttl: duplicate key (first at line 1)"},
      {"bad_seq_for_scalar.yml",
       "bad_seq_for_scalar.yml:1: key cache_dir: wrong node type: expected a scalar, got a "
       "sequence"},
      {"bad_mapping_value.yml",
       "bad_mapping_value.yml:2: key listen: wrong node type: expected a scalar or a sequence, "
       "got a mapping"},
      {"bad_nested_seq.yml",
       "bad_nested_seq.yml:3: key listen: wrong node type: sequence items must be scalars"},
      {"bad_syntax.yml", "bad_syntax.yml:3: bad YAML: found unexpected end of stream"},
      {"bad_alias.yml", "bad_alias.yml:2: key no_proxy: aliases are not supported"},
      {"bad_two_docs.yml", "bad_two_docs.yml:2: only one YAML document is allowed"},
      {"bad_top_sequence.yml",
       "bad_top_sequence.yml:1: the top level must be a mapping of keys to values"},
      {"bad_listen.yml",
       "bad_listen.yml:3: key listen: bad address 'localhost:2081': not an IPv4 address"},
      {"bad_bool.yml", "bad_bool.yml:1: key access_check: bad boolean 'maybe'"},
      {"bad_config_key.yml",
       "bad_config_key.yml:1: key config: only valid on the command line or in the environment"},
      {"bad_missing_file.yml",
       "bad_missing_file.yml:1: key proxy_auth_file: cannot read '/nonexistent/htpasswd': No "
       "such file or directory"},
      {"bad_duration.yml", "bad_duration.yml:1: key idle_timeout: bad duration '30'"},
      {"bad_parent_scheme.yml",
       "bad_parent_scheme.yml:1: key parent_proxy: bad proxy URL 'socks5://127.0.0.1:1080': "
       "unsupported proxy scheme 'socks5'"},
      {"bad_parent_self.yml",
       "bad_parent_self.yml:2: key parent_proxy: http://localhost:2080 points at regproxy's own "
       "listener 127.0.0.1:2080"},
      {"bad_key_not_scalar.yml", "bad_key_not_scalar.yml:1: keys must be scalars"},
      {"bad_acl.yml", "bad_acl.yml:3: key allow: "}, /* the bad item's line */
      {"bad_admin_acl.yml", "bad_admin_acl.yml:2: key admin_allow: "},
      {"bad_no_listener.yml", "bad_no_listener.yml:1: key listen: no listener"},
      {"bad_zero_timeout.yml",
       "bad_zero_timeout.yml:1: key connect_timeout: must be greater than 0"},
  };
  (void)state;
  for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
    char path[512], want[1024];
    data_path(path, sizeof path, t[i].file);
    data_path(want, sizeof want, t[i].want);
    load_err(A("--config", path), A("HOME=/home/t"), NULL, want);
  }
}

static void test_yaml_inline(void **state) {
  static const struct {
    const char *yaml;
    const char *want; /* NULL: loads */
  } t[] = {
      {"mitm: [ghcr.io, quay.io]\n", NULL},
      {"mitm: []\n", NULL},
      {"no_proxy:\n", NULL},
      {"parent_proxy: ~\n", NULL},
      {"log_level: \"debug\"\n", NULL},
      {"access_check: 'off'\n", NULL},
      {"connect_ports: [443, 8443]\n", NULL},
      {"connect_ports: null\n", NULL},
      {"server_names: a.lan,b.lan\n", NULL},
      {"max_connections: 10\n# trailing comment\n", NULL},
      {"max_connections: !!int 10\n", NULL},
      {"{listen: 127.0.0.1:1, tag_ttl: 1m}\n", NULL},
      {"cache_max_size: \"1\\0G\"\n", "test.yml:1: key cache_max_size: value contains a NUL byte"},
      {"tag_ttl: [1m]\n", "test.yml:1: key tag_ttl: wrong node type"},
      {"just a string\n", "test.yml:1: the top level must be a mapping"},
      {"a: b\n c: d\n", "test.yml:2: bad YAML: "},
      {"listen: [127.0.0.1:1\n", "test.yml:2: bad YAML: "},
      {"a: \xc3\x28\n", "test.yml: bad YAML: "},
      {"x: &a 1\n", "test.yml:1: key x: unknown key"},
      {"*a : 1\n", "test.yml:1: "},
      {"mitm: !!binary aGVsbG8=\n", NULL},
      {"max_connections: 0x10\n", "test.yml:1: key max_connections: bad number '0x10'"},
      {"listen: [ \"127.0.0.1:1\", {a: b} ]\n", "sequence items must be scalars"},
      {"? listen\n", "test.yml:1: key listen: no listener"},
  };
  (void)state;
  for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
    if (t[i].want == NULL) {
      struct rp_config *cfg = load_ok(NONE, A("HOME=/home/t"), t[i].yaml);
      rp_config_destroy(cfg);
    } else {
      load_err(NONE, A("HOME=/home/t"), t[i].yaml, t[i].want);
    }
  }
}

static void test_yaml_buffer_entry(void **state) {
  struct rp_config *cfg = NULL;
  char *err = NULL;
  static const char good[] = "listen: 127.0.0.1:9\ncache_dir: /tmp/x\n";
  static const char bad[] = "listen: [\n";
  (void)state;
  assert_int_equal(rp__config_load_yaml_buffer(&cfg, "fuzz", good, strlen(good), &err), 0);
  assert_int_equal(cfg->listen[0].port, 9);
  assert_string_equal(cfg->ca_dir, "/var/lib/regproxy/ca");
  rp_config_destroy(cfg);
  assert_int_equal(rp__config_load_yaml_buffer(&cfg, "fuzz", bad, strlen(bad), &err), RP_ECONFIG);
  assert_null(cfg);
  assert_non_null(strstr(err, "fuzz:"));
  free(err);
  assert_int_equal(rp__config_load_yaml_buffer(&cfg, "fuzz", NULL, 0, &err), 0);
  rp_config_destroy(cfg);
}

/* The shipped conf/regproxy.yml loads as is, and with every commented
 * setting uncommented it yields exactly the built-in defaults. */
static void test_conf_example(void **state) {
  char conf[512], home[512], env_home[600];
  struct rp_config *cfg, *def;
  FILE *fp;
  char *text, *out;
  long len;
  size_t n = 0, lines = 0;
  (void)state;
  snprintf(conf, sizeof conf, "%s/../../conf/regproxy.yml", data_dir());
  data_path(home, sizeof home, "home");
  snprintf(env_home, sizeof env_home, "HOME=%s", home);

  cfg = load_ok(A("--config", conf), A(env_home), NULL);
  rp_config_destroy(cfg);

  fp = fopen(conf, "rb");
  assert_non_null(fp);
  assert_int_equal(fseek(fp, 0, SEEK_END), 0);
  len = ftell(fp);
  rewind(fp);
  text = calloc(1, (size_t)len + 1);
  out = calloc(1, (size_t)len + 1);
  assert_int_equal(fread(text, 1, (size_t)len, fp), (size_t)len);
  fclose(fp);
  for (char *line = text; *line != '\0';) {
    char *nl = strchr(line, '\n');
    size_t ll = nl != NULL ? (size_t)(nl - line) + 1 : strlen(line);
    if (line[0] == '#' && ((line[1] >= 'a' && line[1] <= 'z') || strncmp(line, "#  - ", 5) == 0)) {
      memcpy(out + n, line + 1, ll - 1);
      n += ll - 1;
      lines++;
    } else {
      memcpy(out + n, line, ll);
      n += ll;
    }
    line += ll;
  }
  /* Every one of the 33 keys, the 11 default mitm hosts and the listen item. */
  assert_int_equal(lines, 33 + 11 + 1);

  cfg = load_ok(NONE, A(env_home), out);
  def = load_ok(NONE, A(env_home), NULL);
  assert_int_equal(cfg->n_listen, def->n_listen);
  assert_string_equal(cfg->listen[0].text, def->listen[0].text);
  assert_int_equal(cfg->n_transparent, def->n_transparent);
  assert_int_equal(cfg->tproxy, def->tproxy);
  assert_int_equal(cfg->mark_set, def->mark_set);
  assert_string_equal(cfg->cache_dir, def->cache_dir);
  assert_int_equal(cfg->cache_max_size, def->cache_max_size);
  assert_int_equal(cfg->orphan_fill_max, def->orphan_fill_max);
  assert_string_equal(cfg->ca_dir, def->ca_dir);
  assert_string_equal(cfg->mitm, def->mitm);
  assert_string_equal(cfg->no_proxy, def->no_proxy);
  assert_null(cfg->parent_proxy);
  assert_string_equal(cfg->allow, def->allow);
  assert_string_equal(cfg->admin_allow, def->admin_allow);
  assert_null(cfg->connect_ports);
  assert_null(cfg->proxy_auth_file);
  assert_int_equal(cfg->n_connect_to, 0);
  assert_null(cfg->upstream_ca);
  assert_string_equal(cfg->registry_auth, def->registry_auth);
  assert_string_equal(cfg->mirror_default, def->mirror_default);
  assert_int_equal(cfg->server_names.n, 0);
  assert_int_equal(cfg->tag_ttl_ms, def->tag_ttl_ms);
  assert_int_equal(cfg->access_ttl_ms, def->access_ttl_ms);
  assert_int_equal(cfg->access_check, def->access_check);
  assert_int_equal(cfg->header_timeout_ms, def->header_timeout_ms);
  assert_int_equal(cfg->idle_timeout_ms, def->idle_timeout_ms);
  assert_int_equal(cfg->tunnel_idle_timeout_ms, def->tunnel_idle_timeout_ms);
  assert_int_equal(cfg->connect_timeout_ms, def->connect_timeout_ms);
  assert_int_equal(cfg->shutdown_grace_ms, def->shutdown_grace_ms);
  assert_int_equal(cfg->max_connections, def->max_connections);
  assert_int_equal(cfg->log_level, def->log_level);
  assert_int_equal(cfg->log_format, def->log_format);
  rp_config_destroy(cfg);
  rp_config_destroy(def);
  free(text);
  free(out);
}

/* ---- --help and odds and ends ------------------------------------------------- */

static void test_usage(void **state) {
  static const char *const want[] = {
      "regproxy [run] [options]",
      "regproxy ca init|cert|path",
      "regproxy setup docker",
      "regproxy cache ls|du|verify|gc|rm",
      "regproxy prefetch",
      "--version",
      "--help",
      "--config FILE",
      "--listen ADDR:PORT",
      "--transparent ADDR:PORT",
      "--tproxy",
      "--mark N",
      "--cache-dir DIR",
      "--cache-max-size SIZE",
      "[default: 20G]",
      "--orphan-fill-max SIZE",
      "[default: 2G]",
      "--ca-dir DIR",
      "--mitm LIST",
      "--no-proxy LIST",
      "--parent-proxy URL",
      "--allow LIST",
      "--admin-allow LIST",
      "--connect-ports LIST",
      "--proxy-auth-file FILE",
      "--connect-to HOST:PORT:ADDR:PORT",
      "--upstream-ca FILE",
      "--registry-auth FILE",
      "--mirror-default REGISTRY",
      "[default: docker.io]",
      "--tag-ttl DURATION",
      "--access-ttl DURATION",
      "[default: 10m]",
      "--access-check on|off",
      "--header-timeout DURATION",
      "[default: 30s]",
      "--idle-timeout DURATION",
      "[default: 120s]",
      "--tunnel-idle-timeout DURATION",
      "[default: 1h]",
      "--connect-timeout DURATION",
      "[default: 15s]",
      "--max-connections N",
      "[default: 10000]",
      "--shutdown-grace DURATION",
      "--log-level LEVEL",
      "[default: info]",
      "--log-format FORMAT",
      "[default: logfmt]",
      "--server-names LIST",
      "--force",
      "--unconstrained",
      "--dry-run",
      "--root DIR",
      "[default: 127.0.0.1:2080]",
      "REGPROXY_CACHE_MAX_SIZE",
  };
  char *buf = NULL;
  size_t len = 0;
  FILE *fp = open_memstream(&buf, &len);
  size_t option_lines = 0;
  (void)state;
  assert_non_null(fp);
  rp__config_usage_write(fp);
  fclose(fp);
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
    if (strstr(buf, want[i]) == NULL) {
      fail_msg("--help lacks \"%s\"", want[i]);
    }
  }
  /* One line per option: every "  --" line carries its default. */
  for (char *p = buf; (p = strstr(p, "\n  --")) != NULL; p++) {
    char *nl = strchr(p + 1, '\n');
    assert_non_null(nl);
    *nl = '\0';
    if (strstr(p, "--help") == NULL && strstr(p, "--version") == NULL) {
      if (strstr(p, "[default: ") == NULL) {
        fail_msg("no default on: %s", p + 1);
      }
      option_lines++;
    }
    *nl = '\n';
  }
  assert_int_equal(option_lines, 40);
  free(buf);
}

static void test_destroy_null(void **state) {
  (void)state;
  rp_config_destroy(NULL);
}

static void test_invalid_args(void **state) {
  struct rp_config *cfg = NULL;
  struct rp_listen_addr a;
  struct rp_connect_to c;
  (void)state;
  assert_int_equal(rp_config_load(NULL, 0, NULL, NULL, NULL), RP_EINVAL);
  assert_int_equal(rp_config_parse_listen(NULL, &a), RP_EINVAL);
  assert_int_equal(rp_config_parse_connect_to(NULL, &c), RP_EINVAL);
  assert_int_equal(rp_config_parse_size(NULL, NULL), RP_EPARSE);
  assert_int_equal(rp_config_parse_duration(NULL, NULL), RP_EPARSE);
  /* argc 0/1 and a NULL environment are fine. */
  {
    char *err = NULL;
    char *argv[] = {(char *)"regproxy", (char *)"--config=", NULL};
    assert_int_equal(rp_config_load(&cfg, 2, argv, NULL, &err), 0);
    assert_non_null(cfg->cache_dir);
    rp_config_destroy(cfg);
  }
}

static void test_home_expansion(void **state) {
  struct rp_config *cfg;
  (void)state;
  cfg = load_ok(A("--cache-dir", "~/c", "--ca-dir", "~"), A("HOME=/home/t"), NULL);
  assert_string_equal(cfg->cache_dir, "/home/t/c");
  assert_string_equal(cfg->ca_dir, "/home/t");
  rp_config_destroy(cfg);
  /* A relative path on the command line stays relative to the cwd. */
  cfg = load_ok(A("--cache-dir", "rel/dir"), A("HOME=/home/t"), NULL);
  assert_string_equal(cfg->cache_dir, "rel/dir");
  rp_config_destroy(cfg);
}

/* --upstream-certs-dir: repeatable, each a readable directory; a config
 * file gives a sequence; "" empties the list; the defaults are only the
 * directories that exist, ~/.config/containers/certs.d first for a user. */
static void test_upstream_certs_dir(void **state) {
  struct rp_config *cfg;
  char home[] = "/tmp/rp-test-certsd-XXXXXX", sub[128], env_home[160];
  (void)state;
  assert_non_null(mkdtemp(home));
  snprintf(sub, sizeof sub, "%s/.config", home);
  assert_int_equal(mkdir(sub, 0755), 0);
  snprintf(sub, sizeof sub, "%s/.config/containers", home);
  assert_int_equal(mkdir(sub, 0755), 0);
  snprintf(sub, sizeof sub, "%s/.config/containers/certs.d", home);
  assert_int_equal(mkdir(sub, 0755), 0);
  snprintf(env_home, sizeof env_home, "HOME=%s", home);

  cfg = load_ok(A("--upstream-certs-dir", "/tmp", "--upstream-certs-dir", "~/.config"), A(env_home),
                NULL);
  assert_int_equal(cfg->upstream_certs_dir.n, 2);
  assert_string_equal(cfg->upstream_certs_dir.v[0], "/tmp");
  assert_true(strstr(cfg->upstream_certs_dir.v[1], "/.config") != NULL);
  assert_false(cfg->upstream_certs_dir_default);
  rp_config_destroy(cfg);

  cfg = load_ok(NULL, A(env_home), "upstream_certs_dir:\n  - /tmp\n");
  assert_int_equal(cfg->upstream_certs_dir.n, 1);
  assert_string_equal(cfg->upstream_certs_dir.v[0], "/tmp");
  rp_config_destroy(cfg);

  cfg = load_ok(A("--upstream-certs-dir", ""), A(env_home), NULL);
  assert_int_equal(cfg->upstream_certs_dir.n, 0);
  rp_config_destroy(cfg);

  /* Defaults for a user: the user's podman directory first. */
  cfg = load_ok(NULL, A(env_home), NULL);
  assert_true(cfg->upstream_certs_dir_default);
  assert_true(cfg->upstream_certs_dir.n >= 1);
  assert_string_equal(cfg->upstream_certs_dir.v[0], sub);
  rp_config_destroy(cfg);

  load_err(A("--upstream-certs-dir", "/nonexistent/certs.d"), A(env_home), NULL,
           "--upstream-certs-dir: cannot read directory '/nonexistent/certs.d'");
  load_err(A("--upstream-certs-dir", "/etc/passwd"), A(env_home), NULL, "Not a directory");
  rmdir(sub);
  snprintf(sub, sizeof sub, "%s/.config/containers", home);
  rmdir(sub);
  snprintf(sub, sizeof sub, "%s/.config", home);
  rmdir(sub);
  rmdir(home);
}

static void test_error_shows_sanitized_value(void **state) {
  (void)state;
  load_err(A("--cache-max-size", "1\n2"), A("HOME=/home/t"), NULL,
           "--cache-max-size: bad size '1?2'");
  load_err(
      A("--mirror-default",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/"),
      A("HOME=/home/t"), NULL, "aaaaaaaa...'");
}

/* upstream_mirrors (contract §3 "Upstream mirrors"): REGISTRY=URL[,URL…], the
 * flag named for one item and repeatable, the variable's items split by ';',
 * YAML a list; URLs checked and normalised. */
static void test_upstream_mirrors(void **state) {
  struct rp_config *cfg;
  (void)state;
  cfg = load_ok(A("--upstream-mirror", "Docker.IO=http://site.lan:5000/, https://[::1]:8443/m",
                  "--upstream-mirror", "ghcr.io=http://10.0.0.7"),
                NONE, NULL);
  assert_int_equal(cfg->upstream_mirrors.n, 2);
  assert_string_equal(cfg->upstream_mirrors.v[0],
                      "docker.io=http://site.lan:5000,https://[::1]:8443/m");
  assert_string_equal(cfg->upstream_mirrors.v[1], "ghcr.io=http://10.0.0.7");
  rp_config_destroy(cfg);
  cfg = load_ok(
      NONE, A("REGPROXY_UPSTREAM_MIRRORS=docker.io=http://a:1,http://b:2;quay.io=http://c"), NULL);
  assert_int_equal(cfg->upstream_mirrors.n, 2);
  assert_string_equal(cfg->upstream_mirrors.v[0], "docker.io=http://a:1,http://b:2");
  assert_string_equal(cfg->upstream_mirrors.v[1], "quay.io=http://c");
  rp_config_destroy(cfg);
  cfg = load_ok(NONE, NONE, "upstream_mirrors:\n  - docker.io=http://site:5000\n");
  assert_int_equal(cfg->upstream_mirrors.n, 1);
  assert_string_equal(cfg->upstream_mirrors.v[0], "docker.io=http://site:5000");
  rp_config_destroy(cfg);
  load_err(A("--upstream-mirror", "docker.io"), NONE, NULL, "expected REGISTRY=URL");
  load_err(A("--upstream-mirror", "docker.io=ftp://x"), NONE, NULL, "http:// or https://");
  load_err(A("--upstream-mirror", "docker.io=http://u:p@x"), NONE, NULL, "no user");
  load_err(A("--upstream-mirror", "docker.io=http://x/?ns=y"), NONE, NULL, "no user, query");
  load_err(A("--upstream-mirror", "docker.io=http://x:99999"), NONE, NULL, "bad port");
  load_err(A("--upstream-mirror", "docker.io="), NONE, NULL, "no mirror URL");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_parse_size),
      cmocka_unit_test(test_parse_duration),
      cmocka_unit_test(test_parse_listen),
      cmocka_unit_test(test_parse_connect_to),
      cmocka_unit_test(test_parent_proxy_urls),
      cmocka_unit_test(test_defaults_user),
      cmocka_unit_test(test_defaults_xdg),
      cmocka_unit_test(test_defaults_root),
      cmocka_unit_test(test_defaults_registry_auth),
      cmocka_unit_test(test_flags),
      cmocka_unit_test(test_flag_errors),
      cmocka_unit_test(test_positional),
      cmocka_unit_test(test_help_version),
      cmocka_unit_test(test_repeatable),
      cmocka_unit_test(test_env),
      cmocka_unit_test(test_config_file_selection),
      cmocka_unit_test(test_precedence),
      cmocka_unit_test(test_proxy_env),
      cmocka_unit_test(test_parent_self),
      cmocka_unit_test(test_check_listeners),
      cmocka_unit_test(test_yaml_good),
      cmocka_unit_test(test_yaml_empty_files),
      cmocka_unit_test(test_yaml_bad_files),
      cmocka_unit_test(test_yaml_inline),
      cmocka_unit_test(test_yaml_buffer_entry),
      cmocka_unit_test(test_conf_example),
      cmocka_unit_test(test_usage),
      cmocka_unit_test(test_destroy_null),
      cmocka_unit_test(test_invalid_args),
      cmocka_unit_test(test_home_expansion),
      cmocka_unit_test(test_error_shows_sanitized_value),
      cmocka_unit_test(test_upstream_certs_dir),
      cmocka_unit_test(test_upstream_mirrors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
