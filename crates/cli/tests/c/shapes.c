/* Program shapes for the compute fault and priority tests, linked against libcuda.so.1 the
 * ordinary way. `busy` kernels occupy the (simulated) GPU for as many microseconds as their
 * argument. (The shares across workload shapes are the matrix of `gpuslice bench isolation`.)
 *
 *   shapes SECONDS train N US       N launches of US µs, then cuStreamSynchronize; repeat
 *   shapes SECONDS idle P US        P processes that launch one kernel, then sleep SECONDS
 *
 * Prints {"launches":N,"errors":E,"pid":P} per process. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef int CUresult;
typedef void *CUcontext, *CUmodule, *CUfunction, *CUstream;
CUresult cuInit(unsigned int);
CUresult cuDevicePrimaryCtxRetain(CUcontext *, int);
CUresult cuCtxSetCurrent(CUcontext);
CUresult cuModuleLoadData(CUmodule *, const void *);
CUresult cuModuleGetFunction(CUfunction *, CUmodule, const char *);
CUresult cuStreamCreate(CUstream *, unsigned int);
CUresult cuStreamSynchronize(CUstream);
CUresult cuCtxSynchronize(void);
CUresult cuLaunchKernel(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                        unsigned, CUstream, void **, void **);

static double secs;
static unsigned long long us;
static volatile long launches, errors;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static CUfunction busy(void) {
    CUmodule m;
    CUfunction f;
    cuModuleLoadData(&m, "gpuslice-sim-image\nkernel busy\n");
    cuModuleGetFunction(&f, m, "busy");
    return f;
}

static void launch(CUfunction f, CUstream s) {
    unsigned long long arg = us;
    void *params[] = {&arg};
    if (cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, s, params, NULL) != 0)
        __sync_fetch_and_add(&errors, 1);
    else
        __sync_fetch_and_add(&launches, 1);
}

static CUcontext primary(void) {
    CUcontext c;
    cuDevicePrimaryCtxRetain(&c, 0);
    cuCtxSetCurrent(c);
    return c;
}

static void train(int n) {
    primary();
    CUfunction f = busy();
    CUstream s;
    cuStreamCreate(&s, 0);
    double end = now() + secs;
    while (now() < end) {
        for (int i = 0; i < n; i++) launch(f, s);
        cuStreamSynchronize(s);
    }
}

static void report(void) {
    printf("{\"launches\":%ld,\"errors\":%ld,\"pid\":%d}\n", launches, errors, getpid());
    fflush(stdout);
}

int main(int argc, char **argv) {
    if (argc < 5) return 2;
    secs = atof(argv[1]);
    const char *shape = argv[2];
    int n = atoi(argv[3]);
    us = strtoull(argv[4], NULL, 10);
    if (!strcmp(shape, "idle")) {
        for (int i = 1; i < n; i++)
            if (fork() == 0) break;
    }
    if (cuInit(0) != 0) { printf("{\"error\":\"cuInit\"}\n"); return 1; }
    if (!strcmp(shape, "train")) {
        train(n);
    } else if (!strcmp(shape, "idle")) {
        primary();
        CUfunction f = busy();
        launch(f, NULL);
        cuCtxSynchronize();
        printf("{\"ready\":%d}\n", getpid());
        fflush(stdout);
        usleep((useconds_t)(secs * 1e6));
    } else {
        return 2;
    }
    report();
    if (!strcmp(shape, "idle")) while (wait(NULL) > 0) {}
    return 0;
}
