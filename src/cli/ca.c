/* `regproxy ca init|cert|path` (contract §4): the local CA from the command line. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "regproxy/cli.h"
#include "regproxy/config.h"
#include "regproxy/error.h"
#include "regproxy/tls.h"

#define CA_USAGE                                                                                   \
  "usage: regproxy ca init [--force] [--unconstrained] | ca cert | ca path [--ca-dir DIR]"

#define TRUST_AGAIN                                                                                \
  "clients that trusted the old CA must trust this one instead: `regproxy setup "                  \
  "docker|containerd|podman`, or copy it into the system store and run update-ca-certificates"

static int fail(char *err, int rc) {
  fprintf(stderr, "regproxy: %s\n", err != NULL ? err : rp_strerror(rc));
  free(err);
  return rc == RP_ECONFIG ? 2 : 1;
}

/* `ca init`: create the CA when missing (or, with --force, anyway) for the
 * mitm list, and check that an existing one can sign for that list. */
static int init(struct rp_config *cfg, struct rp_ca **out) {
  struct rp_ca_opts opts = {.create = true, .replace = cfg->ca_force};
  char *err = NULL;
  int rc;

  opts.names = cfg->ca_unconstrained ? NULL : cfg->ca_names;
  rc = rp_ca_open(cfg->ca_dir, &opts, out, &err);
  if (rc != 0)
    return fail(err, rc);
  if (rp_ca_created(*out)) {
    fprintf(stderr, "regproxy: created a new CA in %s, %s\n", cfg->ca_dir,
            opts.names != NULL ? "limited to the mitm registries (name constraints)"
                               : "which may sign for any host (no name constraints)");
    if (cfg->ca_force)
      fprintf(stderr, "regproxy: " TRUST_AGAIN "\n");
    return 0;
  }
  if (cfg->ca_unconstrained && rp_ca_constrained(*out)) {
    fprintf(stderr,
            "regproxy: the CA in %s exists and has name constraints; --unconstrained applies to "
            "a new CA: add --force to replace it\n",
            cfg->ca_dir);
    return 2;
  }
  rc = rp_ca_check_names(*out, cfg->mitm_list, &err);
  if (rc != 0)
    return fail(err, rc);
  return 0;
}

int rp_cli_ca(struct rp_config *cfg) {
  struct rp_ca *ca = NULL;
  struct rp_ca_opts opts = {.create = false};
  const char *verb = cfg->args.n >= 2 ? cfg->args.v[1] : NULL;
  const char *pem;
  char *err = NULL;
  size_t len = 0;
  bool written;
  int rc;

  if (verb == NULL) {
    fprintf(stderr, "regproxy: ca: missing verb\n" CA_USAGE "\n");
    return 2;
  }
  if (strcmp(verb, "init") != 0 && strcmp(verb, "cert") != 0 && strcmp(verb, "path") != 0) {
    fprintf(stderr, "regproxy: ca: unknown verb '%s'\n" CA_USAGE "\n", verb);
    return 2;
  }
  if (cfg->args.n > 2) {
    fprintf(stderr, "regproxy: ca %s: unexpected argument '%s'\n" CA_USAGE "\n", verb,
            cfg->args.v[2]);
    return 2;
  }
  if (strcmp(verb, "init") == 0) {
    rc = init(cfg, &ca);
  } else if (cfg->ca_force || cfg->ca_unconstrained) {
    fprintf(stderr, "regproxy: ca %s: --force and --unconstrained go with ca init\n" CA_USAGE "\n",
            verb);
    rc = 2;
  } else {
    rc = rp_ca_open(cfg->ca_dir, &opts, &ca, &err);
    if (rc != 0)
      rc = fail(err, rc);
  }
  if (rc != 0) {
    rp_ca_destroy(ca);
    return rc;
  }
  if (strcmp(verb, "cert") == 0) {
    pem = rp_ca_cert_pem(ca, &len);
    written = fwrite(pem, 1, len, stdout) == len;
  } else {
    written = printf("%s\n", rp_ca_cert_path(ca)) >= 0;
  }
  if (fflush(stdout) != 0 || !written) {
    fprintf(stderr, "regproxy: cannot write to stdout\n");
    rc = 1;
  }
  rp_ca_destroy(ca);
  return rc;
}
