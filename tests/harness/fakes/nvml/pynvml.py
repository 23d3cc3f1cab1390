"""A fake ``pynvml`` (the nvidia-ml-py module) for machines without a GPU.

Put this directory first on PYTHONPATH and point ``ANDY_HOST_TEST_NVML`` at a fixture
JSON (tests/harness/fixtures/gpus/*.json). The fixture is re-read on every call, so a test can
change readings (temperature, memory, a GPU falling off the bus) while a daemon runs.
Names, signatures, units (bytes, mW, °C) and error behaviour follow nvidia-ml-py's
pynvml.py; only the calls andy-host makes are implemented.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace
from typing import Any

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15
NVML_TEMPERATURE_GPU = 0
NVML_DEVICE_MIG_DISABLE = 0
NVML_DEVICE_MIG_ENABLE = 1

_MESSAGES = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NOT_FOUND: "Not Found",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
}


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return _MESSAGES.get(self.value, f"Unknown Error {self.value}")


_initialised = False


def _fixture() -> dict[str, Any]:
    with open(os.environ["ANDY_HOST_TEST_NVML"]) as fh:
        data: dict[str, Any] = json.load(fh)
    return data


def _check() -> dict[str, Any]:
    if not _initialised:
        raise NVMLError(NVML_ERROR_UNINITIALIZED)
    return _fixture()


def nvmlInit() -> None:
    global _initialised
    error = _fixture().get("init_error")
    if error is not None:
        raise NVMLError(int(error))
    _initialised = True


def nvmlShutdown() -> None:
    global _initialised
    _initialised = False


def nvmlSystemGetDriverVersion() -> str:
    return str(_check()["driver_version"])


def nvmlSystemGetCudaDriverVersion() -> int:
    return int(_check()["cuda_driver_version"])


def nvmlDeviceGetCount() -> int:
    return len(_check()["gpus"])


def _gpu(handle: Any) -> dict[str, Any]:
    data = _check()
    if handle[0] == "mig":
        return dict(data["gpus"][handle[1]]["mig"]["instances"][handle[2]])
    gpu: dict[str, Any] = data["gpus"][handle[1]]
    if gpu.get("error") is not None:
        raise NVMLError(int(gpu["error"]))
    return gpu


def nvmlDeviceGetHandleByIndex(index: int) -> tuple[str, int]:
    if index >= nvmlDeviceGetCount():
        raise NVMLError(NVML_ERROR_NOT_FOUND)
    return ("gpu", index)


def nvmlDeviceGetUUID(handle: Any) -> str:
    return str(_gpu(handle)["uuid"])


def nvmlDeviceGetName(handle: Any) -> str:
    return str(_gpu(handle)["name"])


def nvmlDeviceGetMemoryInfo(handle: Any) -> SimpleNamespace:
    gpu = _gpu(handle)
    total, used = int(gpu["memory_total"]), int(gpu["memory_used"])
    return SimpleNamespace(total=total, used=used, free=total - used)


def nvmlDeviceGetUtilizationRates(handle: Any) -> SimpleNamespace:
    gpu = _gpu(handle)
    return SimpleNamespace(gpu=gpu["utilization_gpu"], memory=gpu["utilization_memory"])


def nvmlDeviceGetTemperature(handle: Any, sensor: int) -> int:
    return int(_gpu(handle)["temperature"])


def nvmlDeviceGetPowerUsage(handle: Any) -> int:
    return int(_gpu(handle)["power_draw_mw"])


def nvmlDeviceGetEnforcedPowerLimit(handle: Any) -> int:
    return int(_gpu(handle)["power_limit_mw"])


def nvmlDeviceGetMigMode(handle: Any) -> tuple[int, int]:
    mig = _gpu(handle).get("mig")
    if mig is None:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    mode = NVML_DEVICE_MIG_ENABLE if mig["enabled"] else NVML_DEVICE_MIG_DISABLE
    return (mode, mode)


def nvmlDeviceGetMaxMigDeviceCount(handle: Any) -> int:
    return 7


def nvmlDeviceGetMigDeviceHandleByIndex(handle: Any, index: int) -> tuple[str, int, int]:
    instances = _gpu(handle)["mig"]["instances"]
    if index >= len(instances):
        raise NVMLError(NVML_ERROR_NOT_FOUND)
    return ("mig", handle[1], index)


def nvmlDeviceGetComputeRunningProcesses(handle: Any) -> list[SimpleNamespace]:
    return [SimpleNamespace(pid=p["pid"], usedGpuMemory=p["used_memory"]) for p in _gpu(handle).get("processes", [])]


def nvmlDeviceGetGraphicsRunningProcesses(handle: Any) -> list[SimpleNamespace]:
    return []
