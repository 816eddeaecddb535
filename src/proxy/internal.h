#ifndef RP_PROXY_INTERNAL_H
#define RP_PROXY_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "regproxy/config.h"
#include "regproxy/exchange.h"
#include "regproxy/http.h"
#include "regproxy/net.h"
#include "regproxy/registry.h"
#include "regproxy/registry_service.h"
#include "regproxy/route.h"
#include "regproxy/upstream.h"
#include "regproxy/util.h"

/* Backpressure: stop reading one side while the other side has more than
 * HIGH bytes queued; resume once it is down to LOW. */
#define RP_QUEUE_HIGH (512 * 1024)
#define RP_QUEUE_LOW  (128 * 1024)

struct rp_parent {
  char host[256];
  uint16_t port;
  char url[300]; /* "http://host:port", for the upstream engine */
  char *auth;    /* "Basic …" or NULL */
};

struct rp_listener {
  struct rp_server *srv;
  uv_tcp_t tcp;
  char addr[80];
  int transparent;
  int accept_held; /* a connection waits in the backlog (max_connections) */
  int closed;
};

struct rp_conn;

struct rp_server {
  uv_loop_t *loop;
  struct rp_config *cfg;
  struct rp_parent parent; /* host[0] == '\0': none */
  int argc;
  char **argv;
  char **envp;

  struct rp_listener *listeners;
  size_t nlisteners;
  unsigned nconns;
  uint64_t next_id;
  struct rp_conn *conns; /* all live connections, for shutdown */

  uv_signal_t sig[3];
  uv_timer_t grace;
  int draining;
  int notify;            /* tell systemd READY/RELOADING/STOPPING (`run` only, not prefetch) */
  uint64_t last_trim_ms; /* malloc_trim after a load (server.c) */
  uv_timer_t trim;       /* a second after memory was freed under load: trim (server.c) */

  /* MITM: the local CA, the per-host leaves, the upstream engine. */
  struct rp_ca *ca;
  struct rp_leafcache *leaves;
  struct rp_upstream *up;
  struct rp_cache *cache;       /* NULL: caching off (the directory is unusable) */
  struct rp_registry *registry; /* the registry service (src/registry) */
  struct rp_htpasswd *htpasswd; /* --proxy-auth-file, or NULL */
  struct rp__proxyauth *pauth;  /* its remembered answers */
};

/* A read block shared by the writes that point into it. */
struct rp_bref {
  char *block;
  unsigned refs;
};
struct rp_bref *rp__bref_new(char *block);
void rp__bref_put(struct rp_bref *r);

enum rp_conn_state {
  RP_CONN_HEAD,    /* waiting for / reading a request head */
  RP_CONN_DIAL,    /* connecting upstream for CONNECT or a forward */
  RP_CONN_TUNNEL,  /* blind relay */
  RP_CONN_FORWARD, /* a plain-HTTP request is in flight */
  RP_CONN_RESPOND, /* a local answer is being sent */
  RP_CONN_TLS,     /* MITM: TLS handshake with the client */
  RP_CONN_PASS,    /* a request answered through its exchange (the registry service) */
  RP_CONN_PEEK,    /* transparent: reading the first bytes to tell TLS, HTTP or other */
  RP_CONN_LOCAL,   /* the admin endpoints answer through the exchange; the request
                      stays paused after its head and no timer runs until they have */
  RP_CONN_CLOSING,
  RP_CONN_STATE_LAST
};

enum rp_timer_mode { RP_TM_NONE, RP_TM_HEADER, RP_TM_IDLE, RP_TM_TUNNEL };

/* Everything logged about the current request or tunnel. */
struct rp_reqlog {
  uint64_t start_ns;
  char method[24];
  char host[300]; /* the destination name, IPv6 in brackets, no port */
  uint16_t port;
  char path[512];
  const char *route;
  const char *via;
  const char *cache;
  int status;
  uint64_t bytes_in;  /* from the client */
  uint64_t bytes_out; /* to the client */
  char reason[200];
};

