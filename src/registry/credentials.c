/* The registry auth client, part two: registry keys and the credentials of
 * a docker config.json (auths, credHelpers refused with a message, the
 * identity token), read once and kept in memory. */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "internal.h"
#include "regproxy/auth.h"
#include "regproxy/error.h"
#include "regproxy/log.h"
#include "regproxy/util.h"

#define CONFIG_MAX (4 * 1024 * 1024)
#define KEY_MAX    RP__AUTH_KEY_MAX

/* ---- registry keys and credentials ---------------------------------------- */

void rp_auth_registry_key(const char *registry, char *out, size_t outsz) {
  static const char *const hub[] = {"docker.io", "index.docker.io", "registry-1.docker.io",
                                    "registry.hub.docker.com"};
  const char *p = registry != NULL ? registry : "";
  size_t j = 0;
  if (outsz == 0)
    return;
  if (strncasecmp(p, "https://", 8) == 0)
    p += 8;
  else if (strncasecmp(p, "http://", 7) == 0)
    p += 7;
  for (; *p != '\0' && *p != '/' && j + 1 < outsz; p++)
    out[j++] = (char)tolower((unsigned char)*p);
  out[j] = '\0';
  for (size_t i = 0; i < sizeof(hub) / sizeof(hub[0]); i++) {
    size_t hl = strlen(hub[i]);
    if (strncmp(out, hub[i], hl) == 0 && (out[hl] == '\0' || strcmp(out + hl, ":443") == 0)) {
      snprintf(out, outsz, "docker.io");
      return;
    }
  }
}

struct cred {
  char key[KEY_MAX];
  char *user;
  char *pass;
};

struct rp_auth_creds {
  struct cred *v;
  size_t n;
};

void rp_auth_creds_destroy(struct rp_auth_creds *c) {
  if (c == NULL)
    return;
  for (size_t i = 0; i < c->n; i++) {
    free(c->v[i].user);
    if (c->v[i].pass != NULL) {
      explicit_bzero(c->v[i].pass, strlen(c->v[i].pass));
      free(c->v[i].pass);
    }
  }
  free(c->v);
  free(c);
}

size_t rp_auth_creds_count(const struct rp_auth_creds *c) {
  return c != NULL ? c->n : 0;
}

int rp_auth_creds_lookup(const struct rp_auth_creds *c, const char *registry, const char **user,
                         const char **pass) {
  char key[KEY_MAX];
  if (c == NULL)
    return UV_ENOENT;
  rp_auth_registry_key(registry, key, sizeof(key));
  for (size_t i = 0; i < c->n; i++) {
    if (strcmp(c->v[i].key, key) == 0) {
      *user = c->v[i].user;
      *pass = c->v[i].pass;
      return 0;
    }
  }
  return UV_ENOENT;
}

