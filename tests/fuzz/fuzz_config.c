/* libFuzzer target: the input is a YAML config file, loaded through the same
 * path as --config (defaults, then the file, then validation) with an empty
 * environment. The value parsers also get the input as one string.
 * Seed corpus: tests/data/config/ and conf/regproxy.yml. */

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config/internal.h"
#include "regproxy/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  struct rp_config *cfg = NULL;
  struct rp_listen_addr listen;
  struct rp_connect_to ct;
  char *err = NULL;
  char *s;
  uint64_t v;

  if (size > RP_CONFIG_MAX_FILE) {
    return 0;
  }
  if (rp__config_load_yaml_buffer(&cfg, "fuzz.yml", data, size, &err) == 0) {
    rp_config_destroy(cfg);
  }
  free(err);

  s = malloc(size + 1);
  if (s == NULL) {
    return 0;
  }
  memcpy(s, data, size);
  s[size] = '\0';
  (void)rp_config_parse_size(s, &v);
  (void)rp_config_parse_duration(s, &v);
  if (rp_config_parse_listen(s, &listen) == 0) {
    free(listen.text);
  }
  if (rp_config_parse_connect_to(s, &ct) == 0) {
    free(ct.host);
    free(ct.to_addr);
  }
  free(s);
  return 0;
}
