"""Command line: `mmfm <command> ...`; all command-line parsing is here.

Thin: every command parses its flags and calls the library, where the logic lives. `mmfm --help`
lists the commands (one line each, from each `*_main` docstring); `mmfm <command> --help` shows
that command's flags with defaults. Flags are spelt with underscores (`--data_dir`); the dashed
spelling (`--data-dir`) is accepted too. A user error (bad flag, config key, path or data) is one
line on stderr and exit code 2; `MMFM_DEBUG=1` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Optional, Sequence

DEBUG_ENV = "MMFM_DEBUG"
USAGE_EXIT = 2
INTERRUPT_EXIT = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C'd program


class UsageError(Exception):
    """A mistake on the command line, reported as one line and exit code 2."""


def _user_errors() -> tuple:
    """Exception types that mean "the user asked for something wrong", not a bug in mmfm."""
    from absl import app, flags
    return (UsageError, app.UsageError, flags.Error, ValueError, FileNotFoundError, NotADirectoryError,
            IsADirectoryError, PermissionError, ConnectionError)


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "").lower() not in ("", "0", "false", "no")


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def _error_line(prog: str, e: BaseException) -> str:
    text = str(e) or type(e).__name__
    if "Traceback (most recent call last)" in text:  # ml_collections embeds the config's traceback
        head, _, tb = text.partition("Traceback (most recent call last)")
        last = [line for line in tb.splitlines() if line.strip()][-1:]
        text = head.rstrip(" :\n\t") + (": " + last[0].strip() if last else "")
    if isinstance(e, KeyError):
        text = f"unknown key {text}"
    return f"{prog}: error: {_one_line(text)} ({DEBUG_ENV}=1 shows the traceback)"


def _guard(prog: str, fn: Callable, *, hard_exit: bool = False):
    """Runs `fn`; a user error becomes one line on stderr and exit 2 (the traceback only with
    MMFM_DEBUG=1). `hard_exit`: leave without atexit hooks (see `_exit_now`)."""
    try:
        return fn()
    except _user_errors() as e:
        if _debug():
            raise
        if hard_exit:
            _exit_now(_error_line(prog, e), USAGE_EXIT)
        print(_error_line(prog, e), file=sys.stderr, flush=True)
        sys.exit(USAGE_EXIT)


def _summary(fn: Callable) -> str:
    """The first line of a command function's docstring, without a leading `usage`: part."""
    import re

    line = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
    m = re.match(r"^`[^`]*`:\s*(.*)$", line)
    line = m.group(1) if m else line
    return line[:1].upper() + line[1:]


def _canonical_flags(argv: Sequence[str], known) -> list[str]:
    """`--data-dir=x` -> `--data_dir=x` for every flag whose underscore spelling is known."""
    out = []
    for a in argv:
        if a.startswith("--") and not a.startswith("--config."):
            name, eq, value = a[2:].partition("=")
            alt = name.replace("-", "_")
            if "-" in name and alt in known:
                a = f"--{alt}{eq}{value}"
        out.append(a)
    return out


def _paragraphs(text: str, width: int = 100) -> str:
    """Wraps each blank-line separated paragraph of `text` (argparse keeps descriptions raw)."""
    import textwrap
    return "\n\n".join(textwrap.fill(p, width) for p in text.split("\n\n"))


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """argparse help with each option's default (when it has one worth showing)."""

    def _get_help_string(self, action):
        h = action.help or ""
        d = action.default
        if (action.option_strings and not action.required and d not in (None, False, "", argparse.SUPPRESS)
                and "default" not in h):
            h += f" (default: {d})"
        elif action.required and "required" not in h:
            h += " (required)"
        return h


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2), defaults in the help and both flag spellings."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class",
                          lambda prog: _HelpFormatter(prog, width=100, max_help_position=30))
        if kwargs.get("description"):
            kwargs["description"] = _paragraphs(kwargs["description"])
        super().__init__(*args, **kwargs)

    def error(self, message):
        print(f"{self.prog}: error: {_one_line(message)} (`{self.prog} --help` lists the flags)",
              file=sys.stderr, flush=True)
        sys.exit(USAGE_EXIT)

    def parse_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        known = {s[2:] for a in self._actions for s in a.option_strings if s.startswith("--")}
        for a in self._actions:  # subcommands' flags too (`mmfm data prepare --data-dir`)
            for sub in getattr(a, "choices", None) or {}:
                if isinstance(a.choices, dict) and isinstance(a.choices[sub], argparse.ArgumentParser):
                    known |= {s[2:] for b in a.choices[sub]._actions for s in b.option_strings
                              if s.startswith("--")}
        return super().parse_args(_canonical_flags(args, known), namespace)


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


def _distill_teacher(*args):
    """An export / zoo distillation teacher, read by the API layer (imported only when used)."""
    from mmfm.api import distill_teacher
    return distill_teacher(*args)


