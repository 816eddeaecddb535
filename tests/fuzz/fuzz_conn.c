/* libFuzzer target: whole client connections through a real rp_server —
 * routing, CONNECT, plain-HTTP forwarding, the registry cache behind MITM,
 * plain-HTTP registries and mirror mode, the admin endpoints — with the
 * client on an in-memory stream (no client socket: the input is what the
 * client sends, the answers are collected and dropped).
 *
 * The server is built once per process: defaults, a temporary cache and CA
 * directory (removed at exit), --mitm naming a few registries, and
 * --connect-to sending every outgoing connection (dial and libcurl alike) to
 * a closed loopback port, so upstream work fails at once and the same way
 * every time: what is tested is how regproxy answers without its upstream
 * (contract §3 "Upstream unreachable"). The cache holds one blob and one
 * manifest of library/alpine (tag 3.18) on Docker Hub and on the plain-HTTP
 * registry.test:5000, so hits, ranges and answers from memory are reachable
 * too.
 *
 * Input: two selector bytes, then the client's bytes.
 *   byte 0, bits 0-2: the way in
 *     0 proxy listener, client 127.0.0.1      4 inside MITM, registry-1.docker.io:443
 *     1 proxy listener, client 192.0.2.7       5 inside MITM, ghcr.io:443
 *       (allowed, not in admin_allow)          6 inside MITM, registry.test:5000
 *     2 proxy listener, client 198.51.100.9    7 inside MITM, [fd00::5]:5000
 *       (denied by the ACL)
 *     3 proxy listener, client [::1]
 *     "Inside MITM" is the connection as rp__mitm_connect leaves it after the
 *     CONNECT, with the TLS layer left out: requests go to rp__mitm_request.
 *   byte 0, bit 3: access_check off; bit 4: tag_ttl 1h; bit 5: the client
 *     keeps the connection open after its last byte (else it sends EOF).
 *   byte 1, bits 0-5: read size n*n bytes (0: up to 64 KiB at a time).
 * Printable selectors make readable seeds: "@@" is the proxy listener with
 * whole reads, "D@" the same inside MITM to Docker Hub, "L@" that with
 * access_check off. RP_FUZZ_CONN_DUMP=1 prints what the client receives.
 *
 * Each input runs the loop until the connection is gone and the loop is back
 * to the handles and requests it had between inputs (background fetches
 * finished); a connection left waiting on its own timers with nothing else
 * to do is closed. A bound on the loop iterations turns a connection that
 * never settles into a crash report. */
#include <ftw.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "proxy/internal.h"
#include "regproxy/cache.h"
#include "regproxy/config.h"
#include "regproxy/log.h"
#include "regproxy/net.h"
#include "regproxy/proxy.h"

/* Iterations of the loop one input may take beyond one per read (each blocks
 * at most TICK_MS): a refused upstream settles in a handful. */
#define MAX_ROUNDS 4000
#define TICK_MS    2

static uv_loop_t loop;
static struct rp_server *srv;
static char tmpdir[] = "/tmp/rp-fuzz-conn.XXXXXX";
static unsigned base_handles, base_reqs;
static uv_timer_t tick;
static struct mem_stream *client; /* the current input's stream, NULL once closed */
static int dump;

/* ---- the in-memory client stream ---- */

struct mem_write {
  struct mem_write *next;
  rp_stream_write_cb cb;
  void *arg;
};

struct mem_stream {
  struct rp_stream base;
  uv_idle_t idle; /* completes writes and delivers reads, one loop turn later */
  const uint8_t *data;
  size_t len, off, chunk;
  int reading, send_eof, eof_sent, closing;
  struct sockaddr_storage peer;
  struct mem_write *writes, **tail;
  rp_stream_shutdown_cb shutdown_cb;
  int shutdown_pending;
  rp_stream_close_cb close_cb;
};

static int mem_busy(const struct mem_stream *m) {
  return m->writes != NULL || m->shutdown_pending ||
         (m->reading && (m->off < m->len || (m->send_eof && !m->eof_sent)));
}

