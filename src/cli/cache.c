/* `regproxy cache ls|du|verify|gc|rm <digest>` (SPEC §4), direct mode: the
 * command opens the cache directory itself (taking its lock). When a running
 * regproxy holds the lock it says so and fails; talking to that instance
 * through its admin endpoint is not done here. */
#include <dirent.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <uv.h>

#include "regproxy/cache.h"
#include "regproxy/cli.h"
#include "regproxy/config.h"
#include "regproxy/error.h"

#define CACHE_USAGE "usage: regproxy cache ls|du|verify|gc|rm <digest> [--cache-dir DIR]"

struct obj_list {
  struct rp_object_info *v;
  size_t n, cap;
  bool oom;
};

static bool collect(const struct rp_object_info *info, void *data) {
  struct obj_list *l = data;

  if (l->n == l->cap) {
    size_t ncap = l->cap != 0 ? l->cap * 2 : 64;
    struct rp_object_info *nv = realloc(l->v, ncap * sizeof *nv);
    if (nv == NULL) {
      l->oom = true;
      return false;
    }
    l->v = nv;
    l->cap = ncap;
  }
  l->v[l->n++] = *info;
  return true;
}

/* Newest first; objects come most recently used first, so ties keep that order. */
static int by_access_desc(const void *a, const void *b) {
  const struct rp_object_info *x = a, *y = b;

  if (x->last_access != y->last_access)
    return x->last_access > y->last_access ? -1 : 1;
  return x < y ? -1 : (x > y ? 1 : 0);
}

static void iso8601(int64_t t, char *buf, size_t n) {
  time_t tt = (time_t)t;
  struct tm tm;

  if (gmtime_r(&tt, &tm) == NULL || strftime(buf, n, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
    snprintf(buf, n, "-");
}

/* Files and bytes under blobs/ (before the open removes files without a row). */
static void scan_blobs(const char *dir, uint64_t *files, uint64_t *bytes) {
  static const int algos[] = {256, 512};
  char path[4096];
  struct stat st;

  *files = *bytes = 0;
  for (size_t a = 0; a < 2; a++) {
    for (unsigned i = 0; i < 256; i++) {
      struct dirent *e;
      DIR *d;

      snprintf(path, sizeof path, "%s/blobs/sha%d/%02x", dir, algos[a], i);
      d = opendir(path);
      if (d == NULL)
        continue;
      while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
          continue;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
          (*files)++;
          if (S_ISREG(st.st_mode))
            *bytes += (uint64_t)st.st_size;
        }
      }
      closedir(d);
    }
  }
}

static int open_failed(const struct rp_config *cfg, int rc, char *err) {
  const char *pid = err != NULL ? strstr(err, "in use by PID ") : NULL;

  if (pid != NULL) {
    fprintf(stderr,
            "regproxy: cache directory %s is in use by a running regproxy (PID %ld); stop it "
            "or use its admin endpoint\n",
            cfg->cache_dir, strtol(pid + strlen("in use by PID "), NULL, 10));
    return 1;
  }
  fprintf(stderr, "regproxy: %s\n", err != NULL ? err : rp_strerror(rc));
  return err != NULL && strstr(err, "in use by") != NULL ? 1 : (rc == RP_ECONFIG ? 2 : 1);
}

static int cmd_ls(struct rp_cache *c) {
  struct obj_list l = {0};
  char dg[160], when[64];

  rp_cache_foreach(c, collect, &l);
  if (l.oom) {
    free(l.v);
    fprintf(stderr, "regproxy: cache ls: out of memory\n");
    return 1;
  }
  if (l.n > 1)
    qsort(l.v, l.n, sizeof *l.v, by_access_desc);
  for (size_t i = 0; i < l.n; i++) {
    rp_digest_format(&l.v[i].digest, dg, sizeof dg);
    iso8601(l.v[i].last_access, when, sizeof when);
    printf("%s %" PRIu64 " %s %s\n", dg, l.v[i].size,
           l.v[i].media_type[0] != '\0' ? l.v[i].media_type : "-", when);
  }
  free(l.v);
  return 0;
}

static int cmd_du(struct rp_cache *c, const struct rp_config *cfg) {
  struct rp_cache_stats st;

  rp_cache_stats(c, &st);
  printf("%" PRIu64 " bytes in %" PRIu64 " objects (cache_max_size %" PRIu64 " bytes)\n",
         st.size_bytes, st.objects, cfg->cache_max_size);
  return 0;
}

static int cmd_verify(struct rp_cache *c) {
  struct obj_list l = {0};
  char dg[160];
  size_t bad = 0;

  rp_cache_foreach(c, collect, &l);
  if (l.oom) {
    free(l.v);
    fprintf(stderr, "regproxy: cache verify: out of memory\n");
    return 1;
  }
  for (size_t i = 0; i < l.n; i++) {
    int rc = rp_cache_verify_one(c, &l.v[i].digest);
    rp_digest_format(&l.v[i].digest, dg, sizeof dg);
    if (rc == 0) {
      printf("ok %s\n", dg);
      continue;
    }
    bad++;
    printf("BAD %s (%s)\n", dg,
           rc == RP_EDIGEST ? "content does not match its digest or size" : rp_strerror(rc));
    rc = rp_cache_remove(c, &l.v[i].digest);
    if (rc != 0)
      fprintf(stderr, "regproxy: cache verify: cannot remove %s: %s\n", dg, rp_strerror(rc));
  }
  printf("%zu object(s) verified, %zu bad%s\n", l.n, bad, bad > 0 ? " (removed)" : "");
  free(l.v);
  return bad > 0 ? 1 : 0;
}

