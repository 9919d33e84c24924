/* Drives NVIDIA's genuine CUDA runtime (libcudart.so.12). The runtime finds the driver with
 * dlopen + dlsym("cuGetProcAddress…") and fetches every entry point through it. */
#include <dlfcn.h>
#include <stdio.h>
int main(int argc, char **argv) {
    void *rt = dlopen(argv[1], RTLD_NOW);
    if (!rt) { printf("{\"error\":\"%s\"}\n", dlerror()); return 1; }
    int (*count)(int *) = (int (*)(int *))dlsym(rt, "cudaGetDeviceCount");
    int n = -1;
    int r = count(&n);
    printf("{\"cudaGetDeviceCount\":%d,\"count\":%d}\n", r, n);
    return 0;
}