static void on_mem_idle(uv_idle_t *h) {
  struct mem_stream *m = h->data;
  struct mem_write *w = m->writes;

  /* Writes queued before this turn complete first, as libuv reports them. */
  m->writes = NULL;
  m->tail = &m->writes;
  while (w != NULL) {
    struct mem_write *next = w->next;
    w->cb(&m->base, 0, w->arg);
    free(w);
    w = next;
  }
  if (m->closing)
    return;
  if (m->shutdown_pending) {
    m->shutdown_pending = 0;
    m->shutdown_cb(&m->base, 0);
    if (m->closing)
      return;
  }
  if (m->reading && m->off < m->len) {
    size_t n = m->len - m->off < m->chunk ? m->len - m->off : m->chunk;
    char *block = rp_buf_alloc();
    memcpy(block, m->data + m->off, n);
    m->off += n;
    m->base.on_read(&m->base, (ssize_t)n, block);
  } else if (m->reading && m->send_eof && !m->eof_sent) {
    m->eof_sent = 1;
    m->reading = 0;
    m->base.on_read(&m->base, UV_EOF, NULL);
  }
  if (!m->closing && !mem_busy(m))
    uv_idle_stop(&m->idle);
}

static void mem_kick(struct mem_stream *m) {
  if (!m->closing && mem_busy(m))
    uv_idle_start(&m->idle, on_mem_idle);
}

static int mem_read_start(struct rp_stream *s) {
  struct mem_stream *m = (struct mem_stream *)s;
  if (m->closing || m->eof_sent)
    return UV_EINVAL;
  m->reading = 1;
  mem_kick(m);
  return 0;
}

static int mem_read_stop(struct rp_stream *s) {
  ((struct mem_stream *)s)->reading = 0;
  return 0;
}

static int mem_write(struct rp_stream *s, const uv_buf_t *bufs, unsigned n, rp_stream_write_cb cb,
                     void *arg) {
  struct mem_stream *m = (struct mem_stream *)s;
  struct mem_write *w;

  if (m->closing || m->shutdown_pending)
    return UV_EPIPE;
  w = malloc(sizeof(*w));
  if (w == NULL)
    return UV_ENOMEM;
  for (unsigned i = 0; i < n; i++) {
    /* What the client receives (touching every byte also lets ASan check
     * that the buffers are valid). */
    if (dump)
      fwrite(bufs[i].base, 1, bufs[i].len, stderr);
    else if (bufs[i].len > 0)
      (void)*(volatile char *)&bufs[i].base[bufs[i].len - 1];
  }
  w->next = NULL;
  w->cb = cb;
  w->arg = arg;
  *m->tail = w;
  m->tail = &w->next;
  mem_kick(m);
  return 0;
}

static int mem_shutdown(struct rp_stream *s, rp_stream_shutdown_cb cb) {
  struct mem_stream *m = (struct mem_stream *)s;
  if (m->closing || m->shutdown_pending)
    return UV_EPIPE;
  m->shutdown_cb = cb;
  m->shutdown_pending = 1;
  mem_kick(m);
  return 0;
}

static void on_mem_close(uv_handle_t *h) {
  struct mem_stream *m = h->data;
  /* Like uv_close on a stream: queued writes fail with UV_ECANCELED. */
  while (m->writes != NULL) {
    struct mem_write *w = m->writes;
    m->writes = w->next;
    w->cb(&m->base, UV_ECANCELED, w->arg);
    free(w);
  }
  if (m->shutdown_pending)
    m->shutdown_cb(&m->base, UV_ECANCELED);
  if (m->close_cb != NULL)
    m->close_cb(&m->base);
  if (client == m)
    client = NULL;
  free(m);
}

static void mem_close(struct rp_stream *s, rp_stream_close_cb cb) {
  struct mem_stream *m = (struct mem_stream *)s;
  if (m->closing)
    return;
  m->closing = 1;
  m->close_cb = cb;
  uv_close((uv_handle_t *)&m->idle, on_mem_close);
}

static size_t mem_write_queue_size(const struct rp_stream *s) {
  (void)s;
  return 0; /* the bytes are gone at once; completions count as in flight */
}

