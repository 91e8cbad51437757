"""Test setup: 8 virtual CPU devices so sharding tests run anywhere.

Must run before JAX initialises its backend; single-device code still runs on device 0.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
