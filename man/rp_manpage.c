/* Build-time tool: copy the hand-written man page source (argv[1]) to
 * stdout, replacing the line "@OPTIONS@" with the OPTIONS section printed
 * from the option table and "@VERSION@" with the version, so that --help and
 * the man page come from one table. */
#include <stdio.h>
#include <string.h>

#include "config/internal.h"

int main(int argc, char **argv) {
  char line[4096];
  FILE *in;
  int rc = 0;

  if (argc != 2) {
    fprintf(stderr, "usage: rp_manpage TEMPLATE.scd > PAGE.scd\n");
    return 2;
  }
  in = fopen(argv[1], "r");
  if (in == NULL) {
    perror(argv[1]);
    return 1;
  }
  while (fgets(line, sizeof line, in) != NULL) {
    char *v = strstr(line, "@VERSION@");
    if (strcmp(line, "@OPTIONS@\n") == 0) {
      rp__config_scdoc_write(stdout);
    } else if (v != NULL) {
      fprintf(stdout, "%.*s%s%s", (int)(v - line), line, RP_VERSION, v + strlen("@VERSION@"));
    } else {
      fputs(line, stdout);
    }
  }
  if (ferror(in) || fflush(stdout) != 0 || ferror(stdout)) {
    perror("rp_manpage");
    rc = 1;
  }
  fclose(in);
  return rc;
}