struct rp_conn {
  struct rp_server *srv;
  uint64_t id;
  struct rp_conn *next, *prev;
  char client_addr[80];
  struct sockaddr_storage peer;
  int denied; /* client ACL said no: answer 403 to the first request */
  const char *via;
  struct rp_route_out route; /* the current request's route (route.c) */

  enum rp_conn_state state;
  struct rp_stream *client;
  struct rp_http_parser *parser;
  /* Unparsed input: a client block and the part of it not yet consumed. */
  struct rp_bref *in;
  size_t in_off, in_len;
  int client_reading;
  int client_eof;
  size_t client_inflight; /* bytes written to the client, callbacks pending */
  size_t up_inflight;
  int client_paused; /* reading stopped for backpressure */
  int client_shut;   /* our shutdown of the client stream completed */
  int processing;    /* inside conn_process: do not re-enter */
  int closing;
  const struct rp_http_head *head; /* the current request head (parser arena) */
  unsigned client_minor;           /* HTTP/1.x version of the current request */

  uv_timer_t timer;
  enum rp_timer_mode tmode;
  uint64_t timer_ms;
  uint64_t last_active;

  /* The current request. */
  struct rp_reqlog log;
  int req_active; /* head seen, not yet finished */
  int req_done;   /* the request message is complete */
  int resp_done;  /* the whole response is queued */
  int keep_alive; /* the client connection may carry another request */
  struct rp_target target;

  /* Upstream: the tunnel peer, or the HTTP origin/parent (kept alive). */
  struct rp_dial *dial;
  struct rp_stream *upstream;
  char up_key[300];
  int up_reading;
  int up_eof;
  int up_paused;
  int up_shut;
  struct rp_bref *up_in; /* the upstream block being parsed */
  char *pending_head;    /* request head to send once connected */
  size_t pending_head_len;
  struct rp_http_parser *uparser;
  int up_head_sent;   /* the response head went to the client */
  int pass_waited;    /* the timer let one period pass for the upstream engine */
  int up_chunked_out; /* forward.c chunks the response body for the client */
  int up_close_after; /* close the client after this response */
  int up_keep;        /* the upstream may serve another request */
  int req_chunked_up; /* we chunk the request body for the upstream */
  int req_is_head;

  int handles_open; /* client stream, upstream stream, timer */

  /* Tunnel relay (tunnel.c): read/write through pool blocks at first, then
   * splice(2) once RP_SPLICE_AFTER bytes went through. */
  uint64_t relay_bytes;     /* bytes relayed with read/write, both ways */
  int splice_pending;       /* reads stopped until both write queues are empty */
  int splice_off;           /* this tunnel stays on read/write */
  struct rp_splice *splice; /* the kernel relays: the streams are not read */

  /* MITM: the client stream is TLS; requests inside go to the registry
   * service. */
  int mitm;
  char mitm_host[256];
  uint16_t mitm_port;
  /* The exchange of the current request (exchange.c), for the registry
   * service: the answer's framing, and the request body waiting for it. */
  struct rp_exchange x;
  struct rp_sink x_body;
  int x_chunked;              /* that body is chunked on the wire */
  int x_no_body;              /* HEAD, 204, 304: the body is dropped */
  int x_via;                  /* plain HTTP: the answer carries Via */
  int x_started;              /* the answer's head went out */
  struct rp_body_chunk *x_in; /* request body not yet read by the handler */
  struct rp_body_chunk **x_in_tail;
  size_t x_in_bytes;
  struct rp__pa_job *pa_job; /* Proxy-Authorization being checked (proxyauth.c) */

  /* Transparent (transparent.c): the original destination, where every
   * outgoing connection of this client connection goes (not via a parent). */
  int transparent;
  struct sockaddr_storage dst;
  char dst_ip[64]; /* "" when not transparent; IPv6 without brackets */
  uint16_t dst_port;
  struct sockaddr_storage up_local; /* our side of the tunnel's upstream (loop check) */
};

