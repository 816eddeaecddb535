/* regproxy: parse the command line, wire the modules, run the loop. */
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "regproxy/cli.h"
#include "regproxy/config.h"
#include "regproxy/error.h"
#include "regproxy/log.h"
#include "regproxy/net.h"
#include "regproxy/proxy.h"

extern char **environ;

static int run(int argc, char **argv, struct rp_config *cfg) {
  uv_loop_t *loop = uv_default_loop();
  struct rp_server *srv = NULL;
  char *err = NULL;
  int rc;

  rc = rp_server_create(&srv, loop, cfg, argc, argv, environ, &err);
  if (rc == 0) {
    rp_server_notify_service(srv);
    rc = rp_server_start(srv, &err);
  }
  if (rc != 0) {
    fprintf(stderr, "regproxy: %s\n", err != NULL ? err : rp_strerror(rc));
    free(err);
    rp_server_destroy(srv);
    return rc == RP_ECONFIG ? 2 : 1;
  }
  uv_run(loop, UV_RUN_DEFAULT);
  rp_log_info("stopped");
  rp_server_destroy(srv);
  uv_loop_close(loop);
  rp_buf_pool_drain();
  return 0;
}

int main(int argc, char **argv) {
  struct rp_config *cfg = NULL;
  char *err = NULL;
  const char *cmd;

  signal(SIGPIPE, SIG_IGN);
  /* Buffers of 128 KiB and up (cache chunks, libcurl's receive buffers) come
   * straight from mmap and go back on free. glibc otherwise raises its mmap
   * threshold after the first such free and serves them from the heap, where
   * a load's worth of them stays: RSS never came back after a load. */
  mallopt(M_MMAP_THRESHOLD, 128 * 1024);
  mallopt(M_TRIM_THRESHOLD, 1024 * 1024);
  if (rp_config_load(&cfg, argc, argv, environ, &err) != 0) {
    fprintf(stderr, "regproxy: %s\n(see regproxy --help)\n", err != NULL ? err : "bad usage");
    free(err);
    return 2;
  }
  if (cfg->want_help) {
    rp_config_usage();
    rp_config_destroy(cfg);
    return 0;
  }
  if (cfg->want_version) {
    printf("regproxy %s\n", RP_VERSION);
    rp_config_destroy(cfg);
    return 0;
  }
  rp_log_setup(cfg->log_level, cfg->log_format);
  for (size_t i = 0; i < cfg->warnings.n; i++)
    rp_log_warn("%s", cfg->warnings.v[i]);
  cmd = cfg->args.n > 0 ? cfg->args.v[0] : "run";
  if (strcmp(cmd, "run") == 0)
    return run(argc, argv, cfg);
  if (strcmp(cmd, "ca") == 0) {
    int rc = rp_cli_ca(cfg);
    rp_config_destroy(cfg);
    return rc;
  }
  if (strcmp(cmd, "cache") == 0) {
    int rc = rp_cli_cache(cfg);
    rp_config_destroy(cfg);
    return rc;
  }
  if (strcmp(cmd, "prefetch") == 0) {
    int rc = rp_cli_prefetch(cfg, argc, argv, environ);
    rp_config_destroy(cfg);
    return rc;
  }
  if (strcmp(cmd, "setup") == 0) {
    int rc = rp_cli_setup(cfg);
    rp_config_destroy(cfg);
    return rc;
  }
  fprintf(stderr, "regproxy: unknown command '%s' (see regproxy --help)\n", cmd);
  rp_config_destroy(cfg);
  return 2;
}
