"""Command line: `mmfm train|eval|export|...`. Thin: all logic lives in importable modules."""
from __future__ import annotations

import logging
import os
import sys


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("absl", "jax._src", "orbax", "tensorflow_datasets", "grain"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _exit_now(message: str, code: int) -> None:
    """One line on stderr, then exit without atexit hooks: after a failed save, orbax's async
    saver would print pages of shutdown tracebacks that bury the message."""
    logging.shutdown()
    sys.stdout.flush()
    print(message, file=sys.stderr, flush=True)
    os._exit(code)


def train_main(argv=None) -> None:
    """Parse `--config FILE[:arg] --workdir DIR --config.key=value ...` and train."""
    from absl import app, flags
    from ml_collections import config_flags

    flags_ = flags.FLAGS
    if "config" not in flags_:
        config_flags.DEFINE_config_file("config", None, "experiment config file (FILE[:arg])",
                                        lock_config=True)
        flags.DEFINE_string("workdir", None, "run directory (checkpoints, logs); resumes if it exists")
        flags.DEFINE_integer("max_steps", None, "stop after this step (for tests; schedule unchanged)")
        from mmfm.train.distributed import define_flags
        define_flags()  # --coordinator, --num_processes, --process_id, --distributed, timeouts

    def main(_argv):
        _setup_logging()
        from mmfm.train.distributed import exit_on_peer_failure, maybe_initialize_distributed
        maybe_initialize_distributed()
        if flags_.config is None or flags_.workdir is None:
            raise app.UsageError("--config and --workdir are required")
        from mmfm.checkpoint import CheckpointSaveError
        from mmfm.train.loop import train_and_evaluate
        try:
            with exit_on_peer_failure():
                train_and_evaluate(flags_.config, flags_.workdir, max_steps=flags_.max_steps)
        except CheckpointSaveError as e:
            _exit_now(str(e), e.exit_code)

    argv = argv or sys.argv
    try:  # ml_collections reports an unknown override as a bare AttributeError: check first
        from mmfm.config_utils import check_argv
        check_argv(argv)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    app.run(main, argv=argv)


def export_main() -> None:
    from mmfm.zoo.export import export_main as run
    run()


def convert_main() -> None:
    from mmfm.zoo.export import convert_main as run
    run()


def eval_main() -> None:
    from mmfm.evals.standalone import eval_main as run
    run()


COMMANDS = {"train": train_main, "eval": eval_main, "export": export_main, "convert": convert_main}


def data_main() -> None:
    from mmfm.data.cli import data_main as run
    sys.exit(run())


def tokenizer_main() -> None:
    from mmfm.data.cli import tokenizer_main as run
    sys.exit(run())


COMMANDS.update(data=data_main, tokenizer=tokenizer_main)  # mmfm/data/cli.py


def main() -> None:
    """`mmfm <command> ...`: dispatch to the command's own flag parser."""
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(f"usage: mmfm {{{'|'.join(COMMANDS)}}} [flags]; `mmfm <command> --help` for flags",
              file=sys.stderr)
        sys.exit(2)
    cmd = sys.argv.pop(1)
    sys.argv[0] = f"mmfm {cmd}"
    COMMANDS[cmd]()
