/* A program linked against libcuda.so.1 the ordinary way (no dlopen): its calls bind to
 * exported symbols, which the preloaded interposer provides first. Prototypes are declared
 * here as cuda.h declares them, so no CUDA header is needed to build it. */
#include <stdio.h>
#include <stddef.h>

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
typedef void *CUcontext;
CUresult cuInit(unsigned int);
CUresult cuDevicePrimaryCtxRetain(CUcontext *, int);
CUresult cuCtxSetCurrent(CUcontext);
CUresult cuMemAlloc_v2(CUdeviceptr *, size_t);
CUresult cuMemFree_v2(CUdeviceptr);
CUresult cuMemGetInfo_v2(size_t *, size_t *);
CUresult cuDeviceTotalMem_v2(size_t *, int);

int main(void) {
    CUcontext ctx;
    CUdeviceptr p[4096];
    size_t free_b, total_b, dev_total;
    int n = 0;
    CUresult r;
    if ((r = cuInit(0)) != 0) { printf("{\"error\":%d}\n", r); return 1; }
    cuDevicePrimaryCtxRetain(&ctx, 0);
    cuCtxSetCurrent(ctx);
    while (n < 4096 && (r = cuMemAlloc_v2(&p[n], 256u << 20)) == 0) n++;
    cuMemGetInfo_v2(&free_b, &total_b);
    cuDeviceTotalMem_v2(&dev_total, 0);
    printf("{\"granted\":%d,\"error\":%d,\"free\":%zu,\"total\":%zu,\"device_total\":%zu}\n", n, r, free_b, total_b, dev_total);
    while (n > 0) cuMemFree_v2(p[--n]);
    return 0;
}
