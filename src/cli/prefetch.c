/* `regproxy prefetch <image-ref>...` (contract §4): warm the cache with every
 * platform of each image, with progress on stdout.
 *
 * prefetch is a mirror-mode client (contract §3 "Mirror mode"): it asks for the
 * manifest by tag with ?ns=<registry>, walks indexes to every platform's
 * manifest, and reads every config and layer blob, discarding the bytes:
 * the instance serving those requests fetches, verifies and stores them
 * with its own credentials (--registry-auth). When a `regproxy run` holds
 * the cache directory, its listener is that instance; otherwise prefetch
 * starts one in this process on an ephemeral loopback port, on the same
 * loop as its own requests, and stops it at the end. */
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "regproxy/cache.h"
#include "regproxy/cli.h"
#include "regproxy/config.h"
#include "regproxy/error.h"
#include "regproxy/log.h"
#include "regproxy/proxy.h"
#include "regproxy/registry.h"
#include "regproxy/registry_service.h"
#include "regproxy/upstream.h"

#define PREFETCH_USAGE "usage: regproxy prefetch <image-ref>... [run options]"
#define MANIFEST_MAX   (4u << 20) /* distribution refuses larger manifests */
#define DEPTH_MAX      4          /* index → manifest (→ nested index …) */
#define OWNER_WAIT_MS  3000

static const char accept_all[] = "application/vnd.oci.image.index.v1+json, "
                                 "application/vnd.docker.distribution.manifest.list.v2+json, "
                                 "application/vnd.oci.image.manifest.v1+json, "
                                 "application/vnd.docker.distribution.manifest.v2+json";

enum item_kind { ITEM_MANIFEST, ITEM_BLOB };

struct item {
  struct item *next;
  enum item_kind kind;
  int depth;
  const struct rp_reg_ref *ref; /* the image it belongs to */
  char what[160];               /* tag or digest */
  char label[64];               /* "linux/arm64/v8" for a platform's manifest */
};

struct prefetch {
  uv_loop_t *loop;
  struct rp_upstream *up;
  struct rp_server *srv; /* the in-process instance, or NULL */
  char base[256];        /* the instance's URL */
  struct item *head, *tail;
  struct item *cur;
  struct rp_fetch *fetch;
  int status;
  char ctype[128];
  char *body;
  size_t len;
  bool too_big;
  uint64_t blob_bytes;
  /* seen digests (a layer shared by two platforms is read once) */
  char **seen;
  size_t nseen, capseen;
  /* totals */
  unsigned manifests, blobs, failures;
  uint64_t bytes;
  uint64_t start_ns;
  uv_timer_t wind_down;
};

static void next(struct prefetch *pf);

static bool seen(struct prefetch *pf, const char *digest) {
  char *copy;

  for (size_t i = 0; i < pf->nseen; i++)
    if (strcmp(pf->seen[i], digest) == 0)
      return true;
  if (pf->nseen == pf->capseen) {
    size_t cap = pf->capseen ? pf->capseen * 2 : 64;
    char **v = realloc(pf->seen, cap * sizeof(*v));
    if (v == NULL)
      return false;
    pf->seen = v;
    pf->capseen = cap;
  }
  copy = strdup(digest);
  if (copy != NULL)
    pf->seen[pf->nseen++] = copy;
  return false;
}

static void push(struct prefetch *pf, enum item_kind kind, const struct rp_reg_ref *ref,
                 const char *what, int depth, const char *label) {
  struct item *it = calloc(1, sizeof(*it));

  if (it == NULL) {
    pf->failures++;
    return;
  }
  it->kind = kind;
  it->ref = ref;
  it->depth = depth;
  snprintf(it->what, sizeof(it->what), "%s", what);
  snprintf(it->label, sizeof(it->label), "%s", label != NULL ? label : "");
  if (pf->tail != NULL)
    pf->tail->next = it;
  else
    pf->head = it;
  pf->tail = it;
}

static void human(uint64_t n, char *buf, size_t sz) {
  if (n >= 1000 * 1000)
    snprintf(buf, sz, "%.1f MB", (double)n / 1e6);
  else if (n >= 1000)
    snprintf(buf, sz, "%.1f kB", (double)n / 1e3);
  else
    snprintf(buf, sz, "%" PRIu64 " B", n);
}

/* ---- one request ---- */

