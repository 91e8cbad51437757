"""Command line: `mmfm train|eval|export|convert|finetune|data|tokenizer`; all parsing is here.

Thin: every command parses its flags and calls the library, where the logic lives.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Sequence


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("absl", "jax._src", "orbax", "tensorflow_datasets", "grain"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _config_overrides(argv: Sequence[str], flag: str = "config") -> tuple[str | None, list[str]]:
    """(config spec, [override paths]) from argv-style flags."""
    spec, paths = None, []
    args = list(argv)
    for i, a in enumerate(args):
        if a == f"--{flag}" and i + 1 < len(args):
            spec = args[i + 1]
        elif a.startswith(f"--{flag}="):
            spec = a.split("=", 1)[1]
        elif a.startswith(f"--{flag}."):
            paths.append(a[len(flag) + 3:].split("=", 1)[0])
    return spec, paths


def _package_root(path: str) -> str:
    """The directory above the outermost package holding `path` (e.g. the checkout of
    `experiments/configs/demo.py`), so the config's own imports resolve from any directory."""
    d = os.path.dirname(os.path.abspath(path))
    while os.path.isfile(os.path.join(d, "__init__.py")):
        d = os.path.dirname(d)
    return d


def _check_argv(argv: Sequence[str], flag: str = "config") -> None:
    """Makes the config file's imports resolvable, then validates every `--config.x.y=` in argv
    against it before absl parses it."""
    spec, paths = _config_overrides(argv, flag)
    if spec is None:
        return
    path = spec.partition(":")[0]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--{flag} {path}: no such config file")
    root = _package_root(path)
    if root not in sys.path:
        sys.path.insert(0, root)
    if not paths:
        return
    from mmfm.config_utils import check_override_path, load_config
    config = load_config(spec)
    for p in paths:
        check_override_path(config, p)


DISTRIBUTED_FLAGS = ("coordinator", "num_processes", "process_id", "distributed", "init_timeout",
                     "heartbeat_timeout")


def _define_distributed_flags() -> None:
    """Multi-process flags (see mmfm/train/distributed.py); each falls back to its MMFM_* env var."""
    from absl import flags

    flags.DEFINE_string("coordinator", None, "host:port of process 0 (multi-process; env MMFM_COORDINATOR)")
    flags.DEFINE_integer("num_processes", None, "number of processes (env MMFM_NUM_PROCESSES)")
    flags.DEFINE_integer("process_id", None, "this process's index (env MMFM_PROCESS_ID)")
    flags.DEFINE_enum("distributed", None, ["auto", "none"],
                      "auto: jax.distributed auto-detection (TPU VM, SLURM); env MMFM_DISTRIBUTED")
    flags.DEFINE_integer("init_timeout", None, "seconds to wait for all processes (env MMFM_INIT_TIMEOUT)")
    flags.DEFINE_integer("heartbeat_timeout", None,
                         "seconds before a silent process is declared dead (env MMFM_HEARTBEAT_TIMEOUT)")


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
        _define_distributed_flags()

    def main(_argv):
        _setup_logging()
        from mmfm.train.distributed import exit_on_peer_failure, maybe_initialize_distributed
        maybe_initialize_distributed(**{k: getattr(flags_, k) for k in DISTRIBUTED_FLAGS})
        if flags_.config is None or flags_.workdir is None:
            raise app.UsageError("--config and --workdir are required")
        from mmfm.checkpoint import CheckpointSaveError
        from mmfm.evals.runner import train_and_evaluate
        from mmfm.train.resume_config import ResumeConfigError
        from mmfm.train.save_failure import DISK_ERRORS
        try:
            with exit_on_peer_failure():
                train_and_evaluate(flags_.config, flags_.workdir, max_steps=flags_.max_steps)
        except CheckpointSaveError as e:
            _exit_now(str(e), e.exit_code)
        except ResumeConfigError as e:  # refused before anything is written: one line
            _exit_now(f"error: {e}", 2)
        except OSError as e:  # a full disk can hit a log or run file before a checkpoint
            if e.errno not in DISK_ERRORS:
                raise
            _exit_now(_write_failed(e, flags_.workdir), CheckpointSaveError.exit_code)

    _run_absl(main, argv)


def _write_failed(e: OSError, workdir: str) -> str:
    """One line for a run file (metrics, run info, ...) that could not be written."""
    from mmfm import checkpoint
    from mmfm.train.save_failure import failure_cause

    try:
        run = checkpoint.load_run(workdir, params=False)
        good = (f"the last good checkpoint is step {run.step} ({run.root}/{run.step}); free the "
                f"space or fix the permission and rerun the same command to resume from it")
    except (OSError, ValueError):
        good = "there is no checkpoint yet; a rerun starts from the beginning"
    where = e.filename or os.path.abspath(workdir)  # a failed write() names no file
    return f"mmfm: writing {where} failed: {failure_cause(e)}; {good}"