struct rp_body_chunk {
  struct rp_body_chunk *next;
  struct rp_bref *ref;
  const char *p;
  size_t len;
};

void rp__conn_accept(struct rp_listener *l);
/** Make a client connection of a connected stream (owned from now on; closed
 * when this fails) and start reading requests from it: the accept path, and
 * the in-memory streams of tests/fuzz/fuzz_conn.c. via: "proxy" or
 * "transparent". Returns the connection, valid until the loop runs again. */
struct rp_conn *rp__conn_adopt(struct rp_server *srv, struct rp_stream *s, const char *via);
void rp__conn_go_state(struct rp_conn *c, enum rp_conn_state s);
void rp__conn_close(struct rp_conn *c);
/** Answer with a short local response (status line + one-line reason). */
void rp__conn_respond(struct rp_conn *c, int status, const char *reason, bool close_after);
/** The request's one Host field into *host (default_port when it names
 * none); otherwise answers 400 with the reason and returns false. */
bool rp__conn_request_host(struct rp_conn *c, const struct rp_http_head *h, uint16_t default_port,
                           struct rp_target *host);
/** The same with extra header lines (each ending in CRLF). */
void rp__conn_respond_with(struct rp_conn *c, int status, const char *reason, const char *extra,
                           bool close_after);
/** Route a request whose head passed the ACL and proxy authentication. */
void rp__conn_route(struct rp_conn *c, const struct rp_http_head *h);
/** Queue bufs on s (the client or the upstream). ref (may be NULL) gains
 * a reference until the write completes; owned (may be NULL) is freed then.
 * On completion the connection's drain logic runs. */
int rp__conn_write(struct rp_conn *c, struct rp_stream *s, const uv_buf_t *bufs, unsigned n,
                   struct rp_bref *ref, char *owned);
/** Write to the client; done(arg, status) once the buffers are no longer
 * needed (they stay the caller's until then). Counted, timed and drained
 * like every other write of the connection. */
int rp__conn_write_notify(struct rp_conn *c, const uv_buf_t *bufs, unsigned n,
                          void (*done)(void *arg, int status), void *arg);
/** Bytes queued on s by this connection and not yet confirmed written. */
size_t rp__conn_queued(const struct rp_conn *c, const struct rp_stream *s);
/** Queue a copy of p to the client. */
int rp__conn_write_client(struct rp_conn *c, const char *p, size_t n);
/** Take ownership of a connected upstream stream. */
void rp__conn_set_upstream(struct rp_conn *c, struct rp_stream *s);
/** Replace the client stream (MITM: TLS over the TCP one). */
void rp__conn_set_client(struct rp_conn *c, struct rp_stream *s);
void rp__conn_close_upstream(struct rp_conn *c);
/** Close once everything queued to the client is sent. */
void rp__conn_close_after_flush(struct rp_conn *c);
/** The response to the current request is fully queued. */
void rp__conn_response_done(struct rp_conn *c);
/** Continue parsing / reading the client after a pause. */
void rp__conn_resume_input(struct rp_conn *c);
void rp__conn_touch(struct rp_conn *c);
void rp__conn_set_timer(struct rp_conn *c, enum rp_timer_mode mode, uint64_t ms);
/* exchange.c */
/** A fresh exchange for the current request (c->head, path: its origin-form
 * path and query). */
struct rp_exchange *rp__conn_exchange_begin(struct rp_conn *c, const char *path, size_t path_len);
/** The exchange's handler is told the request is over (at most once). */
void rp__exchange_end(struct rp_conn *c);
/** Request body bytes for the handler (conn's parser callback). */
int rp__exchange_body_in(struct rp_conn *c, const char *at, size_t len);
/** The request body is complete. */
void rp__exchange_request_done(struct rp_conn *c);
bool rp__exchange_body_full(const struct rp_conn *c);
void rp__exchange_client_drained(struct rp_conn *c);
void rp__conn_stop_client(struct rp_conn *c);
void rp__conn_start_client(struct rp_conn *c);
void rp__conn_log(struct rp_conn *c);
/** The dial request for host:port under the current routing decision. */
void rp__conn_dial_req(struct rp_conn *c, struct rp_dial_req *req, const char *host, uint16_t port,
                       bool via_parent, bool parent_connect);
