"""What a benchmark ran on: machine, versions, threads, date (recorded with every section)."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import sys

import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def memory_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def describe(device: str) -> str:
    """One line: device, CPU, cores, memory, torch/python versions, torch threads."""
    mem = memory_gib()
    parts = []
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device))
        parts.append(f"GPU {props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}")
    parts.append(f"CPU {cpu_model()}, {os.cpu_count()} cores" + (f", {mem:.0f} GiB RAM" if mem else ""))
    parts.append(f"torch {torch.__version__}, Python {platform.python_version()}, "
                 f"{torch.get_num_threads()} torch thread(s)")
    from hyenalens.runtime import malloc_tuned

    parts.append("glibc malloc thresholds raised (hyenalens/runtime.py)" if malloc_tuned() else "system malloc")
    return "; ".join(parts)


def today() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")


def command_line() -> str:
    return "python -m benchmarks " + " ".join(sys.argv[1:])
