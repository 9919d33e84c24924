#!/usr/bin/env python3
"""Generates trace.json: one working day (8 h) of a shared GPU cluster, seeded.

Mix: inference services (small slices, long-lived), notebooks (even-share slices, bursty),
fine-tuning jobs (2-4 slices of 40 GiB), distributed training gangs (2 pods x 4 slices),
and MIG jobs. Arrivals are Poisson per class.
"""
import json, random

rng = random.Random(20261121)
pods = []

def poisson(rate_per_h, hours=8.0):
    t = 0.0
    while True:
        t += rng.expovariate(rate_per_h / 3600.0)
        if t > hours * 3600:
            return
        yield t

def res(slices, mem=None, compute=None):
    r = {"gpuslice.io/gpu": slices}
    if mem is not None:
        r["gpuslice.io/gpu-memory"] = mem
    if compute is not None:
        r["gpuslice.io/gpu-compute"] = compute
    return r

for k, t in enumerate(poisson(14)):
    pods.append({"name": f"infer-{k}", "namespace": "serving", "arrival": round(t), "priority": 100,
                 "duration": rng.choice([1800, 3600, 7200, 14400]),
                 "containers": [{"name": "server", "resources": res(1, rng.choice([6144, 8192, 12288, 16384]), rng.choice([10, 20, 25, 30]))}]})
for k, t in enumerate(poisson(10)):
    pods.append({"name": f"nb-{k}", "namespace": "notebooks", "arrival": round(t), "priority": 10,
                 "duration": rng.choice([900, 1800, 3600, 5400]),
                 "containers": [{"name": "jupyter", "resources": res(1, rng.choice([10240, 20480]), 25)}]})
for k, t in enumerate(poisson(3)):
    n = rng.choice([2, 2, 4])
    pods.append({"name": f"ft-{k}", "namespace": "research", "arrival": round(t), "priority": 50,
                 "duration": rng.choice([3600, 5400, 7200]),
                 "containers": [{"name": "trainer", "resources": res(n, 40960, 50)}]})
for k, t in enumerate(poisson(0.75)):
    for m in range(2):
        pods.append({"name": f"dist-{k}-{m}", "namespace": "research", "arrival": round(t) + m * 5, "priority": 50,
                     "duration": 7200,
                     "annotations": {"gpuslice.io/gang": f"dist-{k}", "gpuslice.io/gang-size": "2"},
                     "containers": [{"name": "worker", "resources": res(4, 61440, 100)}]})
for k, t in enumerate(poisson(2)):
    pods.append({"name": f"mig-{k}", "namespace": "ci", "arrival": round(t), "priority": 0,
                 "duration": rng.choice([600, 1200]),
                 "containers": [{"name": "test", "resources": {"gpuslice.io/mig-1g.5gb": 1}}]})

pods.sort(key=lambda p: (p["arrival"], p["name"]))
json.dump({"maxPendingSeconds": 1800, "pods": pods}, open("trace.json", "w"), indent=0)
print(len(pods), "pods")
