"""README's "Bring your own data" runs as written: 60 user images (two of them corrupt files) go
through `mmfm data prepare` -> `mmfm train` -> `mmfm eval` (retrieval on `jsonl/mine`) ->
`mmfm export` -> `create_model_and_transforms` -> embeddings.

Every command and file comes from that README section (so the test breaks when the README does);
only the corpus is made here. Each runs from a temporary directory outside the checkout through
the console scripts of this environment, as a user's shell would run it.
"""
import glob
import json
import os
import random
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image, ImageDraw

import doc_commands as dc
from subprocess_env import failure_report

SECTION = "Bring your own data"
NUM_IMAGES, CORRUPT = 60, (0, 1)  # the README's sample output names images/000.jpg and 001.png
COLORS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 70, 220),
          "yellow": (235, 210, 40), "purple": (140, 50, 180), "orange": (245, 140, 20)}
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS = {"white": (250, 250, 250), "black": (10, 10, 10), "grey": (128, 128, 128)}


def make_corpus(root: str) -> list[dict]:
    """corpus/captions.jsonl + corpus/images/NNN.{png,jpg}: one shape of a colour, size and place
    on a background, with a caption that says so; the CORRUPT indices are not images at all."""
    rng = random.Random(0)
    os.makedirs(os.path.join(root, "images"))
    rows = []
    for i in range(NUM_IMAGES):
        color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
        bg, size = rng.choice(list(BACKGROUNDS)), rng.choice(("small", "large"))
        side = rng.choice((48, 64, 96))
        r = side // (6 if size == "small" else 3)
        where = rng.choice(("left", "right", "middle"))
        cx = {"left": side // 3, "right": 2 * side // 3, "middle": side // 2}[where]
        cy = side // 2 + rng.randint(-side // 8, side // 8)
        rel = f"images/{i:03d}.{'jpg' if i % 2 == 0 else 'png'}"
        path = os.path.join(root, rel)
        if i in CORRUPT:
            with open(path, "wb") as f:
                f.write(b"\xff\xd8\xff\xe0 truncated, not an image" if i % 2 == 0 else b"PNG?" * 16)
        else:
            im = Image.new("RGB", (side, side), BACKGROUNDS[bg])
            d, box = ImageDraw.Draw(im), (cx - r, cy - r, cx + r, cy + r)
            if shape == "circle":
                d.ellipse(box, fill=COLORS[color])
            elif shape == "square":
                d.rectangle(box, fill=COLORS[color])
            else:
                d.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=COLORS[color])
            im.save(path)
        rows.append({"image": rel,
                     "caption": f"a {size} {color} {shape} on the {where} of a {bg} background"})
    with open(os.path.join(root, "captions.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return rows


def readme_steps() -> list[tuple[str, str]]:
    """("shell", command) / ("file", "NAME\\nbody") / ("python", code) / ("output", text) in the
    order of the README section."""
    steps = []
    for lang, body in dc.code_blocks(dc.section(os.path.join(dc.ROOT, "README.md"), SECTION)):
        if lang in dc.SHELL_LANGS:
            steps += [("shell", c) for c in dc.block_commands(body)]
        elif lang == "python":
            first = body.splitlines()[0].strip()
            m = re.fullmatch(r"#\s*([\w.-]+\.py)", first)
            steps.append(("file", f"{m.group(1)}\n{body}") if m else ("python", body))
        elif lang == "text":
            steps.append(("output", body))
    return steps


def test_section_has_every_step():
    shell = " ; ".join(c for kind, c in readme_steps() if kind == "shell")
    for needle in ("mmfm data prepare --format jsonl", "mmfm train", "--config.data.name=jsonl",
                   "mmfm eval --checkpoint", "mmfm export"):
        assert needle in shell, f"README {SECTION!r}: no `{needle}` command"
    kinds = [kind for kind, _ in readme_steps()]
    assert "file" in kinds and "python" in kinds and "output" in kinds, kinds


def _run(argv_or_cmd, cwd, env, *, shell=False, timeout=600):
    t0 = time.perf_counter()
    res = subprocess.run(argv_or_cmd, cwd=cwd, env=env, shell=shell, capture_output=True,
                         text=True, timeout=timeout)
    return res, time.perf_counter() - t0


@pytest.mark.slow
def test_bring_your_own_data_section_runs_as_written(tmp_path):
    work = str(tmp_path)
    assert not os.path.realpath(work).startswith(os.path.realpath(dc.ROOT) + os.sep)
    make_corpus(os.path.join(work, "corpus"))
    bindir = os.path.dirname(sys.executable)  # the environment's console scripts (`mmfm`)
    assert os.path.isfile(os.path.join(bindir, "mmfm")), bindir
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTHONPATH")}
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")  # a user's plain shell: one device

    outputs, timings, expected_output = {}, {}, ""
    for kind, text in readme_steps():
        if kind == "file":
            name, _, body = text.partition("\n")
            with open(os.path.join(work, name), "w") as f:
                f.write(body)
            continue
        if kind == "output":
            expected_output += text
            continue
        if kind == "shell":
            res, secs = _run(text, work, env, shell=True)
        else:
            res, secs = _run([os.path.join(bindir, "python"), "-c", text], work, env)
        key = text.split(" --")[0] if kind == "shell" else "python"
        timings[key] = round(secs, 1)
        assert res.returncode == 0, f"`{text[:200]}` failed\n{failure_report(res)}"
        outputs[key] = res.stdout
    print("seconds per step:", timings)
    prepare_out = outputs["mmfm data prepare"]

    # prepare: 58 written, the 2 corrupt files skipped and named; the README's sample output
    # (all but the machine-specific path line) is what it prints for this corpus.
    with open(os.path.join(work, "prepared/jsonl/mine/1.0.0/prepare_summary.json")) as f:
        summary = json.load(f)
    assert summary["total"]["written"] == NUM_IMAGES - len(CORRUPT), summary["total"]
    assert summary["total"]["skipped"] == {"undecodable_image": len(CORRUPT)}, summary["total"]
    assert re.search(r"written 58 \(train \d+, test \d+\), skipped 2", prepare_out), prepare_out
    assert expected_output, f"README {SECTION!r}: no ```text block of the prepare output"
    for line in expected_output.splitlines():
        if line.strip() and not line.startswith("every skipped record:"):
            assert line in prepare_out.splitlines(), \
                f"README shows {line!r}; prepare printed:\n{prepare_out}"
    with open(os.path.join(work, "prepared/jsonl/mine/1.0.0/skipped.jsonl")) as f:
        skipped = [json.loads(x) for x in f]
    assert len(skipped) == len(CORRUPT), skipped

    # train: a checkpoint at the last step
    ckpts = [d for d in glob.glob(os.path.join(work, "runs/mine/checkpoints/*")) if
             os.path.basename(d).isdigit()]
    assert ckpts, os.listdir(os.path.join(work, "runs/mine"))

    # eval: retrieval recalls on jsonl/mine in the results file
    results = json.load(open(os.path.join(work, "runs/mine_eval/eval_results.json")))
    recalls = {k: v for k, v in results["metrics"].items()
               if re.fullmatch(r"mine/(i2t|t2i)/R@\d+", k)}
    assert {"mine/i2t/R@1", "mine/t2i/R@1"} <= set(recalls), results["metrics"]
    assert all(0.0 <= v <= 1.0 for v in recalls.values()), recalls

    # export: weights, config and tokenizer
    export = os.path.join(work, "runs/mine_export")
    files = os.listdir(export)
    assert {"config.json", "params.safetensors"} <= set(files), files
    assert any(f.endswith(".model") for f in files), files

    # load + embed: every readable image, unit-norm rows of the export's embedding width
    emb = np.load(os.path.join(work, "runs/mine_embeddings.npz"))
    embed_dim = json.load(open(os.path.join(export, "config.json")))["model"]["embed_dim"]
    image, text_emb = emb["image"], emb["text"]
    assert image.shape == (NUM_IMAGES - len(CORRUPT), embed_dim), image.shape
    assert len(emb["paths"]) == len(image), emb["paths"]
    assert text_emb.shape == (2, embed_dim), text_emb.shape
    np.testing.assert_allclose(np.linalg.norm(image, axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(text_emb, axis=1), 1.0, atol=1e-4)
    assert "a red circle" in outputs["python"], outputs["python"]