int rp__dial_status(int status);

/* transparent.c */
/** Accept on a --transparent listener: original destination, loop check,
 * then the peek that decides between TLS, plain HTTP and a blind tunnel. */
void rp__transparent_accept(struct rp_listener *l, uv_tcp_t *tcp);
/** The peek timer fired (no decision yet): tunnel what was read, or nothing. */
void rp__transparent_peek_timeout(struct rp_conn *c);
/** A plain-HTTP request on a transparent connection: its origin-form target
 * becomes the Host's absolute form (answered 400 and false when it cannot). */
bool rp__transparent_target(struct rp_conn *c, const struct rp_http_head *h);
/** A server that listens on --transparent: set up before bind (IP_TRANSPARENT). */
int rp__transparent_listener_prepare(uv_tcp_t *tcp, int family, bool tproxy, char **err);
/** Say at start what the transparent set-up lacks (CAP_NET_ADMIN for --mark). */
void rp__transparent_start_checks(const struct rp_server *srv);

/* tunnel.c */
/** Dial the CONNECT target as c->route says (direct or via the parent). */
void rp__tunnel_connect(struct rp_conn *c);
void rp__tunnel_drained(struct rp_conn *c, struct rp_stream *s);
/** The connection is closing: stop the splice relay, if any. */
void rp__tunnel_destroy(struct rp_conn *c);
/* forward.c */
void rp__forward_start(struct rp_conn *c, const struct rp_http_head *h);
int rp__forward_body(struct rp_conn *c, const char *at, size_t len);
void rp__forward_request_done(struct rp_conn *c);
void rp__forward_client_drained(struct rp_conn *c);
void rp__forward_destroy(struct rp_conn *c);
/* mitm.c */
void rp__mitm_connect(struct rp_conn *c);
/** Terminate the client's TLS as host:port (the connection's identity) and
 * serve the requests inside: CONNECT after its 200, and the transparent
 * front, which hands over the ClientHello bytes it already read (preread, a
 * pool block owned from now on, or NULL). */
void rp__mitm_start_tls(struct rp_conn *c, const char *host, uint16_t port, char *preread,
                        size_t preread_len);
/** A request inside an intercepted TLS connection. */
void rp__mitm_request(struct rp_conn *c, const struct rp_http_head *h);
/** A request routed RP_ROUTE_PLAIN_REGISTRY; false for what the registry
 * service does not take (the byte relay takes it). */
bool rp__mitm_plain_request(struct rp_conn *c, const struct rp_http_head *h);
/** An origin-form /v2/ request on a listener (mirror mode). */
void rp__mitm_mirror_request(struct rp_conn *c, const struct rp_http_head *h);
/* status.c */
struct rp_admin;
/** What the admin endpoints work with for one request: srv's cache, CA and
 * admin settings, and its renderers of /metrics and /status.json. */
void rp__status_admin(struct rp_server *srv, struct rp_admin *out);
/* proxyauth.c */
/** true: the request may go on now; false: answered (407) or being checked
 * on the thread pool (then routed with rp__conn_route). */
bool rp__proxyauth_check(struct rp_conn *c, const struct rp_http_head *h);
/** The connection is going away: its check answers nobody. */
void rp__proxyauth_detach(struct rp_conn *c);
void rp__proxyauth_shutdown(struct rp_server *srv);
/* server.c */
void rp__server_conn_gone(struct rp_server *srv);
/** Memory was freed under load: trim the heap a second later (server.c). */
void rp__server_heap_freed(struct rp_server *srv);
/** The lists and settings rp_route_decide reads; they belong to srv->cfg. */
void rp__server_route_cfg(const struct rp_server *srv, struct rp_route_cfg *out);

#endif
