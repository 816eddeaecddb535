/* The transparent front (contract §1 "Gateway", §2 way in `transparent`): a
 * --transparent listener receives connections that nft REDIRECT or TPROXY
 * turned towards it. Their original destination comes from conntrack
 * (SO_ORIGINAL_DST, IP6T_SO_ORIGINAL_DST) or, with --tproxy, is the accepted
 * socket's own address. The first bytes are read (and kept) to tell:
 *   - TLS (0x16): the ClientHello, reassembled across segments and records
 *     (clienthello.c), routed on its SNI with rp_route_decide exactly like a
 *     CONNECT: `mitm` hosts are terminated by the MITM front with the bytes
 *     already read; everything else, and a ClientHello without a usable name
 *     (none, an IP literal, ECH), is tunnelled untouched;
 *   - plain HTTP: the ordinary request path, with the Host as destination name
 *     (rp__transparent_target);
 *   - anything else, or nothing within PEEK_TIMEOUT_MS: a blind tunnel.
 * Every outgoing connection goes to the original destination
 * (rp__conn_dial_req, rp__upreq_build), never to a fresh DNS answer. */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"
#include "regproxy/clienthello.h"
#include "regproxy/error.h"
#include "regproxy/log.h"
#include "regproxy/rules.h"

#ifndef SO_ORIGINAL_DST
#define SO_ORIGINAL_DST 80 /* linux/netfilter_ipv4.h */
#endif
#ifndef IP6T_SO_ORIGINAL_DST
#define IP6T_SO_ORIGINAL_DST 80 /* linux/netfilter_ipv6/ip6_tables.h */
#endif
#ifndef IP_TRANSPARENT
#define IP_TRANSPARENT 19
#endif
#ifndef IPV6_TRANSPARENT
#define IPV6_TRANSPARENT 75
#endif

/* Clients that speak first (TLS, HTTP) send at once; a server-first protocol
 * (SSH, SMTP) waits for the origin's banner, so the wait is short. */
#define PEEK_TIMEOUT_MS 1000
/* The longest method token waited for before calling the bytes "not HTTP". */
#define METHOD_MAX 20

/* ---- addresses ---- */

static bool addr_equal(const struct sockaddr_storage *a, const struct sockaddr_storage *b,
                       bool with_port) {
  if (a->ss_family != b->ss_family)
    return false;
  if (a->ss_family == AF_INET) {
    const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
    return x->sin_addr.s_addr == y->sin_addr.s_addr && (!with_port || x->sin_port == y->sin_port);
  }
  if (a->ss_family == AF_INET6) {
    const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
    return memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0 &&
           (!with_port || x->sin6_port == y->sin6_port);
  }
  return false;
}

static uint16_t addr_port(const struct sockaddr_storage *ss) {
  if (ss->ss_family == AF_INET6)
    return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
  return ntohs(((const struct sockaddr_in *)ss)->sin_port);
}

static bool addr_wildcard(const struct sockaddr_storage *ss) {
  if (ss->ss_family == AF_INET6)
    return IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)ss)->sin6_addr);
  return ((const struct sockaddr_in *)ss)->sin_addr.s_addr == htonl(INADDR_ANY);
}

/* Where the client meant to go. REDIRECT: conntrack's original tuple (no
 * entry means nothing was redirected); TPROXY: the socket's own address. */
static int original_dst(uv_tcp_t *tcp, bool tproxy, struct sockaddr_storage *dst,
                        struct sockaddr_storage *local, const char **why) {
  uv_os_fd_t fd;
  socklen_t len = sizeof(*dst);
  int n = sizeof(*local), rc;

  memset(dst, 0, sizeof(*dst));
  memset(local, 0, sizeof(*local));
  rc = uv_tcp_getsockname(tcp, (struct sockaddr *)local, &n);
  if (rc == 0)
    rc = uv_fileno((uv_handle_t *)tcp, &fd);
  if (rc != 0) {
    *why = "getsockname failed";
    return rc;
  }
  if (tproxy) {
    memcpy(dst, local, sizeof(*dst));
    return 0;
  }
  if (local->ss_family == AF_INET6)
    rc = getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, dst, &len);
  else
    rc = getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, dst, &len);
  if (rc != 0) {
    *why = errno == ENOENT ? "no original destination (the connection was not redirected)"
                           : "SO_ORIGINAL_DST failed";
    return -errno;
  }
  return 0;
}

/* The original destination is regproxy itself: a client that connected to
 * the transparent port directly, or a rule that redirects twice. Dialing it
 * would come straight back. */