static int on_head(struct rp_fetch *f, void *data, int status, const char *reason,
                   const struct rp_http_header *h, size_t n) {
  struct prefetch *pf = data;
  (void)f;
  (void)reason;
  pf->status = status;
  pf->ctype[0] = '\0';
  for (size_t i = 0; i < n; i++) {
    if (rp_http_token_eq(h[i].name, h[i].name_len, "content-type")) {
      size_t k = h[i].value_len < sizeof(pf->ctype) - 1 ? h[i].value_len : sizeof(pf->ctype) - 1;
      memcpy(pf->ctype, h[i].value, k);
      pf->ctype[k] = '\0';
    }
  }
  return 0;
}

static int on_body(struct rp_fetch *f, void *data, const char *p, size_t n) {
  struct prefetch *pf = data;
  (void)f;
  if (pf->cur->kind == ITEM_BLOB || pf->status != 200) {
    pf->blob_bytes += n; /* read and dropped: the instance keeps them */
    return 0;
  }
  if (pf->len + n > MANIFEST_MAX) {
    pf->too_big = true;
    return -1;
  }
  {
    char *b = realloc(pf->body, pf->len + n + 1);
    if (b == NULL)
      return -1;
    pf->body = b;
  }
  memcpy(pf->body + pf->len, p, n);
  pf->len += n;
  pf->body[pf->len] = '\0';
  return 0;
}

/* A manifest arrived: queue what it names. */
static void walk(struct prefetch *pf, const struct item *it) {
  json_error_t jerr;
  json_t *j = json_loadb(pf->body, pf->len, 0, &jerr), *arr, *o;
  size_t i;

  if (j == NULL || !json_is_object(j)) {
    printf("  %s: not JSON (%s)\n", it->what, j == NULL ? jerr.text : "not an object");
    pf->failures++;
    json_decref(j);
    return;
  }
  arr = json_object_get(j, "manifests");
  if (json_is_array(arr)) {
    printf("  index %s: %zu manifest(s)\n", pf->ctype, json_array_size(arr));
    json_array_foreach(arr, i, o) {
      const char *dg = json_string_value(json_object_get(o, "digest"));
      json_t *pl = json_object_get(o, "platform");
      char label[64] = "";
      struct rp_digest d;

      if (dg == NULL || rp_digest_parse(dg, strlen(dg), &d) != 0) {
        printf("  index entry %zu: no usable digest\n", i);
        pf->failures++;
        continue;
      }
      if (json_is_object(pl)) {
        const char *os = json_string_value(json_object_get(pl, "os"));
        const char *arch = json_string_value(json_object_get(pl, "architecture"));
        const char *var = json_string_value(json_object_get(pl, "variant"));
        snprintf(label, sizeof(label), "%s/%s%s%s", os ? os : "?", arch ? arch : "?",
                 var ? "/" : "", var ? var : "");
      }
      if (it->depth + 1 > DEPTH_MAX) {
        printf("  %s: indexes nested too deep\n", dg);
        pf->failures++;
      } else if (!seen(pf, dg)) {
        push(pf, ITEM_MANIFEST, it->ref, dg, it->depth + 1, label);
      }
    }
  } else {
    json_t *cfg = json_object_get(j, "config");
    const char *dg = json_is_object(cfg) ? json_string_value(json_object_get(cfg, "digest")) : NULL;
    struct rp_digest d;

    if (dg != NULL && rp_digest_parse(dg, strlen(dg), &d) == 0 && !seen(pf, dg))
      push(pf, ITEM_BLOB, it->ref, dg, it->depth, NULL);
    arr = json_object_get(j, "layers");
    json_array_foreach(arr, i, o) {
      dg = json_string_value(json_object_get(o, "digest"));
      if (dg == NULL || rp_digest_parse(dg, strlen(dg), &d) != 0) {
        printf("  layer %zu: no usable digest\n", i);
        pf->failures++;
        continue;
      }
      if (!seen(pf, dg))
        push(pf, ITEM_BLOB, it->ref, dg, it->depth, NULL);
    }
  }
  json_decref(j);
}

static void on_done(struct rp_fetch *f, void *data, int status, const char *reason) {
  struct prefetch *pf = data;
  struct item *it = pf->cur;
  char size[32];

  (void)f;
  pf->fetch = NULL;
  if (status != 0 || pf->status != 200) {
    printf("  %s %s%s%s: %s\n", it->kind == ITEM_BLOB ? "blob" : "manifest", it->what,
           it->label[0] ? " " : "", it->label,
           status != 0 ? (pf->too_big ? "manifest larger than 4 MiB" : reason)
                       : rp_http_reason(pf->status));
    pf->failures++;
  } else if (it->kind == ITEM_BLOB) {
    human(pf->blob_bytes, size, sizeof(size));
    printf("  blob %s %s\n", it->what, size);
    pf->blobs++;
    pf->bytes += pf->blob_bytes;
  } else {
    if (it->depth > 0)
      printf("  manifest %s%s%s\n", it->what, it->label[0] ? " " : "", it->label);
    pf->manifests++;
    walk(pf, it);
  }
  fflush(stdout);
  free(it);
  pf->cur = NULL;
  next(pf);
}

