"""`mmfm embed` / `mmfm search` on the tiny run's export and a folder of captioned-shapes PNGs.

The reference is the public API: `mmfm.create_model_and_transforms` + `mmfm.encode_image` on the
same files; top-k is checked against a numpy argsort of the cosine matrix.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import mmfm
from mmfm import embed, search
from mmfm.data.synthetic import generate_example

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(os.path.dirname(sys.executable), "mmfm")


def _mmfm(*args, cwd):
    """The installed console script (with this checkout first on the path)."""
    cmd = [SCRIPT] if os.path.isfile(SCRIPT) else [sys.executable, "-c",
                                                   "from mmfm.cli import main; main()"]
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    return subprocess.run(cmd + list(args), cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def _write_pngs(folder, split: str, indices, size: int = 64) -> list[str]:
    """Captioned-shapes PNGs in two subfolders; returns their paths relative to `folder`."""
    rel = []
    for i in indices:
        r = f"{'ab'[i % 2]}/{split}_{i:03d}.png"
        os.makedirs(os.path.join(folder, r[0]), exist_ok=True)
        with open(os.path.join(folder, r), "wb") as f:
            f.write(generate_example(0, split, i, size)["image"])
        rel.append(r)
    return rel


@pytest.fixture(scope="module")
def export_dir(tiny_run, tmp_path_factory):
    from mmfm.zoo.export import export_from_workdir
    return export_from_workdir(tiny_run[0], str(tmp_path_factory.mktemp("embed") / "export"))


def _api_embeddings(export: str, paths) -> np.ndarray:
    model, params, _, pre = mmfm.create_model_and_transforms(export)
    x = np.stack([pre(Image.open(p)) for p in paths])
    return np.asarray(mmfm.encode_image(model, params, x))


@pytest.mark.slow  # ~60 s: seven fresh processes, each importing JAX and loading the model
def test_embed_and_search_command_line(export_dir, tmp_path):
    """Console script end to end: embed (one corrupt file), rerun, add files, search, grid."""
    work = tmp_path / "work"
    folder = work / "photos"
    rel = _write_pngs(str(folder), "test", range(36))
    (folder / "b" / "broken.png").write_bytes(b"not a png")
    p = _mmfm("embed", "--model", export_dir, "--images", "photos", "--out", "idx.safetensors",
              "--batch_size", "8", cwd=work)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "items/s" in p.stdout and "eta" in p.stdout
    assert "embedded 36 of 37" in p.stdout and "1 unreadable skipped" in p.stdout, p.stdout
    index = embed.load_index(str(work / "idx.safetensors"))
    assert index.kind == "image" and index.model == os.path.abspath(export_dir)
    assert index.ids == sorted(rel) and index.embeddings.shape[0] == 36
    ref = _api_embeddings(export_dir, [folder / r for r in index.ids])
    np.testing.assert_allclose(index.embeddings, ref, atol=1e-5)

    mtime = os.stat(work / "idx.safetensors").st_mtime_ns
    p = _mmfm("embed", "--model", export_dir, "--images", "photos", "--out", "idx.safetensors",
              cwd=work)  # nothing new: the file is not rewritten
    assert p.returncode == 0 and "embedded 0 of 37" in p.stdout, p.stdout + p.stderr[-2000:]
    assert "items/s" not in p.stdout and os.stat(work / "idx.safetensors").st_mtime_ns == mtime

    new = _write_pngs(str(folder), "train", range(4))
    p = _mmfm("embed", "--model", export_dir, "--images", "photos", "--out", "idx.safetensors",
              cwd=work)
    assert p.returncode == 0 and "embedded 4 of 41 (36 already there" in p.stdout, p.stdout
    assert "embed 4/4 images" in p.stdout
    index = embed.load_index(str(work / "idx.safetensors"))
    assert index.ids[36:] == sorted(new) and index.embeddings.shape[0] == 40

    query = str(folder / index.ids[5])
    p = _mmfm("search", "--index", "idx.safetensors", "--image", query, "-k", "3", "--grid",
              "hits.png", cwd=work)
    assert p.returncode == 0, p.stderr[-3000:]
    first_hit = p.stdout.splitlines()[1].split()
    assert first_hit[0] == "1" and first_hit[2] == index.ids[5] and float(first_hit[1]) > 0.9999
    with Image.open(work / "hits.png") as im:
        assert im.size == (3 * search.TILE, search.TILE + search.LABEL_H)

    p = _mmfm("search", "--index", "idx.safetensors", "--text", "a small red circle", "-k", "2",
              cwd=work)
    assert p.returncode == 0 and len(p.stdout.splitlines()) == 3, p.stdout + p.stderr[-2000:]

    for args in (("embed", "--model", export_dir, "--images", "nowhere", "--out", "x.safetensors"),
                 ("search", "--index", "nowhere.safetensors", "--text", "x")):
        p = _mmfm(*args, cwd=work)
        assert p.returncode == 2 and "nowhere" in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


def test_run_and_export_give_the_same_index_and_self_retrieval(tiny_run, export_dir, tmp_path):
    """A run dir embeds like its export; every image finds itself first (numpy top-k reference)."""
    folder = tmp_path / "imgs"
    rel = _write_pngs(str(folder), "test", range(40))
    enc_run = embed.load_encoder(tiny_run[0], batch_size=16)
    s = embed.embed_images(enc_run, [str(folder)], str(tmp_path / "run.safetensors"), batch_size=16)
    assert s["embedded"] == 40 and s["count"] == 40
    run_index = embed.load_index(str(tmp_path / "run.safetensors"))
    assert run_index.model.endswith(os.path.join("checkpoints", "4"))  # a run is named by its step
    enc = embed.load_encoder(export_dir, batch_size=16)
    embed.embed_images(enc, [str(folder)], str(tmp_path / "export.safetensors"), batch_size=16)
    index = embed.load_index(str(tmp_path / "export.safetensors"))
    np.testing.assert_allclose(run_index.embeddings, index.embeddings, atol=1e-5)

    queries = search.query_embeddings(enc, images=[str(folder / r) for r in rel])
    hits = search.top_k(index.embeddings, queries, k=3)
    assert [h[0][1] for h in hits] == [index.ids.index(r) for r in rel]
    cos = queries @ index.embeddings.T / np.outer(np.linalg.norm(queries, axis=1),
                                                  np.linalg.norm(index.embeddings, axis=1))
    for row, h in zip(cos, hits):
        assert [j for _, j in h] == list(np.argsort(-row, kind="stable")[:3])
        np.testing.assert_allclose([sc for sc, _ in h], np.sort(row)[::-1][:3], atol=1e-6)

    with pytest.raises(ValueError, match="holds embeddings of"):  # another model, same file
        embed.embed_images(enc_run, [str(folder)], str(tmp_path / "export.safetensors"))
    with pytest.raises(ValueError, match="embedded with"):
        search.encoder_for(index, tiny_run[0])


class _Killed(Exception):
    pass


def test_a_killed_run_resumes_and_changed_files_are_embedded_again(export_dir, tmp_path):
    folder = tmp_path / "imgs"
    _write_pngs(str(folder), "test", range(20))
    out = str(tmp_path / "idx.safetensors")
    enc = embed.load_encoder(export_dir, batch_size=4)
    real, calls = enc.encode_images, []

    def dies_on_fourth_batch(images):
        calls.append(len(images))
        if len(calls) == 4:
            raise _Killed
        return real(images)

    enc.encode_images = dies_on_fourth_batch
    with pytest.raises(_Killed):
        embed.embed_images(enc, [str(folder)], out, batch_size=4, save_every=2)
    assert embed.load_index(out).embeddings.shape[0] == 8  # saved after batch 2, not after 3
    enc.encode_images = real
    s = embed.embed_images(enc, [str(folder)], out, batch_size=4, save_every=2)
    assert (s["already"], s["embedded"], s["count"]) == (8, 12, 20)

    target = folder / "a" / "test_000.png"  # replaced by another picture: embedded again
    target.write_bytes(generate_example(0, "train", 7, 64)["image"])
    os.utime(target, ns=(1, 1))
    s = embed.embed_images(enc, [str(folder)], out, batch_size=4)
    assert (s["changed"], s["embedded"], s["count"]) == (1, 1, 20)
    index = embed.load_index(out)
    row = index.ids.index("a/test_000.png")
    np.testing.assert_allclose(index.embeddings[row], _api_embeddings(export_dir, [target])[0],
                               atol=1e-5)


def test_text_index(export_dir, tmp_path):
    lines = [generate_example(0, "test", i, 64)["caption"] for i in range(12)]
    path = tmp_path / "captions.txt"
    path.write_text("\n".join(lines[:6]) + "\n\n" + "\n".join(lines[6:]) + "\n")
    out = str(tmp_path / "t.safetensors")
    enc = embed.load_encoder(export_dir)
    s = embed.embed_texts(enc, str(path), out)
    index = embed.load_index(out)
    assert index.kind == "text" and s["count"] == 12 and index.ids[6] == f"8: {lines[6]}"
    tok = mmfm.get_tokenizer(export_dir)
    model, params = mmfm.create_model(export_dir)
    np.testing.assert_allclose(index.embeddings, np.asarray(mmfm.encode_text(
        model, params, lines, tokenizer=tok)), atol=1e-5)
    hits = search.top_k(index.embeddings, search.query_embeddings(enc, texts=lines), k=1)
    distinct = [i for i, t in enumerate(lines) if lines.count(t) == 1]
    assert all(hits[i][0][1] == i for i in distinct)
    assert embed.embed_texts(enc, str(path), out)["embedded"] == 0
    with pytest.raises(ValueError, match="text embeddings"):
        search.draw_grid(index, hits, str(tmp_path / "g.png"))
    with pytest.raises(ValueError, match="holds text embeddings"):
        embed.embed_images(enc, [str(tmp_path)], out)
