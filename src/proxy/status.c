/* What the admin endpoints (src/admin) show of the proxy, handed to them as
 * struct rp_admin: the cache, the CA, admin_allow and server_names, and the
 * two renderers. /status.json (contract §5, the status page's numbers): the time,
 * the cache's totals, where the proxy listens and the tunnelled bytes are the
 * proxy's; everything about registry traffic is the registry service's
 * (rp_registry_status_json), asked for at render time. /metrics: the proxy's
 * counters with the cache's and the registry service's numbers
 * (rp_metrics_render), then the registry's pull-limit series. */
#include <arpa/inet.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "internal.h"
#include "regproxy/admin.h"
#include "regproxy/cache.h"
#include "regproxy/metrics.h"
#include "regproxy/tls.h"

/* The first proxy listener as bound ("0.0.0.0:2080" stays a wildcard: the
 * page then uses the address the browser reached). "" when there is none. */
static void listen_addr(const struct rp_server *srv, char *out, size_t n) {
  struct sockaddr_storage ss;
  char ip[INET6_ADDRSTRLEN] = "";
  int len = sizeof(ss);

  out[0] = '\0';
  for (size_t i = 0; i < srv->nlisteners; i++) {
    if (srv->listeners[i].transparent || srv->listeners[i].closed)
      continue;
    memset(&ss, 0, sizeof(ss));
    if (uv_tcp_getsockname(&srv->listeners[i].tcp, (struct sockaddr *)&ss, &len) != 0)
      return;
    if (ss.ss_family == AF_INET6) {
      const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
      uv_ip6_name(a, ip, sizeof(ip));
      snprintf(out, n, "[%s]:%u", ip, ntohs(a->sin6_port));
    } else {
      const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
      uv_ip4_name(a, ip, sizeof(ip));
      snprintf(out, n, "%s:%u", ip, ntohs(a->sin_port));
    }
    return;
  }
}

static char *status_json(void *data, size_t *len) {
  struct rp_server *srv = data;
  struct rp_cache_stats cs;
  char listen[INET6_ADDRSTRLEN + 16];
  json_t *j;
  char *text;

  memset(&cs, 0, sizeof(cs));
  if (srv->cache != NULL)
    rp_cache_stats(srv->cache, &cs);
  j = json_pack("{s:I, s:{s:I, s:I, s:I, s:I, s:I, s:I}}", "time", (json_int_t)time(NULL), "cache",
                "size_bytes", (json_int_t)cs.size_bytes, "objects", (json_int_t)cs.objects,
                "max_size", (json_int_t)cs.max_size, "evictions", (json_int_t)cs.evictions,
                "digest_mismatches", (json_int_t)cs.digest_mismatches, "fills_in_flight",
                (json_int_t)cs.fills_in_flight);
  if (j == NULL)
    return NULL;
  listen_addr(srv, listen, sizeof(listen));
  json_object_set_new(j, "listen", json_string(listen));
  rp_registry_status_json(srv->registry, j);
  json_object_set_new(json_object_get(j, "bytes"), "tunnelled",
                      json_integer((json_int_t)rp_metrics.bytes[1][RP_SRC_BYTES_TUNNEL]));
  text = json_dumps(j, JSON_COMPACT);
  json_decref(j);
  if (text != NULL)
    *len = strlen(text);
  return text;
}

static void metrics_text(void *data, struct rp_sbuf *b) {
  struct rp_server *srv = data;
  struct rp_registry_counters rc;

  rp_registry_counters(srv->registry, &rc);
  rp_metrics_render(b, srv->cache, &rc);
  rp_registry_metrics(srv->registry, b);
}

void rp__status_admin(struct rp_server *srv, struct rp_admin *out) {
  const struct rp_config *cfg = srv->cfg;

  memset(out, 0, sizeof(*out));
  out->cache = srv->cache;
  if (srv->ca != NULL)
    out->ca_pem = rp_ca_cert_pem(srv->ca, &out->ca_pem_len);
  out->allow = cfg->admin_acl;
  out->server_names = cfg->server_names.v;
  out->n_server_names = cfg->server_names.n;
  out->metrics = metrics_text;
  out->status_json = status_json;
  out->data = srv;
}
