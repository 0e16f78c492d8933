"""What the benchmarks share: timing a command as a fresh process with the peak memory of its process tree."""

from __future__ import annotations

import math
import os
import subprocess
import threading
import time
from pathlib import Path

__all__ = ["PeakMemory", "cache_score_parser", "cpu_seconds", "timed"]


def cache_score_parser(description: str):
    """The arguments of a benchmark that caches ``validate``'s sections once and scores them again: command, folder, --n, --seed."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("command", choices=("cache", "score"))
    parser.add_argument("folder", type=Path)
    parser.add_argument("--n", type=int, default=24)
    parser.add_argument("--seed", type=int, default=1)
    return parser


class PeakMemory:
    """Peak of the summed resident memory of a process and its children, sampled in a thread.

    Each sample reads the resident size of the processes already known
    (``/proc/<pid>/statm``); the list of children is refreshed every
    ``rescan_s`` only, as finding them reads every process of the machine.
    Sampled that way every 50 ms, the sampler took 3.8 % of a core, which a
    two-worker run, whose two cores are busy, pays and a one-worker run does
    not; with children found every second, 1 %. The pipeline's workers start
    within its first second, light (their imports come forked from the
    server), and live to its end.
    """

    def __init__(self, pid: int, interval_s: float = 0.05, rescan_s: float = 1.0):
        import psutil

        self.process = psutil.Process(pid)
        self.peak = 0
        #: pid -> the last CPU seconds (user + system) seen of that process itself, children not counted
        self.cpu_s: dict[int, float] = {}
        self.interval_s = interval_s
        self.rescan_s = rescan_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        import psutil

        procs, scanned = [self.process], -math.inf
        while not self._stop.is_set():
            now = time.monotonic()
            if now - scanned >= self.rescan_s:
                try:
                    procs, scanned = [self.process, *self.process.children(recursive=True)], now
                except psutil.Error:
                    break
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                    times = p.cpu_times()
                    self.cpu_s[p.pid] = times.user + times.system
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(self.interval_s)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def cpu_seconds() -> tuple[float, float]:
    """Machine-wide (user + nice, system) CPU seconds so far, from /proc/stat; (nan, nan) elsewhere.

    Counts every process, the pool's worker processes included, which a parent's
    rusage misses when they are not its waited-for children.
    """
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return math.nan, math.nan
    hz = os.sysconf("SC_CLK_TCK")
    return (int(fields[1]) + int(fields[2])) / hz, int(fields[3]) / hz


def timed(cmd, env=None) -> dict:
    """Wall time, machine-wide user and system CPU time, and peak memory (process tree) of a command.

    Raises RuntimeError with the end of the command's output when it fails.
    """
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    mem = PeakMemory(proc.pid)
    out = proc.stdout.read()
    # waited for here (not by communicate) to read the resources of the command and the children it waited for
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    peak = mem.stop()
    cpu1 = cpu_seconds()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{out[-3000:]}")
    # the command's own CPU exactly; its descendants' as last sampled (worker processes a process
    # pool forked from a server are not waited for by the command, so its rusage misses them)
    descendants = sum(v for pid, v in mem.cpu_s.items() if pid != proc.pid)
    return {
        "seconds": wall,
        "cpu_user_s": round(cpu1[0] - cpu0[0], 2),
        "cpu_system_s": round(cpu1[1] - cpu0[1], 2),
        "cpu_command_s": round(usage.ru_utime + usage.ru_stime, 2),
        "cpu_descendants_s": round(descendants, 2),
        "peak_rss_gib": peak / 2**30,
        "output": out[-2000:],
    }
