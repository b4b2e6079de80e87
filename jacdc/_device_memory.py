"""How much memory a device has free, and the error raised before a run that would not fit.

A module of its own, importing nothing of jacdc, so that `jacdc.tasks` can check a task's size
before building it without depending on the engine's memory model (`jacdc._memory`, which
re-exports both names)."""

import os

import jax


class MemoryBudgetError(ValueError):
    """Raised before a run whose predicted memory exceeds what the device has."""


def _host_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def device_memory(device=None) -> tuple[int | None, str]:
    """`(bytes free for one device, where the figure comes from)`.

    Accelerators: `bytes_limit - bytes_in_use` of `device.memory_stats()`. CPU (and devices
    without statistics): the host's available memory (`MemAvailable`), shared by all of JAX's
    CPU devices in this process, so divided by their number."""
    device = jax.devices()[0] if device is None else device
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:  # some backends raise instead of returning None
        stats = None
    if stats and "bytes_limit" in stats:
        free = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
        return free, f"{device.device_kind} memory_stats"
    host = _host_available()
    if host is None:
        return None, "unknown"
    n = max(1, len([d for d in jax.local_devices() if d.platform == device.platform]))
    return host // n, f"host MemAvailable / {n} {device.platform} device(s)"
