"""Environment and failure reports for tests that run JAX on virtual CPU devices or in subprocesses."""
import re

# XLA:CPU runs a collective only when the threads of all devices have reached it, and aborts the
# whole process (SIGABRT, no Python traceback of the cause) when one is 40 s late (the default of
# --xla_cpu_collective_call_terminate_timeout_seconds). On a 2-core CI machine that runs 8 virtual
# devices beside another test worker and an async checkpoint writer, a thread can be descheduled
# that long. A real deadlock still fails: every subprocess test has its own wall-clock timeout.
COLLECTIVE_TERMINATE_TIMEOUT_S = 600


def virtual_device_flags(devices: int) -> str:
    """XLA_FLAGS value for `devices` virtual CPU devices with a tolerant collective timeout."""
    return (f"--xla_force_host_platform_device_count={devices} "
            f"--xla_cpu_collective_call_terminate_timeout_seconds={COLLECTIVE_TERMINATE_TIMEOUT_S}")


# absl/XLA fatal and error log lines ("F1130 18:59:21.006654 ..."), Python's fatal-error banner and
# XLA's stuck-rendezvous warnings: the cause of an abort, which the stderr tail often cuts off.
_CAUSE = re.compile(r"^([FE]\d{4} |Fatal Python error|.*(Termination timeout|may be stuck|Check failed))")


def failure_report(proc, tail: int = 3000) -> str:
    """The cause lines of a failed subprocess's stderr, then its last `tail` characters."""
    causes = [line for line in (proc.stderr or "").splitlines() if _CAUSE.match(line)]
    head = "\n".join(causes[:20])
    return f"exit {proc.returncode}\n--- cause lines ---\n{head}\n--- stderr tail ---\n{(proc.stderr or '')[-tail:]}"
