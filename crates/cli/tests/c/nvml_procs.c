/* Lists GPU 0's processes through NVML the way nvidia-smi and monitoring agents do: the
 * size protocol first, then the versioned and unversioned lists, and per-process utilization. */
#include <stdio.h>
typedef int nvmlReturn_t;
typedef void *nvmlDevice_t;
typedef struct { unsigned int pid; unsigned long long usedGpuMemory; } nvmlProcessInfo_v1_t;
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlProcessInfo_t;
typedef struct {
    unsigned int pid;
    unsigned long long timeStamp;
    unsigned int smUtil, memUtil, encUtil, decUtil;
} nvmlProcessUtilizationSample_t;
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId, computeInstanceId;
    unsigned long long usedGpuCcProtectedMemory;
} nvmlProcessDetail_v1_t;
typedef struct {
    unsigned int version, mode, numProcArrayEntries;
    nvmlProcessDetail_v1_t *procArray;
} nvmlProcessDetailList_v1_t;
nvmlReturn_t nvmlDeviceGetRunningProcessDetailList(nvmlDevice_t, nvmlProcessDetailList_v1_t *);
nvmlReturn_t nvmlInit_v2(void);
nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int, nvmlDevice_t *);
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t, unsigned int *, nvmlProcessInfo_v1_t *);
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t, unsigned int *, nvmlProcessInfo_t *);
nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t, nvmlProcessUtilizationSample_t *, unsigned int *,
                                             unsigned long long);

int main(void) {
    nvmlDevice_t d;
    nvmlProcessInfo_t p[64];
    nvmlProcessInfo_v1_t p1[64];
    nvmlProcessUtilizationSample_t s[64];
    unsigned int asked = 0, n = 64, n1 = 64, ns = 64;
    int r = nvmlInit_v2();
    if (r == 0) r = nvmlDeviceGetHandleByIndex_v2(0, &d);
    int r_size = r == 0 ? nvmlDeviceGetComputeRunningProcesses_v3(d, &asked, NULL) : r;
    if (r == 0) r = nvmlDeviceGetComputeRunningProcesses_v3(d, &n, p);
    int r1 = r == 0 ? nvmlDeviceGetComputeRunningProcesses(d, &n1, p1) : r;
    int rs = r == 0 ? nvmlDeviceGetProcessUtilization(d, s, &ns, 0) : r;
    if (rs != 0) ns = 0;
    nvmlProcessDetail_v1_t det[64];
    nvmlProcessDetailList_v1_t dl = {(unsigned)sizeof(dl) | (1u << 24), 0, 64, det};
    int rd = r == 0 ? nvmlDeviceGetRunningProcessDetailList(d, &dl) : r;
    if (rd != 0) dl.numProcArrayEntries = 0;
    printf("{\"error\":%d,\"size_error\":%d,\"asked\":%u,\"pids\":[", r, r_size, asked);
    for (unsigned i = 0; r == 0 && i < n; i++) printf("%s%u", i ? "," : "", p[i].pid);
    printf("],\"used\":[");
    for (unsigned i = 0; r == 0 && i < n; i++) printf("%s%llu", i ? "," : "", p[i].usedGpuMemory);
    printf("],\"error_v1\":%d,\"pids_v1\":[", r1);
    for (unsigned i = 0; r1 == 0 && i < n1; i++) printf("%s%u", i ? "," : "", p1[i].pid);
    printf("],\"util_error\":%d,\"util_pids\":[", rs);
    for (unsigned i = 0; i < ns; i++) printf("%s%u", i ? "," : "", s[i].pid);
    printf("],\"detail_error\":%d,\"detail_pids\":[", rd);
    for (unsigned i = 0; i < dl.numProcArrayEntries; i++) printf("%s%u", i ? "," : "", det[i].pid);
    printf("]}\n");
    return 0;
}
