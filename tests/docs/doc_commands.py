"""Extract shell commands from the docs and config docstrings, and check them against the code.

A command is checked by what it runs:
  python -m mmfm.train / mmfm train   config file exists, its `:arg` is accepted, every
                                      `--config.a.b=v` names a key of the locked config, every other
                                      flag is one the trainer defines, data.name is registered
  mmfm <command> ...                  the command exists; flags appear in its `--help`
  mmfm recipes copy NAME DEST         NAME is a recipe; a later `--config DEST` is checked as it
  python <script>.py ...              the script exists; flags appear in its `--help`
  make <target>                       the Makefile has the target
  any repo path (experiments/..., benchmarks/..., notebooks/..., mmfm/...) exists
Commands inside quoted arguments (`gcloud ... --command="..."`) are checked the same way.
"""
from __future__ import annotations

import ast
import functools
import glob
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = ("README.md", "TPU_SETUP.md", "experiments/README.md", "benchmarks/README.md")
SHELL_LANGS = ("", "bash", "sh", "shell", "console")
PATH_PREFIXES = ("experiments/", "benchmarks/", "notebooks/", "mmfm/", "tests/")
_STARTS = ("python", "mmfm ", "make ", "experiments/", "bash ", "sbatch ", "srun ", "gcloud ",
           "XLA_FLAGS=", "MMFM_", "$PY ", ".venv/")


@dataclass(frozen=True)
class Command:
    where: str  # file:line
    text: str
    section: str = ""  # the heading of the markdown section it is in


