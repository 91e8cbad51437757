"""The README's quickstart code block runs as written (on the built-in data, CPU, no downloads)."""
import os
import re
import subprocess
import sys

import doc_commands as dc


def quickstart_block() -> str:
    with open(os.path.join(dc.ROOT, "README.md")) as f:
        text = f.read()
    section = re.search(r"^##+ [^\n]*Quickstart[^\n]*$(.*?)(?=^## )", text, re.M | re.S | re.I)
    assert section, "README.md has no Quickstart section"
    code = re.search(r"```python\n(.*?)```", section.group(1), re.S)
    assert code, "README.md's Quickstart has no ```python block"
    return code.group(1)


def test_quickstart_is_short():
    lines = [l for l in quickstart_block().splitlines() if l.strip() and not l.strip().startswith("#")]
    assert len(lines) <= 10, lines


def test_quickstart_runs():
    code = quickstart_block()
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # a user's plain process: one CPU device
    res = subprocess.run([sys.executable, "-c", code], cwd=dc.ROOT, capture_output=True, text=True,
                         timeout=900, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    # The block prints the [images, texts] cosine-similarity matrix: 8 rows of 2 numbers in [-1, 1].
    rows = [l for l in res.stdout.splitlines() if re.match(r"^\s*\[*\s*-?\d", l)]
    nums = [float(x) for l in rows for x in re.findall(r"-?\d+\.\d*", l)]
    assert len(nums) == 16 and all(-1.001 <= x <= 1.001 for x in nums), res.stdout[-2000:]
