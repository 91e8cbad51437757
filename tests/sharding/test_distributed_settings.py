"""Flag / environment resolution for `jax.distributed.initialize` (no JAX initialisation here;
the real multi-process run is in test_multihost.py)."""
import pytest

from mmfm.train import distributed as dist

ENV = ("MMFM_COORDINATOR", "MMFM_NUM_PROCESSES", "MMFM_PROCESS_ID", "MMFM_DISTRIBUTED",
       "MMFM_INIT_TIMEOUT", "MMFM_HEARTBEAT_TIMEOUT")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for k in ENV:
        monkeypatch.delenv(k, raising=False)


def test_single_process_by_default():
    s = dist.resolve_settings()
    assert s.mode == "none" and s.heartbeat_timeout == dist.DEFAULT_HEARTBEAT_TIMEOUT
    assert dist.maybe_initialize_distributed(distributed="none") is False


def test_explicit_from_env_and_flags_override_env(monkeypatch):
    monkeypatch.setenv("MMFM_COORDINATOR", "10.0.0.1:1234")
    monkeypatch.setenv("MMFM_NUM_PROCESSES", "4")
    monkeypatch.setenv("MMFM_PROCESS_ID", "3")
    monkeypatch.setenv("MMFM_HEARTBEAT_TIMEOUT", "15")
    s = dist.resolve_settings()
    assert (s.mode, s.coordinator, s.num_processes, s.process_id, s.heartbeat_timeout) == (
        "explicit", "10.0.0.1:1234", 4, 3, 15)
    s = dist.resolve_settings(process_id=1, init_timeout=30)
    assert s.process_id == 1 and s.init_timeout == 30


def test_auto_mode():
    s = dist.resolve_settings(distributed="auto")
    assert s.mode == "auto" and s.coordinator is None


@pytest.mark.parametrize("kwargs,msg", [
    (dict(coordinator="h:1"), "also needs num_processes / MMFM_NUM_PROCESSES and process_id"),
    (dict(coordinator="h:1", num_processes=2, process_id=2), "--process_id 2 must be < --num_processes 2"),
    (dict(coordinator="host", num_processes=2, process_id=0), "must be host:port"),
    (dict(distributed="slurm"), "not one of 'auto', 'none'"),
    (dict(num_processes=0), "--num_processes / MMFM_NUM_PROCESSES must be >= 1"),
])
def test_errors_name_the_flag(kwargs, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(")):
        dist.resolve_settings(**kwargs)


def test_non_integer_env_names_the_variable(monkeypatch):
    monkeypatch.setenv("MMFM_HEARTBEAT_TIMEOUT", "10s")
    with pytest.raises(ValueError, match=r"MMFM_HEARTBEAT_TIMEOUT='10s' \(--heartbeat_timeout\)"):
        dist.resolve_settings()


def test_peer_failure_guard_reraises_ordinary_errors_in_one_process():
    with pytest.raises(RuntimeError, match="Gloo all-reduce failed"):
        with dist.exit_on_peer_failure():  # one process: never exits, re-raises
            raise RuntimeError("Gloo all-reduce failed: Connection closed by peer")
