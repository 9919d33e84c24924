/* A wrapper in the classic style: defines value() and reaches the next definition with
 * dlsym(RTLD_NEXT). If an interposed dlsym answered RTLD_NEXT relative to itself rather than
 * to this library, this would find itself and recurse forever. */
#define _GNU_SOURCE
#include <dlfcn.h>
int value(void) {
    int (*next)(void) = (int (*)(void))dlsym(RTLD_NEXT, "value");
    return next ? 1 + next() : -1000;
}
