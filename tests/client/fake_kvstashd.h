/* fake_kvstashd.h - an in-memory STAND-IN for kvstashd used by the client
 * tests (see fake_kvstashd.c). */
#ifndef FAKE_KVSTASHD_H
#define FAKE_KVSTASHD_H
typedef struct fake_kvstashd fake_kvstashd;
fake_kvstashd *fake_kvstashd_start(const char *url); /* NULL on failure */
void fake_kvstashd_stop(fake_kvstashd *f);
#endif
