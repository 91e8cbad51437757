#!/usr/bin/env bash
# By-hand check (not part of the suite): build the wheel, install it into a clean venv with no
# checkout on the path, list the pretrained tags and load an mmfm export by path.
#   bash tests/zoo/check_wheel.sh EXPORT_DIR     (an export from `mmfm export --workdir ... --out ...`)
set -euo pipefail
EXPORT=${1:?usage: check_wheel.sh EXPORT_DIR}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d)
git -C "$REPO" archive HEAD | tar -x -C "$WORK/"
"$REPO/.venv/bin/python" -m build --wheel -o "$WORK/dist" "$WORK" >/dev/null
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q -c "$REPO/requirements/lock.txt" "$WORK"/dist/mmfm-*.whl
cd "$WORK/venv" && "$WORK/venv/bin/python" - "$EXPORT" <<'PY'
import sys, numpy as np, mmfm, mmfm.api as api
assert "site-packages" in mmfm.__file__, mmfm.__file__
print(len(api.list_pretrained()), "pretrained tags, e.g.", api.list_pretrained()[0])
m, p, _, ev = api.create_model_and_transforms(sys.argv[1])
tok = api.get_tokenizer(sys.argv[1])
print("export text emb", api.encode_text(m, p, ["a red circle"], tokenizer=tok).shape)
print("CLIP BPE ids", api.get_tokenizer("ViT-B-32")("a photo of a cat", 77)[0, :7])
PY
rm -rf "$WORK"