static const struct rp_fetch_callbacks callbacks = {
    .on_head = on_head,
    .on_body = on_body,
    .on_done = on_done,
};

/* Outside any fetch callback: the engine cannot be destroyed from inside its
 * own. */
static void on_wind_down(uv_timer_t *t) {
  struct prefetch *pf = t->data;

  uv_close((uv_handle_t *)t, NULL);
  rp_upstream_destroy(pf->up);
  pf->up = NULL;
  if (pf->srv != NULL)
    rp_server_stop(pf->srv);
}

static void finish(struct prefetch *pf) {
  char size[32];
  double secs = (double)(uv_hrtime() - pf->start_ns) / 1e9;

  human(pf->bytes, size, sizeof(size));
  printf("prefetched %u manifest(s) and %u blob(s), %s, in %.1f s%s\n", pf->manifests, pf->blobs,
         size, secs, pf->failures ? "; with failures (above)" : "");
  fflush(stdout);
  uv_timer_init(pf->loop, &pf->wind_down);
  pf->wind_down.data = pf;
  uv_timer_start(&pf->wind_down, on_wind_down, 0, 0);
}

static void next(struct prefetch *pf) {
  struct item *it = pf->head;
  struct rp_http_header accept = {"Accept", 6, accept_all, sizeof(accept_all) - 1};
  struct rp_fetch_req req;
  char url[1024];

  if (it == NULL) {
    finish(pf);
    return;
  }
  pf->head = it->next;
  if (pf->head == NULL)
    pf->tail = NULL;
  pf->cur = it;
  if (it->kind == ITEM_MANIFEST && it->depth == 0) {
    printf("%s/%s%s%s%s%s\n", it->ref->registry, it->ref->repo, it->ref->tag[0] ? ":" : "",
           it->ref->tag, it->ref->digest[0] ? "@" : "", it->ref->digest);
    fflush(stdout);
  }
  {
    /* ns= in the query: an IPv6 registry's brackets are percent-encoded. */
    char ns[300];
    size_t o = 0;
    for (const char *r = it->ref->registry; *r != '\0' && o + 4 < sizeof(ns); r++) {
      if (*r == '[' || *r == ']')
        o += (size_t)snprintf(ns + o, sizeof(ns) - o, "%%%02X", (unsigned char)*r);
      else
        ns[o++] = *r;
    }
    ns[o] = '\0';
    snprintf(url, sizeof(url), "%s/v2/%s/%s/%s?ns=%s", pf->base, it->ref->repo,
             it->kind == ITEM_BLOB ? "blobs" : "manifests", it->what, ns);
  }
  memset(&req, 0, sizeof(req));
  req.method = "GET";
  req.url = url;
  req.headers = &accept;
  req.nheaders = it->kind == ITEM_MANIFEST ? 1 : 0;
  pf->status = 0;
  pf->len = 0;
  pf->too_big = false;
  pf->blob_bytes = 0;
  pf->fetch = rp_fetch_start(pf->up, &req, &callbacks, pf);
  if (pf->fetch == NULL) {
    printf("  %s: out of memory\n", it->what);
    pf->failures++;
    free(it);
    pf->cur = NULL;
    finish(pf);
  }
}

/* ---- the instance ---- */

/* An instance in this process on an ephemeral loopback port, when no
 * `regproxy run` holds the cache directory. 0 with pf->srv and pf->base;
 * 1 when the directory is held (then *held names the holder); else the
 * exit code after a message. */
static int start_instance(struct prefetch *pf, int argc, char **argv, char **envp, bool *held) {
  struct rp_config *scfg = NULL;
  char *err = NULL;
  int rc;

  *held = false;
  rc = rp_config_load(&scfg, argc, argv, envp, &err);
  if (rc == 0)
    rc = rp_config_listen_only(scfg, "127.0.0.1:0");
  if (rc != 0) {
    fprintf(stderr, "regproxy: %s\n", err != NULL ? err : rp_strerror(rc));
    free(err);
    rp_config_destroy(scfg);
    return 2;
  }
  rc = rp_server_create(&pf->srv, pf->loop, scfg, argc, argv, envp, &err);
  if (rc == 0)
    rc = rp_server_start(pf->srv, &err);
  if (rc != 0) {
    *held = err != NULL && strstr(err, "in use by") != NULL;
    if (!*held)
      fprintf(stderr, "regproxy: %s\n", err != NULL ? err : rp_strerror(rc));
    free(err);
    rp_server_destroy(pf->srv);
    pf->srv = NULL;
    return *held ? 1 : (rc == RP_ECONFIG ? 2 : 1);
  }
  rp_server_url(pf->srv, pf->base, sizeof(pf->base));
  return 0;
}