def _join_continuations(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    out, buf, start = [], "", None
    for no, line in lines:
        s = line.rstrip()
        if start is None:
            start = no
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        out.append((start, buf + s))
        buf, start = "", None
    if buf:
        out.append((start, buf))
    return out


def markdown_commands(path: str) -> list[Command]:
    """Lines of shell code blocks (``` with no language or bash/sh/console), continuations joined,
    in document order, each with the heading of its section."""
    rel = os.path.relpath(path, ROOT)
    lines, block, lang, heading, headings = [], None, None, "", {}
    with open(path) as f:
        for no, line in enumerate(f, 1):
            fence = re.match(r"^\s*```(\w*)", line)
            if fence:
                if block is None:
                    block, lang = [], fence.group(1)
                else:
                    if lang in SHELL_LANGS:
                        lines.extend(block)
                    block = None
                continue
            if block is not None:
                block.append((no, re.sub(r"^\s*\$ ", "", line)))
                headings[no] = heading
            elif m := re.match(r"^#+ (.*?)\s*$", line):
                heading = m.group(1)
    cmds = []
    for no, text in _join_continuations(lines):
        text = text.strip()
        if text and not text.startswith("#"):
            cmds.append(Command(f"{rel}:{no}", text, headings[no]))
    return cmds


def section(path: str, heading: str) -> str:
    """The text of the markdown section titled `heading` (up to the next heading of its level)."""
    with open(path) as f:
        lines = f.read().splitlines(keepends=True)
    level, out, fenced = None, [], False
    for line in lines:
        if line.lstrip().startswith("```"):
            fenced = not fenced
        m = None if fenced else re.match(r"^(#+) (.*?)\s*$", line)
        if level is None:
            if m and m.group(2) == heading:
                level = len(m.group(1))
            continue
        if m and len(m.group(1)) <= level:  # `# comment` lines inside code blocks are not headings
            break
        out.append(line)
    if level is None:
        raise AssertionError(f"{os.path.relpath(path, ROOT)} has no section {heading!r}")
    return "".join(out)


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block of markdown `text`, in order."""
    return [(lang, body) for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)]


def block_commands(body: str) -> list[str]:
    """The commands of one shell code block (continuations joined, comments and `$ ` dropped)."""
    lines = [(i, re.sub(r"^\s*\$ ", "", line)) for i, line in enumerate(body.splitlines())]
    cmds = [t.strip() for _, t in _join_continuations(lines)]
    return [c for c in cmds if c and not c.startswith("#")]


def docstring_commands(path: str) -> list[Command]:
    """Command lines (python/mmfm/make ...) in a module docstring, continuations joined."""
    rel = os.path.relpath(path, ROOT)
    with open(path) as f:
        doc = ast.get_docstring(ast.parse(f.read())) or ""
    lines = [(i + 2, line) for i, line in enumerate(doc.splitlines())]
    out = []
    for no, text in _join_continuations(lines):
        text = text.strip()
        if text.startswith(("python ", "mmfm ", "make ")):
            out.append(Command(f"{rel}:{no}", text))
    return out


def config_files() -> list[str]:
    files = sorted(glob.glob(os.path.join(ROOT, "experiments", "configs", "*.py")))
    return [f for f in files if os.path.basename(f) not in ("__init__.py", "common.py")]


def all_commands() -> list[Command]:
    cmds = []
    for doc in DOCS:
        cmds += markdown_commands(os.path.join(ROOT, doc))
    for path in config_files():
        cmds += docstring_commands(path)
    return cmds


@functools.lru_cache(maxsize=None)
def copied_recipes() -> dict[str, str]:
    """{DEST: recipe file} for every `mmfm recipes copy NAME [DEST]` in the docs, so a later
    `mmfm train --config DEST` is checked against the recipe it copies."""
    from mmfm import recipes

    out = {}
    for cmd in all_commands():
        for seg in _segments(cmd.text):
            args = [a for a in seg[1:] if not a.startswith("-")]
            if os.path.basename(seg[0]) == "mmfm" and args[:2] == ["recipes", "copy"] and args[2:]:
                try:
                    src = recipes.recipe_path(args[2])
                except ValueError:
                    continue  # reported by check_segment
                out[args[3] if args[3:] else os.path.basename(src)] = src
    return out


# ----------------------------------------------------------------------------- checking

def _segments(text: str) -> list[list[str]]:
    """Simple commands of a shell line (split on && || ; | & and loop keywords), env vars dropped."""
    lex = shlex.shlex(text, posix=True, punctuation_chars=";&|()")
    lex.whitespace_split = True
    lex.commenters = "#"
    segs, cur = [], []
    for tok in lex:
        if tok and set(tok) <= set(";&|()"):
            segs.append(cur)
            cur = []
        else:
            cur.append(tok)
    segs.append(cur)
    out = []
    for seg in segs:
        while seg and (re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", seg[0])
                       or seg[0] in ("do", "then", "else", "time", "nohup", "exec", "env")):
            seg = seg[1:]
        if seg:
            out.append(seg)
    return out


def _help_flags(argv: tuple[str, ...]) -> set[str]:
    """Flag names that `python *argv` (a --help call) prints."""
    return _help_flags_cached(tuple(argv))


@functools.lru_cache(maxsize=None)
def _help_flags_cached(argv: tuple[str, ...]) -> set[str]:
    res = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    text = res.stdout + res.stderr
    if "Try --helpfull" in text and argv[-1] == "--help":  # absl: key flags only
        return _help_flags_cached(argv[:-1] + ("--helpfull",))
    if res.returncode not in (0, 1, 2) or "--" not in text:
        raise AssertionError(f"`python {' '.join(argv)}` failed (rc {res.returncode}): {text[-800:]}")
    return set(re.findall(r"--\[?(?:no)?\]?([A-Za-z0-9][\w-]*)", text))


def _flags_of(tokens: list[str]) -> list[str]:
    return [t[2:].split("=", 1)[0] for t in tokens if t.startswith("--") and len(t) > 2]


def _config_value(tokens: list[str]) -> str | None:
    for i, t in enumerate(tokens):
        if t == "--config" and i + 1 < len(tokens):
            return tokens[i + 1]
        if t.startswith("--config="):
            return t.split("=", 1)[1]
    return None


@functools.lru_cache(maxsize=None)
def _load(spec: str):
    from mmfm.notebook_utils import load_config
    return load_config(spec)


def check_train(tokens: list[str], module: str = "mmfm.train",
                help_argv: tuple[str, ...] | None = None) -> list[str]:
    """A `--config FILE[:arg]` command of `module` (the trainer), or of the command whose flags
    `help_argv --helpfull` lists."""
    errors = []
    spec = _config_value(tokens)
    if spec is None:
        return ["train command without --config"]
    path, colon, arg = spec.partition(":")
    if not os.path.isfile(os.path.join(ROOT, path)):
        if path not in copied_recipes():
            return [f"config file {path} does not exist (nor is it the DEST of a documented "
                    f"`mmfm recipes copy NAME DEST`)"]
        spec = copied_recipes()[path] + colon + arg
    try:
        config = _load(spec)
    except Exception as e:  # noqa: BLE001 - reported as a doc error
        return [f"--config {spec}: {type(e).__name__}: {e}"]
    known = _help_flags((*(help_argv or ("-m", module)), "--helpfull"))
    for tok in tokens:
        if not tok.startswith("--") or tok == "--":
            continue
        name, _, value = tok[2:].partition("=")
        if name.startswith("config."):
            node = config
            for part in name.split(".")[1:]:
                if not hasattr(node, "keys") or part not in node.keys():
                    errors.append(f"--{name}: config has no key {part!r}")
                    break
                node = node[part]
            if name == "config.data.name" and value:
                from mmfm.data.build import DATASETS
                if value not in DATASETS:
                    errors.append(f"--{name}={value}: not a registered dataset {sorted(DATASETS)}")
        elif name not in known:
            errors.append(f"--{name}: not a flag of {module}")
    return errors


def check_segment(tokens: list[str]) -> list[str]:
    errors = []
    for tok in tokens:  # embedded commands: gcloud --command="...", bash -c "..."
        value = tok.split("=", 1)[1] if tok.startswith("--") and "=" in tok else tok
        if " " in value and ("mmfm" in value or "python" in value):
            for seg in _segments(value):
                errors += check_segment(seg)
    for tok in tokens:
        bare = tok.split("=", 1)[-1].partition(":")[0]
        if bare.startswith(PATH_PREFIXES) and not any(c in bare for c in "*{$<"):
            if not os.path.exists(os.path.join(ROOT, bare)):
                errors.append(f"path {bare} does not exist")
    head = os.path.basename(tokens[0])
    args = tokens[1:]
    if head.startswith("python"):
        if args[:1] == ["-m"] and args[1].startswith("mmfm.") and _config_value(args) is not None:
            errors += check_train(args[2:], args[1])
        elif args[:1] == ["-m"]:
            if not args[1].startswith(("mmfm", "pytest", "pip", "venv", "jupyter", "build")):
                errors.append(f"python -m {args[1]}: unexpected module")
        elif args and args[0].endswith(".py") and os.path.isfile(os.path.join(ROOT, args[0])):
            known = _help_flags((args[0], "--help"))
            errors += [f"{args[0]}: unknown flag --{f}" for f in _flags_of(args[1:]) if f not in known]
    elif head == "mmfm":
        from mmfm.cli import COMMANDS
        if not args or args[0] not in COMMANDS:
            errors.append(f"mmfm {args[:1]}: not a command; valid {sorted(COMMANDS)}")
        elif args[0] == "train":
            errors += check_train(args[1:])
        else:
            names = [a for a in args if not a.startswith("-")]
            if names[:2] == ["recipes", "copy"] and names[2:]:
                from mmfm import recipes
                try:
                    recipes.recipe_path(names[2])
                except ValueError as e:
                    errors.append(f"mmfm recipes copy: {e}")
            sub = [a for a in args if not a.startswith("-")][:2]
            sub = sub[:1] if args[0] in ("eval", "export", "convert") else sub
            known = _help_flags(("-c", "from mmfm.cli import main; main()", *sub, "--help"))
            errors += [f"mmfm {' '.join(sub)}: unknown flag --{f}" for f in _flags_of(args)
                       if f not in known]
    elif head == "launch.sh" and "--" in args:  # experiments/tpu/launch.sh ... -- <train flags>
        errors += check_train(args[args.index("--") + 1:])
    elif head == "sbatch" and args and args[0].endswith("slurm_train.sbatch"):  # CONFIG WORKDIR flags
        errors += check_train(["--config", *args[1:2], "--workdir", *args[2:3], *args[3:]])
    elif head == "make":
        with open(os.path.join(ROOT, "Makefile")) as f:
            targets = set(re.findall(r"^([\w-]+):", f.read(), re.M))
        errors += [f"make {t}: no such target" for t in args
                   if not t.startswith("-") and "=" not in t and t not in targets]
    return errors


def check_command(cmd: Command) -> list[str]:
    errors = []
    try:
        segments = _segments(cmd.text)
    except ValueError as e:
        return [f"{cmd.where}: cannot parse: {e}"]
    for seg in segments:
        errors += [f"{cmd.where}: {e}  [{cmd.text[:120]}]" for e in check_segment(seg)]
    return errors


def env_vars_in_docs() -> dict[str, str]:
    """MMFM_* environment variables mentioned in the docs -> where."""
    found = {}
    for doc in DOCS:
        with open(os.path.join(ROOT, doc)) as f:
            for no, line in enumerate(f, 1):
                for name in re.findall(r"\bMMFM_[A-Z_]+\b", line):
                    found.setdefault(name, f"{doc}:{no}")
    return found