static int cmd_gc(struct rp_cache *c, const struct rp_config *cfg, uint64_t files_before,
                  uint64_t bytes_before) {
  struct rp_cache_stats st;
  uint64_t freed = 0, evicted, stray_files, stray_bytes;

  rp_cache_stats(c, &st);
  stray_files = files_before > st.objects ? files_before - st.objects : 0;
  stray_bytes = bytes_before > st.size_bytes ? bytes_before - st.size_bytes : 0;
  evicted = rp_cache_trim(c, cfg->cache_max_size, &freed);
  rp_cache_stats(c, &st);
  printf("evicted %" PRIu64 " object(s), %" PRIu64 " bytes\n", evicted, freed);
  printf("removed %" PRIu64 " file(s) without an index row, %" PRIu64 " bytes\n", stray_files,
         stray_bytes);
  printf("freed %" PRIu64 " bytes; %" PRIu64 " bytes in %" PRIu64
         " objects remain (cache_max_size %" PRIu64 " bytes)\n",
         freed + stray_bytes, st.size_bytes, st.objects, cfg->cache_max_size);
  return 0;
}

static int cmd_rm(struct rp_cache *c, const struct rp_digest *d, const char *arg) {
  int rc = rp_cache_remove(c, d);

  if (rc == RP_EINVAL) {
    fprintf(stderr, "regproxy: cache rm: %s is not in the cache\n", arg);
    return 1;
  }
  if (rc != 0) {
    fprintf(stderr, "regproxy: cache rm: %s: %s\n", arg, rp_strerror(rc));
    return 1;
  }
  printf("removed %s\n", arg);
  return 0;
}

int rp_cli_cache(struct rp_config *cfg) {
  static const char *const verbs[] = {"ls", "du", "verify", "gc", "rm"};
  const char *verb = cfg->args.n >= 2 ? cfg->args.v[1] : NULL;
  size_t want_args = 2;
  struct rp_cache_opts co;
  struct rp_cache *c = NULL;
  struct rp_digest d;
  uint64_t files_before = 0, bytes_before = 0;
  bool known = false;
  uv_loop_t loop;
  char *err = NULL;
  int rc;

  if (verb == NULL) {
    fprintf(stderr, "regproxy: cache: missing verb\n" CACHE_USAGE "\n");
    return 2;
  }
  for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++)
    known = known || strcmp(verb, verbs[i]) == 0;
  if (!known) {
    fprintf(stderr, "regproxy: cache: unknown verb '%s'\n" CACHE_USAGE "\n", verb);
    return 2;
  }
  if (strcmp(verb, "rm") == 0) {
    want_args = 3;
    if (cfg->args.n < 3) {
      fprintf(stderr, "regproxy: cache rm: missing digest\n" CACHE_USAGE "\n");
      return 2;
    }
    if (rp_digest_parse(cfg->args.v[2], strlen(cfg->args.v[2]), &d) != 0) {
      fprintf(stderr, "regproxy: cache rm: '%s' is not a sha256/sha512 digest\n" CACHE_USAGE "\n",
              cfg->args.v[2]);
      return 2;
    }
  }
  if (cfg->args.n > want_args) {
    fprintf(stderr, "regproxy: cache %s: unexpected argument '%s'\n" CACHE_USAGE "\n", verb,
            cfg->args.v[want_args]);
    return 2;
  }
  if (strcmp(verb, "gc") == 0)
    scan_blobs(cfg->cache_dir, &files_before, &bytes_before);
  rc = uv_loop_init(&loop);
  if (rc != 0) {
    fprintf(stderr, "regproxy: cache: %s\n", uv_strerror(rc));
    return 1;
  }
  memset(&co, 0, sizeof co);
  co.dir = cfg->cache_dir;
  co.max_size = 0; /* nothing is evicted at open; gc trims explicitly */
  co.orphan_fill_max = cfg->orphan_fill_max;
  rc = rp_cache_open(&loop, &co, &c, &err);
  if (rc != 0) {
    rc = open_failed(cfg, rc, err);
    free(err);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return rc;
  }
  if (strcmp(verb, "ls") == 0)
    rc = cmd_ls(c);
  else if (strcmp(verb, "du") == 0)
    rc = cmd_du(c, cfg);
  else if (strcmp(verb, "verify") == 0)
    rc = cmd_verify(c);
  else if (strcmp(verb, "gc") == 0)
    rc = cmd_gc(c, cfg, files_before, bytes_before);
  else
    rc = cmd_rm(c, &d, cfg->args.v[2]);
  /* Queued index writes and file removals run while the cache closes. */
  rp_cache_close(c);
  uv_run(&loop, UV_RUN_DEFAULT);
  if (uv_loop_close(&loop) != 0)
    fprintf(stderr, "regproxy: cache: event loop did not close cleanly\n");
  if (fflush(stdout) != 0) {
    fprintf(stderr, "regproxy: cannot write to stdout\n");
    rc = 1;
  }
  return rc;
}