def train_main(argv=None) -> None:
    """Train a model from a config file, or resume the run in --workdir."""
    from absl import flags
    from ml_collections import config_flags

    flags_ = flags.FLAGS
    if "config" not in flags_:
        config_flags.DEFINE_config_file("config", None, "experiment config file; ARG is passed to "
                                        "its get_config(ARG), e.g. demo.py:tiny", lock_config=True)
        flags.DEFINE_string("workdir", None, "run directory (checkpoints, logs); an existing one "
                            "is resumed from its latest checkpoint")
        flags.DEFINE_integer("max_steps", None, "stop after this step; the schedule still follows "
                             "config.total_steps (default: train to config.total_steps)")
        _define_distributed_flags()

    def main(_argv):
        _setup_logging()
        from mmfm.train.distributed import exit_on_peer_failure, maybe_initialize_distributed
        maybe_initialize_distributed(**{k: getattr(flags_, k) for k in DISTRIBUTED_FLAGS})
        if flags_.config is None or flags_.workdir is None:
            raise UsageError("--config and --workdir are required")
        from mmfm.checkpoint import CheckpointSaveError, Interrupted
        from mmfm.evals.runner import train_and_evaluate
        from mmfm.train.resume_config import ResumeConfigError
        from mmfm.train.save_failure import DISK_ERRORS
        try:
            with exit_on_peer_failure():
                train_and_evaluate(flags_.config, flags_.workdir, max_steps=flags_.max_steps,
                                   resolve_teacher=_distill_teacher)
        except CheckpointSaveError as e:
            _exit_now(str(e), e.exit_code)
        except Interrupted as e:  # Ctrl-C: saved and stopped; scripts see 130, not success
            logging.shutdown()  # the run closed cleanly: an ordinary exit (atexit hooks run)
            print(f"mmfm train: {e}", file=sys.stderr, flush=True)
            sys.exit(INTERRUPT_EXIT)
        except ResumeConfigError as e:  # refused before anything is written: one line
            _exit_now(f"mmfm train: error: {e}", USAGE_EXIT)
        except OSError as e:  # a full disk can hit a log or run file before a checkpoint
            if e.errno not in DISK_ERRORS:
                raise
            _exit_now(_write_failed(e, flags_.workdir), CheckpointSaveError.exit_code)

    _run_absl(main, argv, prog="mmfm train", names=("config", "workdir", "max_steps"),
              usage="--config FILE[:ARG] --workdir DIR [--config.KEY=VALUE ...] [flags]",
              groups=(("multi-process flags (each falls back to its MMFM_* environment variable)",
                       DISTRIBUTED_FLAGS),), overrides=True, hard_exit=True)


def _write_failed(e: OSError, workdir: str) -> str:
    """One line for a run file (metrics, run info, ...) that could not be written."""
    from mmfm import checkpoint, fileio
    from mmfm.train.save_failure import failure_cause

    try:
        run = checkpoint.load_run(workdir, params=False)
        good = (f"the last good checkpoint is step {run.step} ({run.root}/{run.step}); free the "
                f"space or fix the permission and rerun the same command to resume from it")
    except (OSError, ValueError):
        good = "there is no checkpoint yet; a rerun starts from the beginning"
    where = e.filename or fileio.absolute(workdir)  # a failed write() names no file
    return f"mmfm: writing {where} failed: {failure_cause(e)}; {good}"


_METAVARS = {"config": "FILE[:ARG]", "workdir": "DIR", "checkpoint": "PATH", "out": "DIR",
             "model": "NAME_OR_PATH", "pretrained": "TAG", "data_dir": "DIR", "max_steps": "N",
             "coordinator": "HOST:PORT", "num_processes": "N", "process_id": "I",
             "distributed": "auto|none", "init_timeout": "SECONDS", "heartbeat_timeout": "SECONDS"}

OVERRIDES_HELP = """\
config overrides:
  --config.KEY=VALUE   set one key of the config file, dots for nested keys; repeat as needed:
                         --config.total_steps=200 --config.optim.lr=3e-4 --config.data.dir=/data
                       VALUE is parsed as the key's type (numbers, True/False, tuples like
                       '(1,-1,1)', strings as typed). An unknown key fails and lists the valid ones.
  To see every key of a config and its value, add --config to --help:
    {prog} --help --config FILE[:ARG]"""


def _wrap_flag(left: str, text: str, width: int = 100, col: int = 24) -> list[str]:
    import textwrap

    body = textwrap.wrap(text, width - col) or [""]
    if len(left) + 2 > col:
        return [left] + [" " * col + t for t in body]
    return [left.ljust(col) + body[0]] + [" " * col + t for t in body[1:]]


def _absl_flag_rows(names) -> list[str]:
    from absl import flags

    rows = []
    for n in names:
        fl = flags.FLAGS[n]
        text = fl.help or ""
        if fl.default not in (None, "") and "default" not in text:
            text += f" (default: {fl.default})"
        meta = "" if fl.boolean else " " + _METAVARS.get(n, n.upper())
        rows += _wrap_flag(f"  --{n}{meta}", text)
    return rows