static int set_err(char **err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int set_err(char **err, const char *fmt, ...) {
  va_list ap;
  if (err == NULL)
    return 0;
  va_start(ap, fmt);
  if (vasprintf(err, fmt, ap) < 0)
    *err = NULL;
  va_end(ap);
  return 0;
}

/* One "auths" entry: 0 with user and pass set, 1 when it holds no credentials,
 * or RP_ECONFIG with *why. */
static int cred_from_entry(json_t *entry, char **user, char **pass, const char **why) {
  json_t *auth = json_object_get(entry, "auth");
  json_t *ju = json_object_get(entry, "username");
  json_t *jp = json_object_get(entry, "password");
  *user = *pass = NULL;
  if (auth != NULL && !json_is_string(auth)) {
    *why = "\"auth\" is not a string";
    return RP_ECONFIG;
  }
  if (auth != NULL && json_string_length(auth) > 0) {
    char *plain = NULL;
    size_t plen = 0;
    int rc = rp_base64_decode(json_string_value(auth), json_string_length(auth), &plain, &plen);
    if (rc == RP_ENOMEM)
      return rc;
    if (rc != 0) {
      *why = "\"auth\" is not valid base64";
      return RP_ECONFIG;
    }
    char *colon = memchr(plain, ':', plen);
    if (colon == NULL || colon == plain || memchr(plain, '\0', plen) != NULL) {
      explicit_bzero(plain, plen);
      free(plain);
      *why = "\"auth\" does not decode to user:password";
      return RP_ECONFIG;
    }
    *user = strndup(plain, (size_t)(colon - plain));
    *pass = strdup(colon + 1);
    explicit_bzero(plain, plen);
    free(plain);
  } else if (json_is_string(ju) && json_string_length(ju) > 0) {
    if (jp != NULL && !json_is_string(jp)) {
      *why = "\"password\" is not a string";
      return RP_ECONFIG;
    }
    *user = strdup(json_string_value(ju));
    *pass = strdup(jp != NULL ? json_string_value(jp) : "");
  } else {
    return 1; /* e.g. {} left by a credential store, or an identitytoken only */
  }
  if (*user == NULL || *pass == NULL) {
    free(*user);
    free(*pass);
    *user = *pass = NULL;
    return RP_ENOMEM;
  }
  return 0;
}

int rp_auth_creds_parse(const char *json, size_t len, const char *name, struct rp_auth_creds **out,
                        char **err) {
  int rc = 0;
  json_error_t jerr;
  json_t *root = NULL, *auths, *entry;
  const char *key;
  struct rp_auth_creds *c = calloc(1, sizeof(*c));
  if (err != NULL)
    *err = NULL;
  if (c == NULL)
    return RP_ENOMEM;
  root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
  if (root == NULL) {
    set_err(err, "%s:%d: %s", name, jerr.line, jerr.text);
    rc = RP_ECONFIG;
    goto out;
  }
  if (!json_is_object(root)) {
    set_err(err, "%s: not a JSON object", name);
    rc = RP_ECONFIG;
    goto out;
  }
  if (json_object_get(root, "credsStore") != NULL || json_object_get(root, "credHelpers") != NULL)
    rp_log_warn("%s: credential helpers (credsStore/credHelpers) are not used; only \"auths\" "
                "entries are read",
                name);
  auths = json_object_get(root, "auths");
  if (auths == NULL)
    goto done;
  if (!json_is_object(auths)) {
    set_err(err, "%s: \"auths\" is not an object", name);
    rc = RP_ECONFIG;
    goto out;
  }
  c->v = calloc(json_object_size(auths) + 1, sizeof(*c->v));
  if (c->v == NULL) {
    rc = RP_ENOMEM;
    goto out;
  }
  json_object_foreach(auths, key, entry) {
    char *user = NULL, *pass = NULL, k[KEY_MAX];
    const char *why = NULL, *u0, *p0;
    if (!json_is_object(entry)) {
      set_err(err, "%s: auths.\"%s\" is not an object", name, key);
      rc = RP_ECONFIG;
      goto out;
    }
    rc = cred_from_entry(entry, &user, &pass, &why);
    if (rc == 1) {
      rc = 0;
      continue;
    }
    if (rc != 0) {
      if (why != NULL)
        set_err(err, "%s: auths.\"%s\": %s", name, key, why);
      goto out;
    }
    rp_auth_registry_key(key, k, sizeof(k));
    if (k[0] == '\0' || rp_auth_creds_lookup(c, k, &u0, &p0) == 0) {
      /* No host, or a second spelling of a registry already read: the
       * first entry wins, as in docker. */
      free(user);
      explicit_bzero(pass, strlen(pass));
      free(pass);
      continue;
    }
    snprintf(c->v[c->n].key, sizeof(c->v[c->n].key), "%s", k);
    c->v[c->n].user = user;
    c->v[c->n].pass = pass;
    c->n++;
  }
done:
  *out = c;
  c = NULL;
out:
  json_decref(root);
  rp_auth_creds_destroy(c);
  return rc;
}

int rp_auth_creds_load(const char *path, struct rp_auth_creds **out, char **err) {
  int rc = 0;
  char *buf = NULL;
  size_t len = 0;
  FILE *fp = fopen(path, "rb");
  if (err != NULL)
    *err = NULL;
  if (fp == NULL) {
    rc = -errno;
    set_err(err, "%s: %s", path, strerror(errno));
    return rc;
  }
  buf = malloc(CONFIG_MAX + 1);
  if (buf == NULL) {
    rc = RP_ENOMEM;
    goto out;
  }
  len = fread(buf, 1, CONFIG_MAX + 1, fp);
  if (ferror(fp)) {
    rc = RP_ECONFIG;
    set_err(err, "%s: read error", path);
    goto out;
  }
  if (len > CONFIG_MAX) {
    rc = RP_ECONFIG;
    set_err(err, "%s: larger than %d bytes", path, CONFIG_MAX);
    goto out;
  }
  rc = rp_auth_creds_parse(buf, len, path, out, err);
out:
  if (buf != NULL) {
    explicit_bzero(buf, len);
    free(buf);
  }
  fclose(fp);
  return rc;
}
