"""Peak resident-memory growth of a measurement on Linux, for the benchmark workers (each measurement runs
in its own process): reset the peak (VmHWM) to the current RSS, run, read the peak back."""


def status_bytes(field: str) -> int:
    """A /proc/self/status size field (VmRSS, VmHWM, ...) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> None:
    """Writing 5 to clear_refs resets the peak resident set size (VmHWM) to the current one."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