static int mem_peername(const struct rp_stream *s, struct sockaddr_storage *ss) {
  *ss = ((const struct mem_stream *)s)->peer;
  return 0;
}

static uv_loop_t *mem_loop(const struct rp_stream *s) {
  return ((const struct mem_stream *)s)->idle.loop;
}

static const struct rp_stream_ops mem_ops = {
    .name = "memory",
    .read_start = mem_read_start,
    .read_stop = mem_read_stop,
    .write = mem_write,
    .shutdown = mem_shutdown,
    .close = mem_close,
    .write_queue_size = mem_write_queue_size,
    .peername = mem_peername,
    .loop = mem_loop,
};

static struct mem_stream *mem_new(const uint8_t *data, size_t len, size_t chunk, int send_eof,
                                  const char *ip, uint16_t port) {
  struct mem_stream *m = calloc(1, sizeof(*m));
  if (m == NULL)
    abort();
  m->base.ops = &mem_ops;
  m->data = data;
  m->len = len;
  m->chunk = chunk;
  m->send_eof = send_eof;
  m->tail = &m->writes;
  if (uv_ip4_addr(ip, port, (struct sockaddr_in *)&m->peer) != 0 &&
      uv_ip6_addr(ip, port, (struct sockaddr_in6 *)&m->peer) != 0)
    abort();
  uv_idle_init(&loop, &m->idle);
  m->idle.data = m;
  client = m;
  return m;
}

/* ---- the server, once per process ---- */

static const char blob[] = "regproxy fuzz blob\n";
static const char manifest[] =
    "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\","
    "\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"size\":19,"
    "\"digest\":\"sha256:5a0a6dbb8b1b7f6e0b3a7d2ffb7c1d8d52c3f2a1f2a3f4b5c6d7e8f9a0b1c2d3\"},"
    "\"layers\":[]}";
static const char manifest_type[] = "application/vnd.oci.image.manifest.v1+json";

static void on_tick(uv_timer_t *t) {
  (void)t;
}

static void run_until_published(struct rp_fill *f) {
  for (int i = 0; i < 100000 && rp_fill_state(f) == RP_FILL_RUNNING; i++)
    uv_run(&loop, UV_RUN_ONCE);
  if (rp_fill_state(f) != RP_FILL_PUBLISHED) {
    fprintf(stderr, "fuzz_conn: seeding the cache failed\n");
    abort();
  }
}

/* Put data in the cache (once) and in library/alpine of docker.io and of the
 * plain-HTTP registry.test:5000; *d gets its digest. */
static void seed_object(const char *data, size_t len, bool is_manifest, const char *type,
                        struct rp_digest *d) {
  unsigned char md[SHA256_DIGEST_LENGTH];
  struct rp_fill *f;

  SHA256((const unsigned char *)data, len, md);
  d->algo = 256;
  for (size_t i = 0; i < sizeof(md); i++)
    snprintf(d->hex + 2 * i, 3, "%02x", md[i]);
  if (!rp_cache_has(srv->cache, d, NULL)) {
    f = rp_fill_start(srv->cache, d, (int64_t)len, is_manifest, type);
    if (f == NULL || rp_fill_write(f, data, len) != 0)
      abort();
    rp_fill_finish(f);
    run_until_published(f);
    rp_fill_unref(f);
  }
  rp_cache_note_repo(srv->cache, d, "docker.io", "library/alpine");
  rp_cache_note_repo(srv->cache, d, "http://registry.test:5000", "library/alpine");
}

static struct rp_digest seeded[2]; /* the blob, the manifest */
static time_t seeded_at;

