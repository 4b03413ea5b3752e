"""Run one command and measure it: wall seconds, peak RSS of its whole process tree.

The tree is sampled with psutil every ``interval`` seconds (sum of the RSS of the process
and all its descendants). Sampling can miss a spike shorter than the interval, so the
kernel's own high-water mark of the largest single process (``ru_maxrss`` from ``wait4``)
is reported too: the tree peak is never below it.

Each command writes its own phase timestamps (``time.time()``) to a JSON file; the samples
are kept so a peak RSS per phase can be computed on the same clock.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

MiB = 1024 * 1024


@dataclass
class Measurement:
    """One measured command."""

    label: str
    argv: list[str]
    returncode: int
    started: float  # time.time()
    ended: float
    wall_seconds: float
    peak_tree_rss: int  # bytes, sampled
    max_process_rss: int  # bytes, kernel high-water mark of the largest process
    max_processes: int
    # (time.time(), tree rss bytes, tree cpu seconds user+system)
    samples: list[tuple[float, int, float]] = field(default_factory=list)
    cpu_seconds: float = 0.0  # user + system of the tree (children that were waited for)
    machine_busy_seconds: float = 0.0  # every CPU of the machine, busy time in the interval

    @property
    def peak_rss(self) -> int:
        return max(self.peak_tree_rss, self.max_process_rss)

    def peak_between(self, start: float, end: float) -> int | None:
        """Peak sampled tree RSS in [start, end] (None when no sample falls inside)."""
        inside = [rss for t, rss, _ in self.samples if start - 0.25 <= t <= end + 0.25]
        return max(inside) if inside else None

    def cpu_between(self, start: float, end: float) -> float | None:
        """CPU seconds the tree used in [start, end] (to the sampling interval)."""
        if not self.samples:
            return None

        def at(t: float) -> float:
            before = [c for ts, _, c in self.samples if ts <= t]
            return before[-1] if before else 0.0

        return max(0.0, at(end) - at(start))

    def summary(self) -> dict:
        return {
            "label": self.label,
            "argv": self.argv,
            "returncode": self.returncode,
            "started": self.started,
            "ended": self.ended,
            "wall_seconds": round(self.wall_seconds, 3),
            "cpu_seconds": round(self.cpu_seconds, 3),
            # CPU time other processes (concurrent test runs ...) used meanwhile
            "others_cpu_seconds": round(max(0.0, self.machine_busy_seconds - self.cpu_seconds), 1),
            "peak_tree_rss_mib": round(self.peak_tree_rss / MiB, 1),
            "max_process_rss_mib": round(self.max_process_rss / MiB, 1),
            "peak_rss_mib": round(self.peak_rss / MiB, 1),
            "max_processes": self.max_processes,
        }


def _tree(proc: psutil.Process) -> tuple[int, int, float]:
    """RSS (bytes), number of processes and CPU seconds of the process and its descendants."""
    total, count, cpu = 0, 0, 0.0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0, 0, 0.0
    for p in procs:
        try:
            with p.oneshot():
                total += p.memory_info().rss
                t = p.cpu_times()
                cpu += t.user + t.system
            count += 1
        except psutil.Error:
            continue
    return total, count, cpu


def run_measured(label: str, argv: list[str], env: dict[str, str] | None = None,
                 cwd: Path | None = None, interval: float = 0.2,
                 stdout: Path | None = None) -> Measurement:
    """Run ``argv`` to completion while sampling its process tree."""
    out = open(stdout, "wb") if stdout else subprocess.DEVNULL  # noqa: SIM115
    busy0 = _machine_busy()
    started = time.time()
    t0 = time.perf_counter()
    child = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    proc = psutil.Process(child.pid)
    samples: list[tuple[float, int, float]] = []
    peak = [0, 0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            rss, n, cpu = _tree(proc)
            if rss:
                samples.append((time.time(), rss, cpu))
                peak[0] = max(peak[0], rss)
                peak[1] = max(peak[1], n)
            done.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - t0
    ended = time.time()
    done.set()
    sampler.join()
    child.returncode = os.waitstatus_to_exitcode(status)
    if stdout:
        out.close()
    return Measurement(
        label=label,
        argv=list(argv),
        returncode=child.returncode,
        started=started,
        ended=ended,
        wall_seconds=wall,
        peak_tree_rss=peak[0],
        max_process_rss=usage.ru_maxrss * 1024,  # Linux: KiB
        max_processes=peak[1],
        samples=samples,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        machine_busy_seconds=_machine_busy() - busy0,
    )


def _machine_busy() -> float:
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def machine() -> dict:
    """The machine the numbers came from."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    vm = psutil.virtual_memory()
    load = os.getloadavg()
    return {
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "memory_gib": round(vm.total / 1024**3, 1),
        "available_gib_at_start": round(vm.available / 1024**3, 1),
        "cpu_model": model,
        "loadavg_at_start": [round(x, 2) for x in load],
        "kernel": os.uname().release,
    }
