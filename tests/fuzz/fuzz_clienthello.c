/* rp_client_hello_parse on arbitrary peeked bytes: no out-of-bounds read,
 * and what it reports holds (the records it counts are within the input,
 * the name is a lower-case NUL-terminated host). */
#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "regproxy/clienthello.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  struct rp_client_hello ch;
  enum rp_ch_status st = rp_client_hello_parse(data, size, &ch);

  if (st == RP_CH_OK) {
    size_t n = strnlen(ch.sni, sizeof(ch.sni));
    assert(ch.record_bytes >= 5 + 4 && ch.record_bytes <= size);
    assert(n < sizeof(ch.sni));
    assert(ch.has_sni == (n > 0));
    for (size_t i = 0; i < n; i++)
      assert(!(ch.sni[i] >= 'A' && ch.sni[i] <= 'Z'));
    /* Stateless: the same bytes, the same answer; a prefix never says OK
     * about bytes it has not seen. */
    assert(rp_client_hello_parse(data, ch.record_bytes, &ch) == RP_CH_OK);
    assert(rp_client_hello_parse(data, ch.record_bytes - 1, &ch) != RP_CH_OK);
  }
  return 0;
}