def _config_keys(spec: str) -> str:
    """Every leaf key of the config `spec` with its value, one per line."""
    import ml_collections

    from mmfm.config_utils import load_config

    config = load_config(spec)
    rows: list[str] = []

    def walk(node, prefix):
        for k in sorted(node.keys()):
            v = node[k]
            if isinstance(v, ml_collections.ConfigDict) and len(v.keys()):
                walk(v, f"{prefix}{k}.")
            else:
                rows.append(f"  {prefix}{k} = {v!r}")

    walk(config, "")
    return f"keys of {spec} (override any with --config.KEY=VALUE):\n" + "\n".join(rows)


def _absl_help(prog: str, summary: str, usage: str, names, groups=(), overrides=False,
               epilog: str = "") -> str:
    out = [f"usage: {prog} {usage}", "", summary, "", "flags:", *_absl_flag_rows(names)]
    for title, group in groups:
        out += ["", f"{title}:", *_absl_flag_rows(group)]
    if overrides:
        out += ["", OVERRIDES_HELP.format(prog=prog)]
    if epilog:
        out += ["", epilog]
    out += ["", f"environment: {DEBUG_ENV}=1 shows tracebacks for errors"]
    return "\n".join(out)


def _run_absl(main, argv=None, *, prog: Optional[str] = None, names=None, usage: str = "[flags]",
              groups=(), overrides: bool = True, epilog: str = "", hard_exit: bool = False,
              summary: Optional[str] = None) -> None:
    """absl's `app.run` for a command with an ml_collections `--config`, behind mmfm's own help
    (`--help`/`-h`: this command's flags with defaults, `--config.KEY=VALUE`, and with `--config`
    the config's keys) and one-line user errors (exit 2): a bad flag or value, an unknown
    `--config.*` key (checked against the config file before absl parses it; ml_collections would
    raise a bare AttributeError), a missing config file, an error in `main`."""
    from absl import app, flags

    argv = list(sys.argv if argv is None else argv)
    prog = prog or argv[0]
    if summary is None:
        command = COMMANDS.get(prog.split(" ", 1)[-1]) if prog.startswith("mmfm ") else None
        summary = _summary(command) if command is not None else ""
    F = flags.FLAGS
    if names is None:
        names = [f.name for f in F.get_flags_for_module(__name__)]
    in_groups = {n for _, g in groups for n in g}
    names = [n for n in names if n not in in_groups]
    argv = argv[:1] + _canonical_flags(argv[1:], set(F))
    if any(a in ("-h", "--help") for a in argv[1:]):
        text = _absl_help(prog, summary, usage, names, groups, overrides,
                          epilog)
        spec = _config_overrides(argv)[0]
        if spec is not None:
            _guard(prog, lambda: _check_argv([a for a in argv if not a.startswith("--config.")]))
            text += "\n\n" + _guard(prog, lambda: _config_keys(spec))
        print(text)
        sys.exit(0)
    _guard(prog, lambda: _check_argv(argv))

    def parse(args):
        def run():
            try:
                rest = F(args)
            except (ImportError, SyntaxError) as e:  # inside the user's config file
                raise UsageError(f"--config: {type(e).__name__}: {e}") from e
            if len(rest) > 1:
                raise UsageError(f"unexpected argument {rest[1]!r} (flags are --name=value)")
            return rest
        return _guard(prog, run)

    def guarded_main(args):
        return _guard(prog, lambda: main(args), hard_exit=hard_exit)

    app.run(guarded_main, argv=argv, flags_parser=parse)


def _usage_errors(fn):
    """Runs `fn`; a user mistake (bad path, bad value) becomes one line and exit code 2."""
    return _guard(os.path.basename(sys.argv[0]) if sys.argv else "mmfm", fn)