static bool dst_is_listener(const struct rp_server *srv, const struct sockaddr_storage *dst,
                            const struct sockaddr_storage *local) {
  if (!srv->cfg->tproxy && addr_equal(dst, local, true))
    return true;
  for (size_t i = 0; i < srv->nlisteners; i++) {
    struct sockaddr_storage la;
    int n = sizeof(la);
    if (srv->listeners[i].closed ||
        uv_tcp_getsockname(&srv->listeners[i].tcp, (struct sockaddr *)&la, &n) != 0)
      continue;
    if (la.ss_family == dst->ss_family && addr_port(&la) == addr_port(dst) &&
        (addr_wildcard(&la) || addr_equal(&la, dst, false)))
      return true;
  }
  return false;
}

/* The SYN carried regproxy's own --mark: one of its outgoing connections (a
 * tunnel, a forward, or the upstream engine's) was redirected back to it.
 * The accepted socket has the SYN's mark only with net.ipv4.tcp_fwmark_accept
 * (setup gateway's sysctl file sets it); without it this never matches and
 * own_tunnel below catches the tunnels. */
static bool carries_own_mark(const struct rp_server *srv, uv_tcp_t *tcp) {
  uint32_t mark = 0;
  socklen_t len = sizeof(mark);
  uv_os_fd_t fd;

  if (!srv->cfg->mark_set || srv->cfg->mark == 0 || uv_fileno((uv_handle_t *)tcp, &fd) != 0)
    return false;
  return getsockopt(fd, SOL_SOCKET, SO_MARK, &mark, &len) == 0 && mark == srv->cfg->mark;
}

/* regproxy's own outgoing tunnel came back to it (an OUTPUT-chain redirect
 * without the --mark exemption): the client is our own upstream socket. The
 * redirected connection can only carry bytes once that tunnel is up, so this
 * is asked when the first bytes (or the peek timeout) arrive. */
static struct rp_conn *own_tunnel(const struct rp_conn *c) {
  for (struct rp_conn *x = c->srv->conns; x != NULL; x = x->next)
    if (x != c && x->transparent && x->upstream != NULL && addr_equal(&x->up_local, &c->peer, true))
      return x;
  return NULL;
}

/* ---- the decision ---- */

static void refuse(struct rp_conn *c, int status, const char *reason) {
  c->log.status = status;
  snprintf(c->log.reason, sizeof(c->log.reason), "%s", reason);
  rp__conn_close(c); /* logged there: req_active */
}

/* Relay everything read so far and the rest to the original destination
 * (name: the SNI that routed it, for the log and a parent's CONNECT). */
static void tunnel(struct rp_conn *c, const char *name, const char *why) {
  struct rp_reqlog *l = &c->log;

  if (name == NULL) {
    /* Nothing to route on: the address itself, direct. */
    memset(&c->route, 0, sizeof(c->route));
    c->route.route = RP_ROUTE_TUNNEL;
    c->route.name = "tunnel";
  }
  l->route = c->route.name;
  snprintf(l->host, sizeof(l->host), "%s", name != NULL ? name : c->dst_ip);
  l->port = c->dst_port;
  if (why != NULL)
    snprintf(l->reason, sizeof(l->reason), "%s", why);
  memset(&c->target, 0, sizeof(c->target));
  c->target.form = RP_TARGET_AUTHORITY;
  snprintf(c->target.host, sizeof(c->target.host), "%s", name != NULL ? name : c->dst_ip);
  c->target.host_is_ip6 = name == NULL && strchr(c->dst_ip, ':') != NULL;
  c->target.port = c->dst_port;
  rp__conn_set_timer(c, RP_TM_IDLE, c->srv->cfg->idle_timeout_ms);
  rp__tunnel_connect(c);
}

static void route_tls(struct rp_conn *c, const struct rp_client_hello *ch) {
  struct rp_route_cfg cfg;
  struct rp_route_in in;
  char *block;

  if (!ch->has_sni || ch->sni_is_ip || ch->ech) {
    tunnel(c, NULL,
           !ch->has_sni    ? "no SNI"
           : ch->sni_is_ip ? "IP literal as SNI"
                           : "encrypted ClientHello");
    return;
  }
  memset(&in, 0, sizeof(in));
  in.way = RP_ROUTE_CONNECT;
  in.client_allowed = !c->denied;
  in.host = ch->sni;
  in.port = c->dst_port;
  rp__server_route_cfg(c->srv, &cfg);
  c->route = rp_route_decide(&in, &cfg);
  snprintf(c->log.host, sizeof(c->log.host), "%s", ch->sni);
  switch (c->route.route) {
  case RP_ROUTE_MITM:
    if (c->srv->leaves == NULL) {
      c->route.name = "tunnel";
      tunnel(c, ch->sni, "MITM not available");
      return;
    }
    /* The connection is not logged itself: each request inside is, with
     * via=transparent and its dst, as after a CONNECT. The ClientHello bytes
     * go to the TLS layer as they are. */
    c->req_active = 0;
    block = c->in->block;
    c->in->block = NULL;
    rp__bref_put(c->in);
    c->in = NULL;
    rp__mitm_start_tls(c, ch->sni, c->dst_port, block, c->in_len);
    return;
  case RP_ROUTE_TUNNEL: tunnel(c, ch->sni, NULL); return;
  default:
    c->log.route = c->route.name;
    refuse(c, c->route.status ? c->route.status : 403, c->route.reason);
    return;
  }
}

