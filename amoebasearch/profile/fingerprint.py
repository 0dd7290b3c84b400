"""Who measured a table: the device, its state, and the software stack.

On NVIDIA GPUs the fingerprint comes from NVML (``pynvml``, shipped as ``nvidia-ml-py``): name,
UUID, memory, driver and CUDA versions, current/max clocks, power limit and throttle reasons.
Clocks and throttle reasons are sampled again after profiling, because a card that throttled
mid-run produces a table that will not reproduce. On CPU we record the model name, family,
model number, stepping and cache size, the vector extensions the kernels can use, the core
count and the threads torch used. `cpu_identity` is what tells two CPUs apart: a table belongs
to the CPU it was measured on, and a marketing name ("AMD EPYC") covers many of them.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

from amoebasearch.devices import cuda_index, physical_cores

LIBRARIES = (
    "torch",
    "transformers",
    "onnxruntime",
    "onnx",
    "llama-cpp-python",
    "gguf",
    "numpy",
    "pandas",
    "amoebasearch",
)


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    return versions


# the /proc/cpuinfo fields that tell two CPUs with one marketing name apart (a VM often shows
# only "Intel(R) Xeon(R) Processor"), and the vector extensions the kernels pick from
CPUINFO_FIELDS = {
    "vendor_id": "vendor",
    "cpu family": "family",
    "model": "model",
    "stepping": "stepping",
    "cache size": "cache",
}
IDENTITY_FIELDS = ("vendor", "family", "model", "stepping", "name")
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "sve")


def cpuinfo() -> dict[str, str]:
    """The first processor's ``key: value`` lines of /proc/cpuinfo ({} where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_model_name() -> str:
    return cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_fingerprint() -> dict[str, Any]:
    import torch

    info = cpuinfo()
    flags = set(info.get("flags", info.get("Features", "")).split())
    return {
        "kind": "cpu",
        "name": cpu_model_name(),
        "cores": os.cpu_count(),
        "physical_cores": physical_cores(),
        "threads_used": torch.get_num_threads(),
        "machine": platform.machine(),
        **{ours: info[theirs] for theirs, ours in CPUINFO_FIELDS.items() if theirs in info},
        "isa": [flag for flag in ISA_FLAGS if flag in flags],
    }


def cpu_identity(fingerprint: dict[str, Any]) -> tuple[str, ...] | None:
    """(vendor, family, model, stepping, model name) of a CPU fingerprint; None when any is unknown
    (a table recorded before these were, or a spec sheet), which then matches no CPU."""
    if fingerprint.get("kind") != "cpu":
        return None
    values = tuple(str(fingerprint.get(key) or "") for key in IDENTITY_FIELDS)
    return values if all(values) else None


def same_cpu(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two fingerprints are one CPU by its full identity (`cpu_identity`), not its marketing name."""
    identity = cpu_identity(a)
    return identity is not None and identity == cpu_identity(b)


def _decode(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def nvml_state(index: int) -> dict[str, Any]:
    """Clocks, temperature and throttle reasons now; call before and after a profiling run."""
    import pynvml

    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    reasons = pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle)
    names = {
        "gpu_idle": pynvml.nvmlClocksThrottleReasonGpuIdle,
        "applications_clocks": pynvml.nvmlClocksThrottleReasonApplicationsClocksSetting,
        "sw_power_cap": pynvml.nvmlClocksThrottleReasonSwPowerCap,
        "hw_slowdown": pynvml.nvmlClocksThrottleReasonHwSlowdown,
        "sw_thermal": pynvml.nvmlClocksThrottleReasonSwThermalSlowdown,
        "hw_thermal": pynvml.nvmlClocksThrottleReasonHwThermalSlowdown,
    }
    return {
        "sm_clock_mhz": pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
        "mem_clock_mhz": pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM),
        "temperature_c": pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU),
        "throttle_reasons": sorted(name for name, bit in names.items() if reasons & bit),
    }


def nvidia_fingerprint(index: int) -> dict[str, Any]:
    """NVML description of GPU ``index`` (raises if NVML is unavailable)."""
    import pynvml

    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        return {
            "kind": "cuda",
            "name": _decode(pynvml.nvmlDeviceGetName(handle)),
            "uuid": _decode(pynvml.nvmlDeviceGetUUID(handle)),
            "memory_bytes": int(memory.total),
            "driver": _decode(pynvml.nvmlSystemGetDriverVersion()),
            "cuda_driver": f"{cuda // 1000}.{cuda % 1000 // 10}",
            "max_sm_clock_mhz": pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM),
            "max_mem_clock_mhz": pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM),
            "power_limit_w": pynvml.nvmlDeviceGetPowerManagementLimit(handle) / 1000.0,
            "state_before": nvml_state(index),
        }
    finally:
        pynvml.nvmlShutdown()


def device_fingerprint(device: str) -> dict[str, Any]:
    """The fingerprint of ``device`` ("cpu" or "cuda:N"), plus the host CPU for GPU runs."""
    if not device.startswith("cuda"):
        return cpu_fingerprint()
    import torch

    index = cuda_index(device)
    try:
        fingerprint = nvidia_fingerprint(index)
    except Exception as err:  # NVML missing (e.g. non-NVIDIA CUDA build): fall back to torch's view
        props = torch.cuda.get_device_properties(index)
        fingerprint = {"kind": "cuda", "name": props.name, "memory_bytes": props.total_memory, "nvml_error": str(err)}
    fingerprint["cuda_runtime"] = torch.version.cuda
    fingerprint["host_cpu"] = cpu_fingerprint()
    return fingerprint


def device_slug(fingerprint: dict[str, Any]) -> str:
    """A file-name-safe device name, e.g. ``nvidia-h100-80gb-hbm3`` or ``cpu-intel-xeon-processor``
    (trademark marks such as ``(R)`` dropped)."""
    name = str(fingerprint.get("name", "unknown")).lower()
    for mark in ("(r)", "(tm)"):
        name = name.replace(mark, " ")
    if fingerprint.get("kind") == "cpu" and not name.startswith("cpu"):
        name = f"cpu-{name}"
    slug = "".join(ch if ch.isalnum() else "-" for ch in name)
    while "--" in slug:
        slug = slug.replace("--", "-")
    return slug.strip("-")