static void seed_cache(void) {
  static const char *const keys[] = {
      "",
      "application/vnd.docker.distribution.manifest.list.v2+json,"
      "application/vnd.docker.distribution.manifest.v2+json,"
      "application/vnd.oci.image.index.v1+json,application/vnd.oci.image.manifest.v1+json",
  };
  struct rp_digest *b = &seeded[0], *m = &seeded[1];
  struct rp_tag_entry e;

  seed_object(blob, sizeof(blob) - 1, false, NULL, b);
  seed_object(manifest, sizeof(manifest) - 1, true, manifest_type, m);
  memset(&e, 0, sizeof(e));
  e.digest = *m;
  snprintf(e.media_type, sizeof(e.media_type), "%s", manifest_type);
  e.size = sizeof(manifest) - 1;
  seeded_at = time(NULL);
  e.checked = (int64_t)seeded_at;
  for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
    rp_cache_tag_put(srv->cache, "docker.io", "library/alpine", "3.18", keys[i], &e);
    rp_cache_tag_put(srv->cache, "http://registry.test:5000", "library/alpine", "3.18", keys[i],
                     &e);
  }
  if (getenv("RP_FUZZ_CONN_VERBOSE") != NULL)
    fprintf(stderr, "fuzz_conn: blob sha256:%s (%zu bytes), manifest sha256:%s (%zu bytes)\n",
            b->hex, sizeof(blob) - 1, m->hex, sizeof(manifest) - 1);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  remove(path);
  return 0;
}

