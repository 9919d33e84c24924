/* A CUDA program that reaches the driver by absolute path, the way a process that escaped the
 * interposer would (environment cleared, no LD_PRELOAD, its own copy of the driver): creates a
 * context, holds BYTES on device 0, prints one JSON line and waits to be killed. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

typedef int CUresult;
typedef int CUdevice;
typedef void *CUcontext;
typedef unsigned long long CUdeviceptr;

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: escape LIBCUDA BYTES\n");
        return 2;
    }
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "dlopen %s: %s\n", argv[1], dlerror());
        return 2;
    }
    CUresult (*init)(unsigned) = (CUresult (*)(unsigned))dlsym(h, "cuInit");
    CUresult (*get)(CUdevice *, int) = (CUresult (*)(CUdevice *, int))dlsym(h, "cuDeviceGet");
    CUresult (*ctx)(CUcontext *, unsigned, CUdevice) =
        (CUresult (*)(CUcontext *, unsigned, CUdevice))dlsym(h, "cuCtxCreate_v2");
    CUresult (*alloc)(CUdeviceptr *, size_t) =
        (CUresult (*)(CUdeviceptr *, size_t))dlsym(h, "cuMemAlloc_v2");
    if (!init || !get || !ctx || !alloc) {
        fprintf(stderr, "missing driver entry points\n");
        return 2;
    }
    unsigned long long bytes = strtoull(argv[2], NULL, 10);
    CUdevice d = 0;
    CUcontext c = NULL;
    CUdeviceptr p = 0;
    CUresult r = init(0);
    if (r == 0) r = get(&d, 0);
    if (r == 0) r = ctx(&c, 0, d);
    if (r == 0) r = alloc(&p, (size_t)bytes);
    printf("{\"pid\":%d,\"error\":%d,\"held\":%llu}\n", (int)getpid(), r, bytes);
    fflush(stdout);
    for (;;) pause();
}
