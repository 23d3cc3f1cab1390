"""What this machine has and how loaded it is: GPUs through NVML (pynvml, from the
nvidia-ml-py package), CPU and memory through psutil.

NVML is initialised once and reused; sampling is a handful of NVML calls per GPU,
cheap enough to run every second. No driver, no GPU, or an NVML error is reported as
what it is (a CPU host, or one GPU in error) with one log line, never a crash.
"""

from __future__ import annotations

import os
import platform
from typing import Any

import psutil
import structlog

log = structlog.get_logger("andy_host.hardware")

try:
    import pynvml
except ImportError:  # pragma: no cover - nvidia-ml-py is a dependency
    pynvml = None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class HardwareProbe:
    """GPU and host readings; ``sample()`` is safe to call every second."""

    def __init__(self, own_pids: set[int] | None = None) -> None:
        self.own_pids = own_pids if own_pids is not None else {os.getpid()}
        self.available = False
        self.reason: str | None = None
        self.driver: str | None = None
        self.cuda: str | None = None
        self._errors: dict[int, str] = {}
        self._static = {"cpu": cpu_model(), "cores": psutil.cpu_count(logical=True) or 1,
                        "os": f"{platform.system()} {platform.release()}"}
        self._init()

    def _init(self) -> None:
        if pynvml is None:
            self.reason = "nvidia-ml-py is not installed"
            return
        try:
            pynvml.nvmlInit()
            self.driver = _text(pynvml.nvmlSystemGetDriverVersion())
            cuda = pynvml.nvmlSystemGetCudaDriverVersion()
            self.cuda = f"{cuda // 1000}.{cuda % 1000 // 10}"
            self.available = True
            log.info("hardware.nvml", driver=self.driver, cuda=self.cuda, gpus=pynvml.nvmlDeviceGetCount())
        except pynvml.NVMLError as exc:
            self.reason = f"no NVIDIA GPU usable ({exc}); this is a CPU host"
            log.info("hardware.cpu_host", reason=self.reason)

    def close(self) -> None:
        if self.available and pynvml is not None:
            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError:
                pass
            self.available = False

    def gpus(self) -> list[dict[str, Any]]:
        if not self.available or pynvml is None:
            return []
        try:
            count = pynvml.nvmlDeviceGetCount()
        except pynvml.NVMLError as exc:
            self._note(-1, str(exc))
            return [{"index": 0, "name": "unknown", "error": str(exc)}]
        return [self._gpu(i) for i in range(count)]

    def _note(self, index: int, error: str | None) -> None:
        """One log line when a GPU starts or stops failing, not one per sample."""
        if error is None:
            if self._errors.pop(index, None) is not None:
                log.info("hardware.gpu_recovered", gpu=index)
        elif self._errors.get(index) != error:
            self._errors[index] = error
            log.warning("hardware.gpu_error", gpu=index, error=error)

    def _gpu(self, index: int) -> dict[str, Any]:
        assert pynvml is not None
        reading: dict[str, Any] = {"index": index}
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            reading["uuid"] = _text(pynvml.nvmlDeviceGetUUID(handle))
            reading["name"] = _text(pynvml.nvmlDeviceGetName(handle))
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            reading.update(memory_total=int(memory.total), memory_used=int(memory.used), memory_free=int(memory.free))
            rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
            reading.update(utilization_gpu=int(rates.gpu), utilization_memory=int(rates.memory))
            reading["temperature"] = int(pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU))
            reading["power_draw_w"] = round(pynvml.nvmlDeviceGetPowerUsage(handle) / 1000, 1)
            reading["power_limit_w"] = round(pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000, 1)
            reading["driver_version"], reading["cuda_driver_version"] = self.driver, self.cuda
            reading.update(self._mig(handle))
            reading["other_processes_memory"] = self._foreign_memory(handle)
        except pynvml.NVMLError as exc:
            reading.setdefault("name", "unknown")
            reading["error"] = str(exc)
            self._note(index, str(exc))
            return reading
        self._note(index, None)
        return reading

    def _mig(self, handle: Any) -> dict[str, Any]:
        assert pynvml is not None
        try:
            current, _pending = pynvml.nvmlDeviceGetMigMode(handle)
        except pynvml.NVMLError:
            return {"mig_mode": None}  # not supported on this GPU
        if current != pynvml.NVML_DEVICE_MIG_ENABLE:
            return {"mig_mode": False}
        instances = []
        for slot in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
            try:
                mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
            except pynvml.NVMLError:
                continue  # an empty slot
            memory = pynvml.nvmlDeviceGetMemoryInfo(mig)
            instances.append({"uuid": _text(pynvml.nvmlDeviceGetUUID(mig)),
                              "memory_total": int(memory.total), "memory_used": int(memory.used)})
        return {"mig_mode": True, "mig_instances": instances}

    def _foreign_memory(self, handle: Any) -> int | None:
        """Memory used by processes other than this agent and its children (None if NVML won't say)."""
        assert pynvml is not None
        try:
            processes = [*pynvml.nvmlDeviceGetComputeRunningProcesses(handle),
                         *pynvml.nvmlDeviceGetGraphicsRunningProcesses(handle)]
        except pynvml.NVMLError:
            return None
        ours = set(self.own_pids)
        try:
            ours |= {c.pid for c in psutil.Process().children(recursive=True)}
        except psutil.Error:
            pass
        return sum(int(p.usedGpuMemory or 0) for p in processes if p.pid not in ours)

    def host(self) -> dict[str, Any]:
        memory = psutil.virtual_memory()
        load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
        return {**self._static, "load_1m": round(load[0], 2), "ram_total": memory.total,
                "ram_available": memory.available}

    def sample(self) -> dict[str, Any]:
        return {"gpus": self.gpus(), "host": self.host(), "nvml": self.reason or "ok"}
