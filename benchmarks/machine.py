"""The machine probe printed at the top of every benchmark and stored with its JSON: what this machine's
matmul units and memory can do, so figures taken on two machines can be compared and a regression told
from a slower machine.

    python -m benchmarks.machine            # the probe alone (a few seconds)

Each figure of ours can also be given as a share of the probe's JAX matmul rate (`share_of_matmul`).
"""
from __future__ import annotations

import json
import os
import platform
import time
from typing import Any


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# CPU flags that tell two machines of one model name apart (the probe's cpu string is often just "AMD EPYC"):
# full-width AVX-512, its bf16 dot products, Zen 5's vp2intersect, Intel's AMX tiles.
NOTABLE_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vp2intersect", "amx_tile")


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in NOTABLE_CPU_FLAGS if flag in present]
    except OSError:
        pass
    return []


def jax_matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """Best float32 GFLOP/s of a jitted chain of 4 [size, size] matmuls on the default JAX device."""
    from benchmarks.common import matmul_flops

    return matmul_flops(size, "float32", repeats=repeats) / 1e9


def torch_matmul_gflops(size: int = 2048, repeats: int = 5) -> float | None:
    """Best float32 GFLOP/s of torch's [size, size] matmul on its CPU (None without torch)."""
    try:
        import torch
    except ImportError:
        return None
    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)
    torch.matmul(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def copy_gbps(megabytes: int = 256, repeats: int = 5) -> float:
    """Best memory bandwidth of one thread copying a `megabytes` float32 array (bytes read + written)."""
    import numpy as np

    source = np.ones(megabytes * 2**20 // 4, np.float32)
    target = np.empty_like(source)
    np.copyto(target, source)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - start)
    return 2 * source.nbytes / best / 1e9


def probe() -> dict[str, Any]:
    """This machine, measured now: CPU, JAX device, float32 matmul GFLOP/s (JAX and torch), copy GB/s, and the
    load average (other work running at the same time shows there)."""
    import jax

    device = jax.devices()[0]
    return {
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cpus": os.cpu_count(),
        "jax_device": f"{device.platform}:{getattr(device, 'device_kind', '?')}",
        "jax_version": jax.__version__,
        "jax_matmul_gflops": round(jax_matmul_gflops(), 1),
        "torch_matmul_gflops": None if (value := torch_matmul_gflops()) is None else round(value, 1),
        "copy_gbps": round(copy_gbps(), 2),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


def probe_text(machine: dict[str, Any]) -> str:
    torch = machine.get("torch_matmul_gflops")
    load = " ".join(f"{v:.2f}" for v in machine.get("load_average", []))
    flags = ",".join(machine.get("cpu_flags") or []) or "-"
    return (f"machine: {machine['cpu']} x{machine['cpus']} [{flags}] ({machine['jax_device']}); float32 matmul JAX "
            f"{machine['jax_matmul_gflops']:.0f} GFLOP/s, torch {'-' if torch is None else f'{torch:.0f}'} GFLOP/s; "
            f"copy {machine['copy_gbps']:.1f} GB/s; load average {load}")


def share_of_matmul(flops_per_second: float, machine: dict[str, Any]) -> float:
    """A rate of useful FLOPs as a share of the probe's JAX float32 matmul rate (1.0 = the machine's limit)."""
    return flops_per_second / (machine["jax_matmul_gflops"] * 1e9)


def share_text(flops_per_second: float, machine: dict[str, Any]) -> str:
    """`flops_per_second` in GFLOP/s and as a share of the probe's JAX matmul rate, for a benchmark's output."""
    return (f"{flops_per_second / 1e9:.1f} GFLOP/s = {100 * share_of_matmul(flops_per_second, machine):.0f}% of "
            f"the probe's JAX float32 matmul rate")


def announce() -> dict[str, Any]:
    """Probe this machine and print the probe line (the first line of every benchmark's output)."""
    machine = probe()
    print(probe_text(machine), flush=True)
    return machine


def write_json(path: str | None, result: Any) -> None:
    """Write a benchmark's result (which carries its "machine") to `path` when one was asked for."""
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    print(json.dumps(announce()))