def export_main(argv=None) -> None:
    """Export a run's latest checkpoint (params only) or serialized encoders (--format stablehlo)."""
    p = _Parser(prog="mmfm export", description=_summary(export_main) + "\n\n"
                "Reads the run read-only (also while it trains), from any directory, without the "
                "training data. --format mmfm writes params.safetensors, config.json (model, "
                "preprocessing, tokenizer, zero-shot class names) and the tokenizer file, for "
                "mmfm.create_model_and_transforms. --format stablehlo writes the image and text "
                "encoders as jax.export files (uint8 pixels / token ids in, normalised embeddings "
                "out, any batch size) that mmfm.local.load runs with only jax and numpy; it also "
                "serializes an export directory or zoo model (--model). Both write MODEL_CARD.md "
                "(architecture, training, recorded evals, failure modes).")
    p.add_argument("--workdir", default=None, help="training workdir, its checkpoints/ or a step dir")
    p.add_argument("--model", default=None, help="with --format stablehlo, instead of --workdir: "
                                                 "an export directory or a zoo architecture name")
    p.add_argument("--pretrained", default=None, help="pretrained tag or weights path for --model")
    p.add_argument("--out", required=True, help="directory to write (replaced if it exists)")
    p.add_argument("--format", default="mmfm", choices=("mmfm", "stablehlo"),
                   help="mmfm: an export directory; stablehlo: serialized encoders")
    p.add_argument("--suite_results", action="append", default=[], metavar="DIR_OR_JSON",
                   help="an `mmfm eval --suite` output (its directory or suite_results.json) to "
                        "include in MODEL_CARD.md (repeatable); those inside the workdir are "
                        "included anyway")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    if (a.workdir is None) == (a.model is None):
        p.error("give exactly one of --workdir RUN or --model NAME_OR_EXPORT_DIR")
    if a.model is None and a.pretrained is not None:
        p.error("--pretrained goes with --model")
    if a.model is not None and a.format != "stablehlo":
        p.error("--model needs --format stablehlo (an export directory already is the mmfm format; "
                "`mmfm convert` converts other weights)")
    if a.model is not None and a.suite_results:
        p.error("--suite_results goes with --workdir (an export's MODEL_CARD.md is copied as it is)")
    _setup_logging()

    def run():
        from mmfm.api import serialize
        from mmfm.zoo.export import export_from_workdir

        if a.format == "mmfm":
            return export_from_workdir(a.workdir, a.out, suite_results=a.suite_results)
        if a.model is not None:
            return serialize(a.model, a.pretrained, out=a.out)
        return serialize(None, workdir=a.workdir, out=a.out, suite_results=a.suite_results)

    print(_guard(p.prog, run))


def convert_main(argv=None) -> None:
    """Convert open_clip, Hugging Face or big_vision weights into an mmfm export directory."""
    from mmfm.zoo.export import convert_to_export

    p = _Parser(prog="mmfm convert", description=_summary(convert_main) + "\n\n"
                "Reads .safetensors and .npz files only (pickled .bin/.pt files are refused, with "
                "the one-line command that converts them).")
    p.add_argument("--from", dest="converter", required=True, choices=("openclip", "hf", "big_vision"),
                   help="source format: openclip (open_clip's hub layout directory, or a "
                        ".safetensors state dict with --arch/--model_config), hf (a Hugging Face "
                        "model directory) or big_vision (a .npz)")
    p.add_argument("src", help="the weights file or directory")
    p.add_argument("--out", required=True, help="export directory to write")
    p.add_argument("--arch", default=None, help="registry architecture (fixes heads, activation, "
                                                "LayerNorm eps); `mmfm zoo` lists them")
    p.add_argument("--model_config", default=None,
                   help="an open_clip model config JSON (as open_clip.add_model_config takes) for a "
                        "bare open_clip state dict")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer file (tokenizer.json, merges.txt with vocab.json beside it, "
                        "spiece.model, tokenizer.model); default: the one found beside the weights")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    print(_guard(p.prog, lambda: convert_to_export(a.src, a.out, converter=a.converter,
                                                   arch=a.arch, model_config=a.model_config,
                                                   tokenizer_file=a.tokenizer)))


def quantize_main(argv=None) -> None:
    """Write an int8 copy (qwix, per-channel weights) of a run, an export or a zoo model."""
    p = _Parser(prog="mmfm quantize", description=_summary(quantize_main) + "\n\n"
                "The output is an export directory (config.json records the quantization) that "
                "mmfm.create_model_and_transforms, mmfm.load_eval_model and `mmfm eval --model` "
                "load like any other. Weights of every matmul are int8 with one scale per output "
                "channel, the token embedding int8 per row; LayerNorms, biases and position tables "
                "stay float32. --activations int8 also quantizes every matmul's input per token "
                "at run time (int8 x int8 -> int32 dots).")
    p.add_argument("src", help="training workdir (or checkpoints/ or a step dir), export "
                               "directory, weights path, or zoo architecture name")
    p.add_argument("--out", required=True, help="export directory to write (replaced if it exists)")
    p.add_argument("--pretrained", default=None, help="pretrained tag for an architecture name "
                                                      "(default: its random init)")
    p.add_argument("--activations", default="float", choices=("float", "int8"),
                   help="int8: activations too (float: weights only)")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    _setup_logging()

    def run():
        from mmfm.api import quantize_export
        from mmfm.zoo.quantize import file_bytes

        out = quantize_export(a.src, a.out, pretrained=a.pretrained, activations=a.activations)
        print(f"{out} ({file_bytes(out) / 1e6:.2f} MB)")
    _guard(p.prog, run)


