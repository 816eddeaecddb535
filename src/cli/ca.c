/* `regproxy ca init|cert|path` (SPEC §4): the local CA from the command line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "regproxy/cli.h"
#include "regproxy/config.h"
#include "regproxy/error.h"
#include "regproxy/tls.h"

#define CA_USAGE "usage: regproxy ca init|cert|path [--ca-dir DIR]"

int rp_cli_ca(struct rp_config *cfg) {
  struct rp_ca *ca = NULL;
  const char *verb = cfg->args.n >= 2 ? cfg->args.v[1] : NULL;
  const char *pem;
  char *err = NULL;
  size_t len = 0;
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
  rc = rp_ca_open(cfg->ca_dir, strcmp(verb, "init") == 0, &ca, &err);
  if (rc != 0) {
    fprintf(stderr, "regproxy: %s\n", err != NULL ? err : rp_strerror(rc));
    free(err);
    return rc == RP_ECONFIG ? 2 : 1;
  }
  if (strcmp(verb, "cert") == 0) {
    pem = rp_ca_cert_pem(ca, &len);
    rc = fwrite(pem, 1, len, stdout) == len ? 0 : 1;
  } else {
    if (rp_ca_created(ca))
      fprintf(stderr, "regproxy: created a new CA in %s\n", cfg->ca_dir);
    rc = printf("%s\n", rp_ca_cert_path(ca)) < 0 ? 1 : 0;
  }
  if (fflush(stdout) != 0)
    rc = 1;
  if (rc != 0)
    fprintf(stderr, "regproxy: cannot write to stdout\n");
  rp_ca_destroy(ca);
  return rc;
}