def _run_absl(main, argv=None) -> None:
    """absl's `app.run`, after checking `--config.*` overrides (ml_collections reports an unknown
    one as a bare AttributeError) and the config file itself: one line and exit code 2."""
    from absl import app

    argv = argv or sys.argv
    _usage_errors(lambda: _check_argv(argv))
    app.run(main, argv=argv)


def _usage_errors(fn):
    """Runs `fn`; a user mistake (bad path, bad value) becomes one line and exit code 2."""
    try:
        return fn()
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def export_main(argv=None) -> None:
    """`mmfm export --workdir RUN --out DIR`: params-only export of a run's latest checkpoint."""
    import argparse

    from mmfm.zoo.export import export_from_workdir

    p = argparse.ArgumentParser(prog="mmfm export", description=export_from_workdir.__doc__)
    p.add_argument("--workdir", required=True, help="training workdir, its checkpoints/ or a step dir")
    p.add_argument("--out", required=True, help="export directory to write")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    _setup_logging()
    print(_usage_errors(lambda: export_from_workdir(a.workdir, a.out)))


def convert_main(argv=None) -> None:
    """`mmfm convert --from openclip|hf|big_vision SRC --out DIR [--arch NAME] [--tokenizer F]`."""
    import argparse

    from mmfm.zoo.export import convert_to_export

    p = argparse.ArgumentParser(prog="mmfm convert", description=convert_to_export.__doc__)
    p.add_argument("--from", dest="converter", required=True, choices=("openclip", "hf", "big_vision"))
    p.add_argument("src")
    p.add_argument("--out", required=True)
    p.add_argument("--arch", default=None, help="registry architecture (fixes heads/activation)")
    p.add_argument("--tokenizer", default=None, help="tokenizer file for SigLIP (spiece.model)")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    print(_usage_errors(lambda: convert_to_export(a.src, a.out, converter=a.converter,
                                                  arch=a.arch, tokenizer_file=a.tokenizer)))


def eval_main(argv=None) -> None:
    """`mmfm eval`: a run (`--checkpoint`) or a zoo model (`--model`), see mmfm/evals/standalone.py."""
    from absl import app, flags
    from ml_collections import config_flags

    f = flags.FLAGS
    if "checkpoint" not in f:
        if "config" not in f:
            config_flags.DEFINE_config_file("config", None, "config file with evals.evaluators",
                                            lock_config=True)
        flags.DEFINE_string("checkpoint", None, "training workdir, checkpoints/ dir or step dir")
        flags.DEFINE_string("model", None, "zoo architecture name or export/weights path")
        flags.DEFINE_string("pretrained", None, "pretrained tag for --model")
        flags.DEFINE_string("out", None, "results directory (default: <workdir>/eval)")
        flags.DEFINE_string("data_dir", None, "dataset directory (default: config.data.dir)")

    def run():
        from mmfm.evals import standalone

        if (f.checkpoint is None) == (f.model is None):
            raise ValueError("give exactly one of --checkpoint PATH or --model NAME_OR_EXPORT_PATH")
        if f.checkpoint is not None:
            return standalone.evaluate_checkpoint(f.config, f.checkpoint, out=f.out,
                                                  data_dir=f.data_dir)
        if f.config is None:
            raise ValueError("--model needs --config (which evaluators to run)")
        if not f.out:
            raise ValueError("--model needs --out DIR (where results are written)")
        from mmfm.api import load_eval_model
        m = load_eval_model(f.model, f.pretrained,
                            batch_size=int(standalone.config_get(f.config, "evals.batch_size", 256)))
        return standalone.evaluate(f.config.evals, m, out_dir=f.out,
                                   data_dir=f.data_dir or standalone.config_get(f.config, "data.dir"),
                                   source={"model": f.model, "pretrained": f.pretrained})

    def main(_argv):
        _setup_logging()
        try:
            run()
        except (ValueError, FileNotFoundError) as e:
            raise app.UsageError(str(e)) from None

    _run_absl(main, argv)


def finetune_main(argv=None) -> None:
    """`mmfm finetune --config FILE[:arg] --workdir DIR`: image-tower fine-tuning + probe baseline."""
    from absl import app, flags
    from ml_collections import config_flags

    f = flags.FLAGS
    if "config" not in f:
        config_flags.DEFINE_config_file("config", None, "fine-tuning config file", lock_config=True)
        flags.DEFINE_string("workdir", None, "output directory")

    def main(_argv):
        _setup_logging()
        if f.config is None or f.workdir is None:
            raise app.UsageError("--config and --workdir are required")
        from mmfm.evals.finetune import finetune
        try:
            finetune(f.config, f.workdir)
        except (ValueError, FileNotFoundError) as e:
            raise app.UsageError(str(e)) from None

    _run_absl(main, argv)


