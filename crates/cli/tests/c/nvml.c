/* Reads memory through NVML the way nvidia-smi and monitoring agents do. */
#include <stdio.h>
typedef int nvmlReturn_t;
typedef void *nvmlDevice_t;
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct { unsigned int version; unsigned long long total, reserved, free, used; } nvmlMemory_v2_t;
nvmlReturn_t nvmlInit_v2(void);
nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int, nvmlDevice_t *);
nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t, nvmlMemory_t *);
nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t, nvmlMemory_v2_t *);

int main(void) {
    nvmlDevice_t d;
    nvmlMemory_t m;
    nvmlMemory_v2_t m2;
    int r = nvmlInit_v2();
    if (r == 0) r = nvmlDeviceGetHandleByIndex_v2(0, &d);
    if (r == 0) r = nvmlDeviceGetMemoryInfo(d, &m);
    m2.version = (unsigned int)sizeof(m2) | (2u << 24);
    int r2 = r == 0 ? nvmlDeviceGetMemoryInfo_v2(d, &m2) : r;
    printf("{\"error\":%d,\"total\":%llu,\"used\":%llu,\"free\":%llu,\"error_v2\":%d,\"total_v2\":%llu,\"used_v2\":%llu,\"free_v2\":%llu}\n",
           r, m.total, m.used, m.free, r2, m2.total, m2.used, m2.free);
    return 0;
}