/* A request line's method: NEED_MORE while what was read could still be
 * one followed by a space. */
static enum rp_ch_status looks_http(const char *p, size_t n) {
  for (size_t i = 0; i < n && i <= METHOD_MAX; i++) {
    if (p[i] == ' ')
      return i > 0 ? RP_CH_OK : RP_CH_INVALID;
    if (p[i] < 'A' || p[i] > 'Z')
      return RP_CH_INVALID;
  }
  return n <= METHOD_MAX ? RP_CH_NEED_MORE : RP_CH_INVALID;
}

static void start_http(struct rp_conn *c) {
  /* The ordinary request path from here; each request is logged itself. */
  c->req_active = 0;
  rp__conn_stop_client(c);
  rp__conn_set_client(c, c->client); /* the request reader again */
  rp__conn_go_state(c, RP_CONN_HEAD);
  rp__conn_set_timer(c, RP_TM_HEADER, c->srv->cfg->header_timeout_ms);
  rp__conn_resume_input(c);
}

static void decide(struct rp_conn *c, bool final) {
  const char *p = c->in != NULL ? c->in->block : NULL;
  size_t n = c->in != NULL ? c->in_len : 0;
  struct rp_client_hello ch;
  struct rp_conn *own;
  enum rp_ch_status st;

  if (n == 0 && !final)
    return;
  own = own_tunnel(c);
  if (own != NULL) {
    char why[96];
    snprintf(why, sizeof(why), "loop: regproxy's own connection (conn %llu) was redirected back",
             (unsigned long long)own->id);
    rp_log_warn("conn=%llu %s; exempt --mark %u from the redirect rules", (unsigned long long)c->id,
                why, c->srv->cfg->mark);
    refuse(c, 508, why);
    return;
  }
  if (n == 0) {
    tunnel(c, NULL, "nothing sent within the peek time");
    return;
  }
  if ((unsigned char)p[0] == 0x16) {
    st = rp_client_hello_parse((const uint8_t *)p, n, &ch);
    if (st == RP_CH_NEED_MORE && !final)
      return;
    if (st == RP_CH_OK)
      route_tls(c, &ch);
    else
      tunnel(c, NULL, st == RP_CH_NEED_MORE ? "incomplete ClientHello" : "not a ClientHello");
    return;
  }
  st = looks_http(p, n);
  if (st == RP_CH_NEED_MORE && !final)
    return;
  if (st == RP_CH_OK)
    start_http(c);
  else
    tunnel(c, NULL, "neither TLS nor HTTP");
}

static void on_peek_read(struct rp_stream *s, ssize_t nread, char *block) {
  struct rp_conn *c = s->data;

  if (nread < 0) {
    rp__conn_stop_client(c);
    c->client_eof = 1;
    if (c->in == NULL) {
      refuse(c, 0,
             nread == UV_EOF ? "client closed before sending anything" : uv_strerror((int)nread));
      return;
    }
    decide(c, true);
    return;
  }
  rp__conn_touch(c);
  if (c->in == NULL) {
    c->in = rp__bref_new(block);
    if (c->in == NULL) {
      rp__conn_close(c);
      return;
    }
    c->in_off = 0;
    c->in_len = (size_t)nread;
  } else if (c->in_len + (size_t)nread <= RP_BUF_SIZE) {
    memcpy(c->in->block + c->in_len, block, (size_t)nread);
    c->in_len += (size_t)nread;
    rp_buf_free(block);
  } else {
    /* Undecided means a partial ClientHello (16 KiB at most) or a partial
     * method: a client that sends 64 KiB more before an answer is not one. */
    rp_buf_free(block);
    refuse(c, 400, "more than 64 KiB before the protocol was recognised");
    return;
  }
  decide(c, false);
}

void rp__transparent_peek_timeout(struct rp_conn *c) {
  rp__conn_stop_client(c);
  decide(c, true);
}

/* ---- accept ---- */

