"""Building and reading locally generated data prints nothing that does not apply: no TFDS
"Downloading and preparing dataset Unknown size" banner, no OpenCV or custom-config warnings."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO)
from mmfm.data.synthetic import prepare_captioned_shapes
b = prepare_captioned_shapes(sys.argv[1], image_size=32, num_train=16, num_test=8, seed=0)
print("image", b.as_data_source(split="test")[0]["image"].shape)
prepare_captioned_shapes(sys.argv[1], image_size=32, num_train=16, num_test=8, seed=0)  # reused
"""


def test_generated_data_builds_and_reads_without_noise(tmp_path):
    p = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout + p.stderr
    assert "image (32, 32, 3)" in p.stdout
    for noise in ("Downloading and preparing", "Unknown size", "OpenCV",
                  "Using custom data configuration", "downloaded and prepared"):
        assert noise not in out, (noise, out[-3000:])
    assert out.count("prepared captioned_shapes") == 1, out[-3000:]  # one line, on the first build
