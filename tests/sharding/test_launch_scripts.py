"""experiments/tpu launch scripts: the gcloud command runs the exact train command on all workers
(checked by parsing the printed command back, quoting included); the SLURM example is valid bash.
"""
import os
import shlex
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCH = os.path.join(REPO, "experiments", "tpu", "launch.sh")


def _dry_run(*args):
    out = subprocess.run(["bash", LAUNCH, "--tpu", "pod", "--zone", "us-central2-b", "--dry-run", *args],
                         capture_output=True, text=True, check=True).stdout
    argv = shlex.split(out)
    return argv, argv[argv.index("--command") + 1]


def test_run_executes_the_same_train_command_on_every_worker():
    train = ["--config", "experiments/configs/demo.py", "--workdir", "/mnt/runs/a b",
             "--config.mesh.shape=(1,-1,1)", "--config.data.dir=/mnt/data"]
    argv, remote = _dry_run("--project", "p1", "--", *train)
    assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod"]
    assert "--worker=all" in argv and argv[argv.index("--project") + 1] == "p1"
    words = shlex.split(remote.split("(nohup ", 1)[1].split(" > ~/mmfm_train.log")[0])
    assert words[:4] == ["env", "MMFM_DISTRIBUTED=auto", "PYTHONUNBUFFERED=1", ".venv/bin/python"]
    assert words[4:6] == ["-m", "mmfm.train"] and words[6:] == train  # quoting survives the ssh hop


def test_stop_logs_and_errors():
    _, remote = _dry_run("--action", "stop")
    assert "kill -TERM $(cat ~/mmfm_train.pid)" in remote
    argv, _ = _dry_run("--action", "logs", "--worker", "3")
    assert "--worker=3" in argv
    for bad, msg in ((["--action", "run"], "give the train flags after --"),
                     (["--action", "setup"], "needs --repo URL"), (["--bogus"], "unknown option --bogus")):
        res = subprocess.run(["bash", LAUNCH, "--tpu", "pod", "--zone", "z", "--dry-run", *bad],
                             capture_output=True, text=True)
        assert res.returncode == 2 and msg in res.stderr


def test_slurm_example_is_valid_bash_and_uses_auto_detection():
    path = os.path.join(REPO, "experiments", "tpu", "slurm_train.sbatch")
    subprocess.run(["bash", "-n", path], check=True)
    text = open(path).read()
    assert "MMFM_DISTRIBUTED=auto" in text and "-m mmfm.train" in text


def test_mesh_preset_helper():
    from experiments.configs import common
    from mmfm import sharding as sh

    assert common.mesh_preset("fsdp")["shape"] == (1, -1, 1)
    assert common.mesh_preset("fsdp_tensor", tensor=4)["shape"] == (1, -1, 4)
    assert sh.normalize_rules(common.mesh_preset("dp")["rules"]) == sh.DEFAULT_RULES
    with pytest.raises(ValueError, match="unknown mesh preset 'zero'"):
        common.mesh_preset("zero")