void rp__transparent_accept(struct rp_listener *l, uv_tcp_t *tcp) {
  struct rp_server *srv = l->srv;
  struct sockaddr_storage dst, local;
  const char *why = NULL;
  struct rp_conn *c;
  bool own_mark;
  int rc;

  rc = original_dst(tcp, srv->cfg->tproxy, &dst, &local, &why);
  own_mark = rc == 0 && carries_own_mark(srv, tcp);
  c = rp__conn_adopt(srv, rp_tcp_stream_wrap(tcp), "transparent");
  if (c == NULL)
    return;
  c->transparent = 1;
  /* One log line for the connection unless a request path takes over. */
  memset(&c->log, 0, sizeof(c->log));
  c->log.start_ns = uv_hrtime();
  c->log.via = c->via;
  c->req_active = 1;
  c->req_done = 1;
  c->keep_alive = 0;
  if (rc != 0) {
    refuse(c, 0, why);
    return;
  }
  c->dst = dst;
  c->dst_port = addr_port(&dst);
  if (dst.ss_family == AF_INET6)
    uv_ip6_name((struct sockaddr_in6 *)&dst, c->dst_ip, sizeof(c->dst_ip));
  else
    uv_ip4_name((struct sockaddr_in *)&dst, c->dst_ip, sizeof(c->dst_ip));
  snprintf(c->log.host, sizeof(c->log.host), "%s", c->dst_ip);
  c->log.port = c->dst_port;
  if (own_mark) {
    rp_log_warn("conn=%llu loop: a connection with regproxy's own --mark %u was redirected "
                "back; exempt the mark from the redirect rules",
                (unsigned long long)c->id, srv->cfg->mark);
    refuse(c, 508, "loop: the connection carries regproxy's own --mark");
    return;
  }
  if (dst_is_listener(srv, &dst, &local)) {
    rp_log_warn("conn=%llu loop: the original destination %s:%u is regproxy's own listener",
                (unsigned long long)c->id, c->dst_ip, c->dst_port);
    refuse(c, 508, "loop: the original destination is regproxy's own listener");
    return;
  }
  if (c->denied) {
    refuse(c, 403, "client not allowed");
    return;
  }
  rp__conn_go_state(c, RP_CONN_PEEK);
  c->client->on_read = on_peek_read;
  rp__conn_set_timer(c, RP_TM_HEADER, PEEK_TIMEOUT_MS);
}

/* ---- plain HTTP ---- */

bool rp__transparent_target(struct rp_conn *c, const struct rp_http_head *h) {
  struct rp_target host;

  if (c->target.form == RP_TARGET_ABSOLUTE && !c->target.https)
    return true; /* it names itself; the dial still goes to dst */
  if (c->target.form != RP_TARGET_ORIGIN) {
    rp__conn_respond(c, 400, "a transparent connection carries origin-form requests", true);
    return false;
  }
  if (!rp__conn_request_host(c, h, c->dst_port, &host))
    return false;
  snprintf(c->target.host, sizeof(c->target.host), "%s", host.host);
  c->target.host_is_ip6 = host.host_is_ip6;
  c->target.port = host.port;
  c->target.form = RP_TARGET_ABSOLUTE;
  c->target.https = false;
  return true;
}

/* ---- listeners ---- */

int rp__transparent_listener_prepare(uv_tcp_t *tcp, int family, bool tproxy, char **err) {
  uv_os_fd_t fd;
  int one = 1, rc;

  if (!tproxy)
    return 0;
  rc = uv_fileno((uv_handle_t *)tcp, &fd);
  if (rc != 0)
    return rc;
  if (family == AF_INET6)
    rc = setsockopt(fd, SOL_IPV6, IPV6_TRANSPARENT, &one, sizeof(one));
  else
    rc = setsockopt(fd, SOL_IP, IP_TRANSPARENT, &one, sizeof(one));
  if (rc != 0) {
    int e = errno;
    const char *pre = "--tproxy: IP_TRANSPARENT failed: ";
    const char *hint = e == EPERM ? " (regproxy lacks CAP_NET_ADMIN: run it as root or grant the "
                                    "capability, e.g. with the systemd transparent.conf drop-in)"
                                  : "";
    size_t n = strlen(pre) + strlen(strerror(e)) + strlen(hint) + 1;
    *err = malloc(n);
    if (*err != NULL)
      snprintf(*err, n, "%s%s%s", pre, strerror(e), hint);
    return RP_ECONFIG;
  }
  return 0;
}

void rp__transparent_start_checks(const struct rp_server *srv) {
  const struct rp_config *cfg = srv->cfg;
  unsigned mark = cfg->mark;
  int fd;

  if (!cfg->mark_set || mark == 0)
    return;
  /* SO_MARK needs CAP_NET_ADMIN too; without it outgoing connections are not
   * marked and an OUTPUT-chain redirect would send them back here. */
  fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0)
    return;
  if (setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) != 0 && errno == EPERM)
    rp_log_error("--mark %u: SO_MARK needs CAP_NET_ADMIN, which regproxy lacks: its outgoing "
                 "connections are NOT marked, and rules that exempt the mark will redirect "
                 "them back to regproxy",
                 mark);
  close(fd);
}