EVAL_EPILOG = """\
examples:
  mmfm eval --checkpoint runs/demo                        the run's own end-of-training eval
  mmfm eval --checkpoint runs/demo --config CFG.py        the evaluators of CFG.evals.evaluators
  mmfm eval --model ViT-B-32 --pretrained openai --config CFG.py --out DIR
  mmfm eval --checkpoint runs/demo --suite shapes         compositional, per-group, dense probe
  mmfm eval --model ViT-B-32 --pretrained openai --suite datacomp --data_dir TFDS --out DIR
results: OUT/eval_results.json (step, source, metrics, timings), OUT/metrics.jsonl, OUT/tb/;
with --suite: OUT/suite_results.{md,json} and a row of OUT/<suite>_results.csv (or --csv)"""



def eval_main(argv=None) -> None:
    """Evaluate a training run (--checkpoint) or a zoo model or export (--model)."""
    from absl import flags
    from ml_collections import config_flags

    f = flags.FLAGS
    if "checkpoint" not in f:
        if "config" not in f:
            config_flags.DEFINE_config_file("config", None, "config file whose evals.evaluators "
                                            "are run (default with --checkpoint: the run's own "
                                            "end-of-training eval)", lock_config=True)
        flags.DEFINE_string("checkpoint", None, "training workdir, checkpoints/ dir or step dir")
        flags.DEFINE_string("model", None, "zoo architecture name or export/weights path")
        flags.DEFINE_string("pretrained", None, "pretrained tag for --model")
        flags.DEFINE_string("out", None, "results directory (default: <workdir>/eval)")
        flags.DEFINE_string("data_dir", None, "dataset directory (default: config.data.dir)")
        flags.DEFINE_string("suite", None, "run an evaluation suite instead of config evaluators: "
                            "shapes, clip_benchmark or datacomp")
        flags.DEFINE_string("csv", None, "with --suite: results CSV (open_clip's layout) to add "
                            "this model's row to (default: OUT/<suite>_results.csv)")
        flags.DEFINE_string("name", None, "with --suite: the model's name in the CSV (default: the "
                            "run directory's name, or --model)")
        flags.DEFINE_integer("max_examples", None, "with --suite: at most this many examples per "
                             "benchmark task (a quick look, not a published number)")

    def suite():
        from mmfm.evals import standalone
        from mmfm.evals.suites import SUITES

        if f.suite not in SUITES:
            raise UsageError(f"--suite {f.suite!r} is not a suite; valid: {', '.join(SUITES)}")
        batch_size = int(standalone.config_get(f.config, "evals.batch_size", 256))
        if f.checkpoint is not None:
            return standalone.suite_on_checkpoint(
                f.suite, f.checkpoint, out=f.out, data_dir=f.data_dir, csv_path=f.csv,
                max_examples=f.max_examples, batch_size=batch_size, name=f.name)
        if not f.out:
            raise UsageError("--model needs --out DIR (where results are written)")
        data_dir = f.data_dir or standalone.config_get(f.config, "data.dir")
        if f.suite == "shapes" and not data_dir:
            raise UsageError("--suite shapes with --model needs --data_dir (where the built-in "
                             "data is built or found)")
        from mmfm.api import load_eval_model
        m = load_eval_model(f.model, f.pretrained, batch_size=batch_size)
        shapes = {k: v for k in ("image_size", "num_train", "num_test", "seed")
                  if (v := standalone.config_get(f.config, f"data.{k}")) is not None}
        return standalone.evaluate_suite(
            f.suite, m, out_dir=f.out, name=f.name or f.model, pretrained=f.pretrained or "",
            data_dir=data_dir, shapes=shapes, csv_path=f.csv, max_examples=f.max_examples,
            source={"model": f.model, "pretrained": f.pretrained})

    def run():
        from mmfm.evals import standalone

        if (f.checkpoint is None) == (f.model is None):
            raise UsageError("give exactly one of --checkpoint PATH or --model NAME_OR_EXPORT_PATH")
        if f.suite is not None:
            return suite()
        if f.checkpoint is not None:
            return standalone.evaluate_checkpoint(f.config, f.checkpoint, out=f.out,
                                                  data_dir=f.data_dir)
        if f.config is None:
            raise UsageError("--model needs --config (which evaluators to run)")
        if not f.out:
            raise UsageError("--model needs --out DIR (where results are written)")
        from mmfm.api import load_eval_model
        m = load_eval_model(f.model, f.pretrained,
                            batch_size=int(standalone.config_get(f.config, "evals.batch_size", 256)))
        return standalone.evaluate(f.config.evals, m, out_dir=f.out,
                                   data_dir=f.data_dir or standalone.config_get(f.config, "data.dir"),
                                   source={"model": f.model, "pretrained": f.pretrained})

    def main(_argv):
        _setup_logging()
        run()

    _run_absl(main, argv, prog="mmfm eval", usage="(--checkpoint RUN | --model NAME_OR_PATH) "
              "[--config FILE[:ARG]] [--out DIR] [--config.KEY=VALUE ...]",
              names=("checkpoint", "model", "pretrained", "config", "out", "data_dir", "suite",
                     "csv", "name", "max_examples"),
              epilog=EVAL_EPILOG)


