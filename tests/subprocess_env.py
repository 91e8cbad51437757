"""Failure reports for tests that run training or evaluation in subprocesses."""
import re

# absl/XLA fatal and error log lines ("F1130 18:59:21.006654 ..."), Python's fatal-error banner and
# XLA's stuck-rendezvous warnings: the cause of an abort, which the stderr tail often cuts off.
_CAUSE = re.compile(r"^([FE]\d{4} |Fatal Python error|.*(Termination timeout|may be stuck|Check failed))")


def failure_report(proc, tail: int = 3000) -> str:
    """The cause lines of a failed subprocess's stderr, then its last `tail` characters."""
    causes = [line for line in (proc.stderr or "").splitlines() if _CAUSE.match(line)]
    head = "\n".join(causes[:20])
    return f"exit {proc.returncode}\n--- cause lines ---\n{head}\n--- stderr tail ---\n{(proc.stderr or '')[-tail:]}"
