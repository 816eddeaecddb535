/* The service manager's notification protocol (sd_notify(3)): readiness,
 * reloads and stops for a Type=notify unit. Without libsystemd at build time
 * this is a no-op and the generated unit is Type=simple. */
#include <stdio.h>

#include "regproxy/util.h"

#ifdef RP_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

void rp_notify(const char *state) {
#ifdef RP_HAVE_SYSTEMD
  /* Keep NOTIFY_SOCKET: READY=1 follows every reload, not only start-up.
   * Without it (not under systemd) sd_notify returns 0 and sends nothing;
   * a failure to send is not worth stopping a proxy for. */
  (void)sd_notify(0, state);
#else
  (void)state;
#endif
}