PREPARE_EPILOG = """\
formats:
  jsonl  one JSON object a line: {"image": "relative/path.jpg", "caption": "..."} or with
         "captions": ["...", "..."] (several per image); paths are relative to --image_root
  wds    webdataset tar shards as img2dataset writes them: KEY.jpg|jpeg|png|webp with KEY.txt
         (or KEY.json holding "caption"); brace patterns like '/data/{00000..00099}.tar'
Unreadable records (corrupt or tiny images, missing files, bad JSON, unsafe paths) are skipped
and counted by reason in the summary. Writes DATA_DIR/FORMAT/NAME/ and its tokenizer.model;
then train with --config.data.name=FORMAT --config.data.dataset=NAME --config.data.dir=DATA_DIR."""


def _prepare_parser(sub=None):
    doc = "Prepare an image-text corpus (jsonl + images, or webdataset tars) for training."
    kw = dict(description=doc, epilog=PREPARE_EPILOG)
    p = sub.add_parser("prepare", help=doc, **kw) if sub is not None else _Parser(
        prog="mmfm data prepare", **kw)
    p.add_argument("--format", required=True, choices=("wds", "jsonl"), help="corpus format (below)")
    p.add_argument("--src", required=True,
                   help="jsonl: the .jsonl file; wds: tar shards (brace patterns allowed, several "
                        "separated by '::')")
    p.add_argument("--name", required=True, help="dataset name: lower-case letters, digits, '_' "
                                                 "(config.data.dataset)")
    p.add_argument("--data_dir", required=True, help="where prepared datasets live (config.data.dir)")
    p.add_argument("--image_root", default="", help="jsonl: folder the image paths are relative to "
                                                    "(default: the jsonl file's folder)")
    p.add_argument("--test_fraction", type=float, default=0.01,
                   help="share of records held out as the test split, in [0, 1)")
    p.add_argument("--max_pixels", type=int, default=64_000_000,
                   help="skip images with more pixels (decompression bombs)")
    p.add_argument("--min_side", type=int, default=1, help="skip images with a shorter side")
    p.add_argument("--max_caption_chars", type=int, default=4096,
                   help="skip records whose caption is longer")
    p.add_argument("--vocab_size", type=int, default=8000,
                   help="size of the dataset's SentencePiece tokenizer")
    p.add_argument("--overwrite", action="store_true",
                   help="rebuild NAME even if it exists (needed when --src changed)")
    return p


def _subcommands(prog: str, doc: str) -> tuple[_Parser, "argparse._SubParsersAction"]:
    p = _Parser(prog=prog, description=doc)
    return p, p.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", parser_class=_Parser,
                               required=True)


def data_main(argv=None) -> None:
    """Prepare your own image-text data for training (data prepare: jsonl + images, or tars)."""
    p, sub = _subcommands("mmfm data", _summary(data_main))
    _prepare_parser(sub)
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    if not 0.0 <= a.test_fraction < 1.0:
        p.error(f"--test_fraction must be in [0, 1), got {a.test_fraction}")
    from mmfm.data.builders.corpus import format_summary, prepare
    summary = _guard("mmfm data prepare", lambda: prepare(
        a.format, src=a.src, name=a.name, data_dir=a.data_dir, vocab_size=a.vocab_size,
        overwrite=a.overwrite, image_root=a.image_root, test_fraction=a.test_fraction,
        max_pixels=a.max_pixels, min_side=a.min_side, max_caption_chars=a.max_caption_chars))
    print(format_summary(summary, data_dir=a.data_dir))
    print(f"train with: --config.data.name={a.format} --config.data.dataset={a.name} "
          f"--config.data.dir={a.data_dir}")


def tokenizer_main(argv=None) -> None:
    """Train a SentencePiece tokenizer on your captions (tokenizer train)."""
    p, sub = _subcommands("mmfm tokenizer", _summary(tokenizer_main))
    doc = "Train a SentencePiece tokenizer on captions (pad, bos, eot and mask ids reserved)."
    t = sub.add_parser("train", help=doc, description=doc)
    t.add_argument("--input", required=True, help=".txt (one caption a line), .jsonl (its caption "
                                                  "fields) or a prepared dataset directory")
    t.add_argument("--output", required=True, help="where to write the .model file")
    t.add_argument("--vocab_size", type=int, default=8000, help="number of pieces")
    t.add_argument("--model_type", default="bpe", choices=("bpe", "unigram"),
                   help="SentencePiece model type")
    t.add_argument("--no_lowercase", action="store_true", help="keep case (default: fold to lower)")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    from mmfm.data.tokenizers import iter_texts, train_tokenizer
    tok = _guard("mmfm tokenizer train", lambda: train_tokenizer(
        iter_texts(a.input), a.output, vocab_size=a.vocab_size, lowercase=not a.no_lowercase,
        model_type=a.model_type))
    print(f"wrote {a.output}: {tok.vocab_size} ids (pad {tok.pad_id}, bos {tok.bos_id}, "
          f"eot {tok.eot_id}, mask {tok.mask_id})")


