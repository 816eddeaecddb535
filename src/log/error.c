#include "regproxy/error.h"

#include <uv.h>

const char *rp_strerror(int err) {
  /* uv_strerror allocates (and leaks) a message for codes it does not know,
   * 0 included; the _r form writes into our buffer instead. */
  static _Thread_local char unknown[80];

  switch (err) {
  case 0: return "success";
#define XX(name, code, msg)                                                                        \
  case RP_E##name: return msg;
    RP_ERRNO_MAP(XX)
#undef XX
  default: return uv_strerror_r(err, unknown, sizeof unknown);
  }
}