static void remove_tmpdir(void) {
  nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* The server keeps argv and envp (to reload on SIGHUP). */
static char cache_dir[64], ca_dir[64], home[80];
/* clang-format off */
static char *srv_argv[] = {
    "regproxy", "run",
    "--listen", "127.0.0.1:0",
    "--cache-dir", cache_dir,
    "--ca-dir", ca_dir,
    "--mitm", "registry-1.docker.io,index.docker.io,ghcr.io,quay.io,.pkg.dev,"
              "registry.test:5000,fd00::5",
    "--no-proxy", "internal.test,10.0.0.0/8",
    "--connect-to", "::127.0.0.1:1",
    "--allow", "127.0.0.0/8,::1,192.0.2.0/24",
    "--server-names", "regproxy.lan",
    "--log-level", "error",
    NULL,
};
/* clang-format on */
static char *srv_envp[] = {home, NULL};

static void setup(void) {
  struct rp_config *cfg = NULL;
  char *err = NULL;
  int argc = (int)(sizeof(srv_argv) / sizeof(srv_argv[0])) - 1;

  if (mkdtemp(tmpdir) == NULL) {
    perror("fuzz_conn: mkdtemp");
    abort();
  }
  atexit(remove_tmpdir);
  snprintf(cache_dir, sizeof(cache_dir), "%s/cache", tmpdir);
  snprintf(ca_dir, sizeof(ca_dir), "%s/ca", tmpdir);
  snprintf(home, sizeof(home), "HOME=%s", tmpdir);
  dump = getenv("RP_FUZZ_CONN_DUMP") != NULL;

  uv_loop_init(&loop);
  rp_log_setup(RP_LOG_ERROR, RP_LOG_LOGFMT);
  if (rp_config_load(&cfg, argc, srv_argv, srv_envp, &err) != 0 ||
      rp_server_create(&srv, &loop, cfg, argc, srv_argv, srv_envp, &err) != 0 ||
      rp_server_start(srv, &err) != 0) {
    fprintf(stderr, "fuzz_conn: cannot start the server: %s\n", err != NULL ? err : "?");
    abort();
  }
  /* libFuzzer keeps SIGINT and SIGTERM (it installs its handlers after
   * LLVMFuzzerInitialize, where the signals are back to their defaults). */
  for (int i = 0; i < 3; i++)
    uv_signal_stop(&srv->sig[i]);
  uv_timer_init(&loop, &tick);
  seed_cache();
  /* What the loop holds between inputs once the seeding's index writes are
   * done: the listener, nothing in flight. */
  uv_timer_start(&tick, on_tick, TICK_MS, TICK_MS);
  for (int i = 0; i < 5000 && loop.active_reqs.count > 0; i++)
    uv_run(&loop, UV_RUN_ONCE);
  uv_timer_stop(&tick);
  for (int i = 0; i < 10; i++)
    uv_run(&loop, UV_RUN_NOWAIT);
  base_handles = loop.active_handles;
  base_reqs = loop.active_reqs.count;
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  setup();
  return 0;
}

/* ---- one input ---- */

struct way {
  const char *peer; /* client address */
  const char *host; /* MITM: the CONNECT host, NULL for the proxy listener */
  uint16_t port;
};

static const struct way ways[8] = {
    {"127.0.0.1", NULL, 0},
    {"192.0.2.7", NULL, 0},
    {"198.51.100.9", NULL, 0},
    {"::1", NULL, 0},
    {"127.0.0.1", "registry-1.docker.io", 443},
    {"127.0.0.1", "ghcr.io", 443},
    {"127.0.0.1", "registry.test", 5000},
    {"127.0.0.1", "fd00::5", 5000},
};

/* Nothing left to do but wait for a timer: the client stream has delivered
 * everything it will (or waits for the connection to read again), no write
 * is pending, and the loop holds no more than the connection's timer beyond
 * what it holds between inputs. */
static bool settled(void) {
  unsigned conn_handles = 0;
  if (srv->conns != NULL && uv_is_active((const uv_handle_t *)&srv->conns->timer))
    conn_handles = 1;
  if (loop.active_reqs.count > base_reqs)
    return false;
  if (client != NULL && (mem_busy(client) || client->off < client->len))
    return false;
  return loop.active_handles <= base_handles + conn_handles + 1; /* + the tick */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const struct way *w;
  struct mem_stream *m;
  struct rp_conn *c;
  size_t chunk;
  size_t rounds, max_rounds;
  unsigned n;

  if (size < 2)
    return 0;
  /* DELETE /cache/objects/… and POST /cache/gc remove them; --tag-ttl needs
   * the tag confirmed within the hour. */
  if (!rp_cache_has(srv->cache, &seeded[0], NULL) || !rp_cache_has(srv->cache, &seeded[1], NULL) ||
      time(NULL) - seeded_at > 1800)
    seed_cache();
  w = &ways[data[0] & 7];
  srv->cfg->access_check = (data[0] & 0x08) == 0;
  srv->cfg->tag_ttl_ms = (data[0] & 0x10) != 0 ? 3600 * 1000 : 0;
  n = data[1] & 0x3f;
  chunk = n == 0 ? RP_BUF_SIZE : (size_t)n * n;
  m = mem_new(data + 2, size - 2, chunk, (data[0] & 0x20) == 0, w->peer, 40000);
  c = rp__conn_adopt(srv, &m->base, "proxy");
  if (c != NULL && w->host != NULL) {
    /* As rp__mitm_connect leaves it once the TLS handshake is done. */
    c->mitm = 1;
    snprintf(c->mitm_host, sizeof(c->mitm_host), "%s", w->host);
    c->mitm_port = w->port;
  }
  c = NULL; /* both may be gone once the loop runs ("client" tells) */
  m = NULL;

  max_rounds = MAX_ROUNDS + 2 * ((size - 2) / chunk + 1);
  uv_timer_start(&tick, on_tick, TICK_MS, TICK_MS);
  for (rounds = 0; rounds < max_rounds; rounds++) {
    uv_run(&loop, UV_RUN_ONCE);
    if (!settled())
      continue;
    if (srv->nconns == 0)
      break;
    rp__conn_close(srv->conns); /* idle: the client would wait for a timer */
  }
  uv_timer_stop(&tick);
  if (rounds == max_rounds) {
    struct rp_conn *l = srv->conns;
    fprintf(stderr,
            "fuzz_conn: the connection did not settle (%u connection(s), %u handles, "
            "%u requests active; %u and %u between inputs)\n",
            srv->nconns, loop.active_handles, loop.active_reqs.count, base_handles, base_reqs);
    if (l != NULL)
      fprintf(stderr,
              "fuzz_conn: state %d, request active %d done %d answered %d, timer %s, "
              "reading %d, %zu bytes unparsed, client sent %zu of %zu bytes\n",
              (int)l->state, l->req_active, l->req_done, l->resp_done,
              uv_is_active((const uv_handle_t *)&l->timer) ? "on" : "off", l->client_reading,
              l->in != NULL ? l->in_len - l->in_off : 0, client != NULL ? client->off : 0,
              client != NULL ? client->len : 0);
    abort();
  }
  return 0;
}