def recipes_main(argv=None) -> None:
    """List the experiment recipes that ship with mmfm, or copy one out to edit (`copy NAME DEST`)."""
    import shutil

    from mmfm import recipes

    p = _Parser(prog="mmfm recipes", description="The experiment configs that ship with mmfm: "
                "list them, or copy one out to edit and train with `mmfm train --config FILE`.")
    sub = p.add_subparsers(dest="action", parser_class=_Parser)
    sub.add_parser("list", help="names and descriptions (the default)")
    cp = sub.add_parser("copy", help="write a recipe's file to DEST")
    cp.add_argument("name", help="a recipe name from `mmfm recipes`, e.g. demo")
    cp.add_argument("dest", nargs="?", help="file or directory (default: ./NAME.py)")
    cp.add_argument("--force", action="store_true", help="overwrite an existing DEST")
    a = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    if a.action in (None, "list"):
        names = recipes.available()
        width = max(map(len, names))
        for name, doc in names.items():
            print(f"{name:<{width}}  {doc}")
        print("\ncopy one with `mmfm recipes copy NAME [DEST]`, then "
              "`mmfm train --config DEST --workdir DIR`")
        return
    try:
        src = recipes.recipe_path(a.name)
    except ValueError as e:
        p.error(str(e))
    dest = a.dest or f"{os.path.basename(src)}"
    if os.path.isdir(dest):
        dest = os.path.join(dest, os.path.basename(src))
    if os.path.exists(dest) and not a.force:
        p.error(f"{dest} exists (use --force to overwrite)")
    shutil.copyfile(src, dest)
    print(f"wrote {dest}; train it with: mmfm train --config {dest}:tiny --workdir runs/try")


def zoo_main(argv=None) -> None:
    """List the model architectures and pretrained tags (source, size, cached or not)."""
    p = _Parser(prog="mmfm zoo", description=_summary(zoo_main) + "\n\nLoad one with "
                "mmfm.create_model_and_transforms(ARCH, pretrained=TAG); a tag is downloaded into "
                "the cache on first use (MMFM_OFFLINE=1: never download).")
    p.add_argument("--cache_dir", default=None,
                   help="weights cache (default: $MMFM_CACHE_DIR, else ~/.cache/mmfm)")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    from mmfm.zoo.pretrained import zoo_listing
    archs, tags, cache = zoo_listing(a.cache_dir)

    def table(header, rows):
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        return [fmt.format(*header).rstrip(), *(fmt.format(*map(str, r)).rstrip() for r in rows)]

    out = ["architectures (mmfm.create_model(ARCH); random init without a tag); towers are "
           "width x depth, image /patch size:"]
    out += ["  " + r for r in table(("ARCH", "PARAMS", "IMAGE", "TEXT", "EMBED", "TAGS"), [
        (r["arch"], r["params"], r["image"], r["text"], r["embed_dim"], ",".join(r["tags"]) or "-")
        for r in archs])]
    out += ["", "pretrained tags (mmfm.create_model(ARCH, pretrained=TAG)):"]
    out += ["  " + r for r in table(("ARCH", "TAG", "FORMAT", "SOURCE", "SIZE (fp32)", "CACHED"), [
        (r["arch"], r["tag"], r["converter"], r["source"], r["size"],
         "yes" if r["cached"] else "no") for r in tags])]
    out += ["", f"cache: {cache} (MMFM_CACHE_DIR); MMFM_OFFLINE=1 never downloads"]
    print("\n".join(out))


EMBED_EPILOG = """\
examples:
  mmfm embed --model runs/demo --images photos/ --out photos.safetensors
  mmfm embed --model ViT-B-32 --pretrained openai --texts captions.txt --out captions.safetensors
  mmfm search --index photos.safetensors --text "a red circle" -k 5 --grid hits.png
The file holds embeddings (float32 [N, D], L2-normalised), the ids (image paths relative to their
folder, or "LINE: text") and the model. Rerun the same command to add new files: what is already
in --out is skipped; progress is saved every --save_every batches, so a killed run resumes."""


