/* Reading the YAML config file with libyaml's event API. The file is a flat
 * mapping of keys to scalars or sequences of scalars; anything richer
 * (nested mappings, aliases, several documents) is refused here, and the
 * meaning of keys and values is left to config.c. Every value keeps the line
 * it came from so errors can say "FILE:LINE". */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "config/internal.h"
#include "regproxy/error.h"

struct reader {
  yaml_parser_t parser;
  const char *name;
  struct rp__yaml_doc *doc;
  char **err;
};

/* Keys and values are shown in messages with unprintable bytes replaced and
 * a bounded length, so a hostile file cannot inject lines into the log. */
void rp__show(const char *s, char *buf, size_t size) {
  size_t i = 0;
  for (; s[i] != '\0' && i + 4 < size; i++) {
    unsigned char c = (unsigned char)s[i];
    buf[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
  }
  if (s[i] != '\0') {
    memcpy(buf + i, "...", 3);
    i += 3;
  }
  buf[i] = '\0';
}

static int fail(struct reader *r, const yaml_mark_t *mark, const char *key, const char *what) {
  char k[80];
  if (r->err == NULL) {
    return RP_ECONFIG;
  }
  if (key != NULL) {
    rp__show(key, k, sizeof k);
    *r->err = rp__aprintf("%s:%zu: key %s: %s", r->name, mark->line + 1, k, what);
  } else {
    *r->err = rp__aprintf("%s:%zu: %s", r->name, mark->line + 1, what);
  }
  return *r->err != NULL ? RP_ECONFIG : RP_ENOMEM;
}

static int syntax_error(struct reader *r) {
  yaml_parser_t *p = &r->parser;
  const char *problem = p->problem != NULL ? p->problem : "malformed YAML";
  int rc;

  if (p->error == YAML_MEMORY_ERROR) {
    return RP_ENOMEM;
  }
  if (r->err == NULL) {
    return RP_ECONFIG;
  }
  if (p->error == YAML_READER_ERROR) {
    /* Encoding errors carry a byte offset rather than a mark. */
    *r->err = rp__aprintf("%s: bad YAML: %s at byte %zu", r->name, problem, p->problem_offset);
  } else if (p->context != NULL) {
    *r->err = rp__aprintf("%s:%zu: bad YAML: %s (%s at line %zu)", r->name,
                          p->problem_mark.line + 1, problem, p->context, p->context_mark.line + 1);
  } else {
    *r->err = rp__aprintf("%s:%zu: bad YAML: %s", r->name, p->problem_mark.line + 1, problem);
  }
  rc = *r->err != NULL ? RP_ECONFIG : RP_ENOMEM;
  return rc;
}

static int next_event(struct reader *r, yaml_event_t *ev) {
  if (!yaml_parser_parse(&r->parser, ev)) {
    memset(ev, 0, sizeof *ev);
    return syntax_error(r);
  }
  return 0;
}

static bool is_plain_null(const yaml_event_t *ev) {
  const char *v = (const char *)ev->data.scalar.value;
  size_t n = ev->data.scalar.length;
  if (ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) {
    return false;
  }
  return n == 0 || strcmp(v, "~") == 0 || strcmp(v, "null") == 0 || strcmp(v, "Null") == 0 ||
         strcmp(v, "NULL") == 0;
}

/* Copy a scalar event's text; NULL (with rc set) when it holds a NUL byte,
 * which C strings cannot carry. */
static int scalar_text(struct reader *r, const yaml_event_t *ev, const char *key, char **out) {
  const char *v = (const char *)ev->data.scalar.value;
  size_t n = ev->data.scalar.length;

  *out = NULL;
  if (memchr(v, '\0', n) != NULL) {
    return fail(r, &ev->start_mark, key, "value contains a NUL byte");
  }
  *out = strdup(is_plain_null(ev) ? "" : v);
  return *out != NULL ? 0 : RP_ENOMEM;
}

static int push_value(struct rp__yaml_entry *e, char *text, unsigned line) {
  struct rp__yaml_value *v = realloc(e->values, (e->n_values + 1) * sizeof *v);
  if (v == NULL) {
    return RP_ENOMEM;
  }
  e->values = v;
  e->values[e->n_values].text = text;
  e->values[e->n_values].line = line;
  e->n_values++;
  return 0;
}

/* Read a value (scalar or sequence of scalars) for entry e. */
static int read_value(struct reader *r, struct rp__yaml_entry *e) {
  yaml_event_t ev;
  char *text = NULL;
  int rc;

  rc = next_event(r, &ev);
  if (rc != 0) {
    return rc;
  }
  switch (ev.type) {
  case YAML_SCALAR_EVENT:
    rc = scalar_text(r, &ev, e->key, &text);
    if (rc == 0) {
      rc = push_value(e, text, (unsigned)ev.start_mark.line + 1);
      if (rc == 0) {
        text = NULL;
      }
    }
    break;
  case YAML_SEQUENCE_START_EVENT:
    e->is_seq = true;
    for (;;) {
      yaml_event_delete(&ev);
      rc = next_event(r, &ev);
      if (rc != 0) {
        return rc;
      }
      if (ev.type == YAML_SEQUENCE_END_EVENT) {
        break;
      }
      if (ev.type == YAML_ALIAS_EVENT) {
        rc = fail(r, &ev.start_mark, e->key, "aliases are not supported");
        break;
      }
      if (ev.type != YAML_SCALAR_EVENT) {
        rc = fail(r, &ev.start_mark, e->key, "wrong node type: sequence items must be scalars");
        break;
      }
      rc = scalar_text(r, &ev, e->key, &text);
      if (rc != 0) {
        break;
      }
      rc = push_value(e, text, (unsigned)ev.start_mark.line + 1);
      if (rc != 0) {
        break;
      }
      text = NULL;
    }
    break;
  case YAML_MAPPING_START_EVENT:
    rc = fail(r, &ev.start_mark, e->key,
              "wrong node type: expected a scalar or a sequence, got a mapping");
    break;
  case YAML_ALIAS_EVENT: rc = fail(r, &ev.start_mark, e->key, "aliases are not supported"); break;
  default: rc = fail(r, &ev.start_mark, e->key, "unexpected YAML event"); break;
  }
  free(text);
  yaml_event_delete(&ev);
  return rc;
}

static int read_mapping(struct reader *r) {
  struct rp__yaml_doc *doc = r->doc;
  yaml_event_t ev;
  int rc;

  for (;;) {
    struct rp__yaml_entry *entries;
    struct rp__yaml_entry *e;

    rc = next_event(r, &ev);
    if (rc != 0) {
      return rc;
    }
    if (ev.type == YAML_MAPPING_END_EVENT) {
      yaml_event_delete(&ev);
      return 0;
    }
    if (ev.type == YAML_ALIAS_EVENT) {
      rc = fail(r, &ev.start_mark, NULL, "aliases are not supported");
      goto out;
    }
    if (ev.type != YAML_SCALAR_EVENT) {
      rc = fail(r, &ev.start_mark, NULL, "keys must be scalars");
      goto out;
    }
    entries = realloc(doc->entries, (doc->n + 1) * sizeof *entries);
    if (entries == NULL) {
      rc = RP_ENOMEM;
      goto out;
    }
    doc->entries = entries;
    e = &doc->entries[doc->n];
    memset(e, 0, sizeof *e);
    e->line = (unsigned)ev.start_mark.line + 1;
    rc = scalar_text(r, &ev, NULL, &e->key);
    if (rc != 0) {
      goto out;
    }
    doc->n++;
    yaml_event_delete(&ev);
    rc = read_value(r, e);
    if (rc != 0) {
      return rc;
    }
  }
out:
  yaml_event_delete(&ev);
  return rc;
}

static int read_stream(struct reader *r) {
  yaml_event_t ev;
  int rc;

  rc = next_event(r, &ev); /* STREAM-START */
  if (rc != 0) {
    return rc;
  }
  yaml_event_delete(&ev);
  rc = next_event(r, &ev);
  if (rc != 0) {
    return rc;
  }
  if (ev.type == YAML_STREAM_END_EVENT) {
    goto out; /* an empty file */
  }
  yaml_event_delete(&ev); /* DOCUMENT-START */
  rc = next_event(r, &ev);
  if (rc != 0) {
    return rc;
  }
  if (ev.type == YAML_MAPPING_START_EVENT) {
    yaml_event_delete(&ev);
    rc = read_mapping(r);
    if (rc != 0) {
      return rc;
    }
  } else if (ev.type == YAML_SCALAR_EVENT && is_plain_null(&ev)) {
    yaml_event_delete(&ev); /* "---" alone: an empty document */
  } else {
    rc = fail(r, &ev.start_mark, NULL, "the top level must be a mapping of keys to values");
    goto out;
  }
  rc = next_event(r, &ev); /* DOCUMENT-END */
  if (rc != 0) {
    return rc;
  }
  yaml_event_delete(&ev);
  rc = next_event(r, &ev);
  if (rc != 0) {
    return rc;
  }
  if (ev.type != YAML_STREAM_END_EVENT) {
    rc = fail(r, &ev.start_mark, NULL, "only one YAML document is allowed");
  }
out:
  yaml_event_delete(&ev);
  return rc;
}

void rp__yaml_doc_clear(struct rp__yaml_doc *doc) {
  if (doc == NULL) {
    return;
  }
  for (size_t i = 0; i < doc->n; i++) {
    struct rp__yaml_entry *e = &doc->entries[i];
    for (size_t j = 0; j < e->n_values; j++) {
      free(e->values[j].text);
    }
    free(e->values);
    free(e->key);
  }
  free(doc->entries);
  doc->entries = NULL;
  doc->n = 0;
}

int rp__yaml_read_buffer(const char *name, const void *buf, size_t len, struct rp__yaml_doc *doc,
                         char **err) {
  struct reader r;
  int rc;

  memset(doc, 0, sizeof *doc);
  memset(&r, 0, sizeof r);
  r.name = name;
  r.doc = doc;
  r.err = err;
  if (!yaml_parser_initialize(&r.parser)) {
    return RP_ENOMEM;
  }
  yaml_parser_set_input_string(&r.parser, buf, len);
  rc = read_stream(&r);
  yaml_parser_delete(&r.parser);
  if (rc != 0) {
    rp__yaml_doc_clear(doc);
  }
  return rc;
}

int rp__yaml_read_file(const char *path, struct rp__yaml_doc *doc, char **err) {
  FILE *fp = NULL;
  char *buf = NULL;
  size_t len = 0;
  int rc;

  memset(doc, 0, sizeof *doc);
  fp = fopen(path, "rb");
  if (fp == NULL) {
    *err = rp__aprintf("%s: cannot open config file: %s", path, strerror(errno));
    rc = *err != NULL ? RP_ECONFIG : RP_ENOMEM;
    goto out;
  }
  buf = malloc(RP_CONFIG_MAX_FILE + 1);
  if (buf == NULL) {
    rc = RP_ENOMEM;
    goto out;
  }
  len = fread(buf, 1, RP_CONFIG_MAX_FILE + 1, fp);
  if (ferror(fp)) {
    *err = rp__aprintf("%s: cannot read config file: %s", path, strerror(errno));
    rc = *err != NULL ? RP_ECONFIG : RP_ENOMEM;
    goto out;
  }
  if (len > RP_CONFIG_MAX_FILE) {
    *err = rp__aprintf("%s: config file larger than %d bytes", path, RP_CONFIG_MAX_FILE);
    rc = *err != NULL ? RP_ECONFIG : RP_ENOMEM;
    goto out;
  }
  rc = rp__yaml_read_buffer(path, buf, len, doc, err);
out:
  free(buf);
  if (fp != NULL) {
    fclose(fp);
  }
  return rc;
}