/* The running instance's URL from the lock file (it may still be starting). */
static int find_instance(struct prefetch *pf, const struct rp_config *cfg) {
  struct rp_cache_owner own;

  for (int waited = 0;; waited += 100) {
    if (rp_cache_owner_read(cfg->cache_dir, &own) != 0)
      memset(&own, 0, sizeof(own));
    if (own.admin[0] != '\0' || waited >= OWNER_WAIT_MS)
      break;
    uv_sleep(100);
  }
  if (own.admin[0] == '\0') {
    fprintf(stderr,
            "regproxy: cache directory %s is in use by a running regproxy (PID %ld) that records "
            "no listener in %s/lock; stop it, or give it a --listen address\n",
            cfg->cache_dir, own.pid, cfg->cache_dir);
    return 1;
  }
  snprintf(pf->base, sizeof(pf->base), "%s", own.admin);
  printf("through the running regproxy (PID %ld) at %s\n", own.pid, own.admin);
  return 0;
}

int rp_cli_prefetch(struct rp_config *cfg, int argc, char **argv, char **envp) {
  struct prefetch pf;
  struct rp_reg_ref *refs;
  struct rp_upstream_opts uo;
  size_t nrefs = cfg->args.n > 1 ? cfg->args.n - 1 : 0;
  bool held = false;
  uv_loop_t loop;
  int rc = 0;

  if (nrefs == 0) {
    fprintf(stderr, "regproxy: prefetch: no image given\n" PREFETCH_USAGE "\n");
    return 2;
  }
  refs = calloc(nrefs, sizeof(*refs));
  if (refs == NULL)
    return 1;
  for (size_t i = 0; i < nrefs; i++) {
    const char *why = NULL;
    const char *s = cfg->args.v[i + 1];
    if (rp_reg_ref_parse(s, strlen(s), &refs[i], &why) != 0) {
      fprintf(stderr, "regproxy: prefetch: %s: %s\n", s, why != NULL ? why : "not an image");
      free(refs);
      return 2;
    }
    if (!rp_registry_mirror_serves(cfg->mitm_list, cfg->mirror_default, refs[i].registry)) {
      fprintf(stderr,
              "regproxy: prefetch: %s: registry %s is not in mitm (nor mirror_default); "
              "regproxy fetches only from registries it is told to trust: add it with "
              "--mitm\n",
              s, refs[i].registry);
      free(refs);
      return 2;
    }
  }
  memset(&pf, 0, sizeof(pf));
  if (uv_loop_init(&loop) != 0) {
    free(refs);
    return 1;
  }
  pf.loop = &loop;
  pf.start_ns = uv_hrtime();
  /* Our own requests only go to the instance: no proxy, no overrides. */
  memset(&uo, 0, sizeof(uo));
  uo.connect_timeout_ms = cfg->connect_timeout_ms;
  if (!rp_log_enabled(RP_LOG_DEBUG))
    rp_log_setup(RP_LOG_WARN, cfg->log_format); /* no start-up lines or request logs */
  rc = start_instance(&pf, argc, argv, envp, &held);
  if (rc == 1 && held)
    rc = find_instance(&pf, cfg);
  if (rc == 0)
    rc = rp_upstream_create(&loop, &uo, &pf.up) == 0 ? 0 : 1;
  if (rc == 0) {
    for (size_t i = 0; i < nrefs; i++)
      push(&pf, ITEM_MANIFEST, &refs[i], refs[i].digest[0] ? refs[i].digest : refs[i].tag, 0, NULL);
    next(&pf);
    uv_run(&loop, UV_RUN_DEFAULT);
    rc = pf.failures ? 1 : 0;
  } else if (pf.srv != NULL) {
    rp_server_stop(pf.srv);
    uv_run(&loop, UV_RUN_DEFAULT);
  }
  rp_server_destroy(pf.srv);
  uv_run(&loop, UV_RUN_DEFAULT);
  (void)uv_loop_close(&loop);
  for (size_t i = 0; i < pf.nseen; i++)
    free(pf.seen[i]);
  free(pf.seen);
  free(pf.body);
  while (pf.head != NULL) {
    struct item *it = pf.head;
    pf.head = it->next;
    free(it);
  }
  free(refs);
  return rc;
}