def embed_main(argv=None) -> None:
    """Embed a folder of images or a file of texts into an index file (resumable)."""
    p = _Parser(prog="mmfm embed", description=_summary(embed_main) + "\n\nMODEL is a training "
                "run, an export directory (also int8), a zoo architecture with --pretrained, or a "
                "serialized model directory. Images use the model's own eval preprocessing; "
                "unreadable images are skipped and counted.", epilog=EMBED_EPILOG)
    p.add_argument("--model", required=True, help="run dir, export dir, zoo name or serialized dir")
    p.add_argument("--pretrained", default=None, help="pretrained tag or weights file for a zoo name")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", nargs="+", metavar="DIR_OR_LIST",
                     help="image folders (searched recursively) or text files listing image paths")
    src.add_argument("--texts", metavar="FILE", help="a text file, one text a line")
    p.add_argument("--out", required=True, help="index file to write (.safetensors); an existing "
                                                "one is extended")
    p.add_argument("--batch_size", type=int, default=64, help="items per model call")
    p.add_argument("--save_every", type=int, default=20, help="save progress every N batches")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    if a.batch_size < 1 or a.save_every < 1:
        p.error("--batch_size and --save_every must be >= 1")
    from mmfm import embed

    def run():
        for s in a.images or [a.texts]:  # cheap checks first, before the model loads
            if not os.path.exists(s):
                raise FileNotFoundError(f"{'--images' if a.images else '--texts'} {s}: no such "
                                        "file or folder")
        enc = embed.load_encoder(a.model, a.pretrained, batch_size=a.batch_size)
        if a.images:
            return embed.embed_images(enc, a.images, a.out, batch_size=a.batch_size,
                                      save_every=a.save_every)
        return embed.embed_texts(enc, a.texts, a.out, batch_size=a.batch_size,
                                 save_every=a.save_every)

    _setup_logging()
    print(embed.format_summary(_guard(p.prog, run), a.out))


def search_main(argv=None) -> None:
    """Search an index from `mmfm embed` with a text or an image query (cosine top-k)."""
    p = _Parser(prog="mmfm search", description=_summary(search_main) + "\n\nQueries are "
                "embedded with the model recorded in the index (--model must name the same one).",
                epilog=EMBED_EPILOG)
    p.add_argument("--index", required=True, help="file written by mmfm embed")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--text", nargs="+", metavar="QUERY", help="one or more text queries")
    q.add_argument("--image", nargs="+", metavar="PATH", help="one or more query image files")
    p.add_argument("--model", default=None, help="the index's model (default: the one it records)")
    p.add_argument("--pretrained", default=None, help="pretrained tag for --model")
    p.add_argument("-k", type=int, default=5, help="hits per query")
    p.add_argument("--grid", default=None, metavar="OUT.png",
                   help="draw the hit images (image indexes): a row of k tiles per query")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    if a.k < 1:
        p.error("-k must be >= 1")
    from mmfm import search

    def run():
        for path in a.image or ():
            if not os.path.isfile(path):
                raise FileNotFoundError(f"--image {path}: no such file")
        index = search.load_index(a.index)
        if a.grid and index.kind != "image":
            raise ValueError(f"--grid draws image hits; {a.index} holds text embeddings")
        enc = search.encoder_for(index, a.model, a.pretrained)
        queries = search.query_embeddings(enc, texts=a.text or (), images=a.image or ())
        hits = search.top_k(index.embeddings, queries, a.k)
        labels = [repr(t) for t in a.text or ()] + [f"image {p}" for p in a.image or ()]
        print(search.format_hits(index, labels, hits))
        if a.grid:
            w, h = search.draw_grid(index, hits, a.grid)
            print(f"wrote {a.grid} ({w}x{h})")

    _setup_logging()
    _guard(p.prog, run)


COMMANDS = {"train": train_main, "eval": eval_main, "export": export_main, "convert": convert_main,
            "data": data_main, "tokenizer": tokenizer_main, "recipes": recipes_main, "zoo": zoo_main,
            "quantize": quantize_main, "embed": embed_main, "search": search_main}


def overview() -> str:
    """`mmfm --help`: every command with its one-line description."""
    width = max(map(len, COMMANDS)) + 2
    rows = [f"  {name:<{width}}{_summary(fn)}" for name, fn in COMMANDS.items()]
    rows.append(f"  {'help':<{width}}This list, or a command's help: mmfm help COMMAND")
    return "\n".join([
        "usage: mmfm COMMAND [flags]        (mmfm COMMAND --help shows its flags)", "",
        "commands:", *rows, "",
        "Flags use underscores (--data_dir); the dashed spelling (--data-dir) works too.",
        f"environment: {DEBUG_ENV}=1 (tracebacks for errors), MMFM_CACHE_DIR, MMFM_OFFLINE=1"])


def main() -> None:
    """`mmfm <command> ...`: dispatch to the command's own flag parser."""
    import difflib

    args = sys.argv[1:]
    if not args:
        print(overview(), file=sys.stderr)
        sys.exit(USAGE_EXIT)
    cmd = args[0]
    if cmd == "help" and len(args) > 1:
        cmd, args = args[1], [args[1], "--help"]
    elif cmd in ("-h", "--help", "help"):
        print(overview())
        return
    if cmd not in COMMANDS:
        close = difflib.get_close_matches(cmd, COMMANDS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        print(f"mmfm: error: unknown command {cmd!r}{hint}; commands: {', '.join(COMMANDS)} "
              f"(mmfm --help describes them)", file=sys.stderr)
        sys.exit(USAGE_EXIT)
    sys.argv = [f"mmfm {cmd}", *args[1:]]
    COMMANDS[cmd]()
