/* libFuzzer: WWW-Authenticate challenge parsing (registry answers are peer input). */
#include <stddef.h>
#include <stdint.h>

#include "regproxy/auth.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  struct rp_auth_challenge *list = NULL;
  size_t n = 0;
  if (rp_auth_challenges_parse((const char *)data, size, &list, &n) == 0) {
    (void)rp_auth_challenge_pick(list, n);
    rp_auth_challenges_free(list, n);
  }
  return 0;
}