def _prepare_parser():
    import argparse

    p = argparse.ArgumentParser(prog="mmfm data prepare",
                                description="Prepare an image-text corpus as a TFDS dataset.")
    p.add_argument("--format", required=True, choices=("wds", "jsonl"))
    p.add_argument("--src", required=True,
                   help="tar shards (brace patterns allowed, '::' separated) or a jsonl file")
    p.add_argument("--name", required=True, help="dataset name (config.data.dataset)")
    p.add_argument("--data-dir", required=True, help="TFDS data dir (config.data.dir)")
    p.add_argument("--image-root", default="", help="jsonl: image folder (default: its folder)")
    p.add_argument("--test-fraction", type=float, default=0.01)
    p.add_argument("--max-pixels", type=int, default=64_000_000)
    p.add_argument("--min-side", type=int, default=1)
    p.add_argument("--max-caption-chars", type=int, default=4096)
    p.add_argument("--vocab-size", type=int, default=8000, help="the dataset's tokenizer")
    p.add_argument("--overwrite", action="store_true",
                   help="rebuild NAME even if it exists (needed when --src changed)")
    return p


def data_main(argv=None) -> None:
    """`mmfm data prepare --format wds|jsonl --src ... --name NAME --data-dir DIR` (see
    `mmfm.data.builders.corpus.prepare`); prints the written and skipped counts by reason, the
    first skipped records of each and where all of them are listed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "prepare":
        print("usage: mmfm data prepare --format wds|jsonl --src ... --name NAME --data-dir DIR",
              file=sys.stderr)
        sys.exit(2)
    a = _prepare_parser().parse_args(argv[1:])
    if not 0.0 <= a.test_fraction < 1.0:
        print(f"error: --test-fraction must be in [0, 1), got {a.test_fraction}", file=sys.stderr)
        sys.exit(2)
    from mmfm.data.builders.corpus import format_summary, prepare
    summary = _usage_errors(lambda: prepare(
        a.format, src=a.src, name=a.name, data_dir=a.data_dir, vocab_size=a.vocab_size,
        overwrite=a.overwrite, image_root=a.image_root, test_fraction=a.test_fraction,
        max_pixels=a.max_pixels, min_side=a.min_side, max_caption_chars=a.max_caption_chars))
    print(format_summary(summary, data_dir=a.data_dir))
    print(f"train with: --config.data.name={a.format} --config.data.dataset={a.name} "
          f"--config.data.dir={a.data_dir}")


def tokenizer_main(argv=None) -> None:
    """`mmfm tokenizer train --input FILE|DIR --output tok.model [--vocab-size N]`."""
    import argparse

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "train":
        print("usage: mmfm tokenizer train --input FILE|DIR --output tok.model", file=sys.stderr)
        sys.exit(2)
    p = argparse.ArgumentParser(prog="mmfm tokenizer train",
                                description="Train a SentencePiece tokenizer on captions.")
    p.add_argument("--input", required=True, help=".txt (one caption a line), .jsonl or a "
                                                   "prepared dataset directory")
    p.add_argument("--output", required=True, help="where to write the .model file")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--model-type", default="bpe", choices=("bpe", "unigram"))
    p.add_argument("--no-lowercase", action="store_true", help="keep case (default: fold)")
    a = p.parse_args(argv[1:])
    from mmfm.data.tokenizers import iter_texts, train_tokenizer
    tok = train_tokenizer(iter_texts(a.input), a.output, vocab_size=a.vocab_size,
                          lowercase=not a.no_lowercase, model_type=a.model_type)
    print(f"wrote {a.output}: {tok.vocab_size} ids (pad {tok.pad_id}, bos {tok.bos_id}, "
          f"eot {tok.eot_id}, mask {tok.mask_id})")


COMMANDS = {"train": train_main, "eval": eval_main, "export": export_main, "convert": convert_main,
            "finetune": finetune_main, "data": data_main, "tokenizer": tokenizer_main}


def main() -> None:
    """`mmfm <command> ...`: dispatch to the command's own flag parser."""
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(f"usage: mmfm {{{'|'.join(COMMANDS)}}} [flags]; `mmfm <command> --help` for flags",
              file=sys.stderr)
        sys.exit(2)
    cmd = sys.argv.pop(1)
    sys.argv[0] = f"mmfm {cmd}"
    COMMANDS[cmd]()
