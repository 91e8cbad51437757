"""Writes small webdataset and jsonl corpora with every bad-input kind plus valid records.

`EXPECTED_*` hold what preparing them must report; `write_*` return the source spec.
"""
import io
import json
import os
import struct
import tarfile
import zlib

import numpy as np
from PIL import Image

NUM_VALID = 6


def _jpeg(seed, size=(24, 20), mode="RGB"):
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.convert(mode).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _png(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(side=20000):
    """A real, decodable side x side 1-bit PNG (~50 KB): the decompression-bomb case."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(
            ">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def convertible_images():
    """name -> (bytes, expected RGB array, converted mode)."""
    gray = np.arange(12 * 10, dtype=np.uint8).reshape(10, 12)
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :4, 3] = 255  # left half opaque red, right half transparent -> white
    expected_rgba = np.full((8, 8, 3), 255, np.uint8)
    expected_rgba[:, :4] = (200, 0, 0)
    pal = Image.new("P", (6, 6), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pal.paste(0, (0, 0, 3, 6))
    pal.info["transparency"] = 0  # index 0 (left half) transparent
    expected_pal = np.full((6, 6, 3), 255, np.uint8)
    expected_pal[:, 3:] = (10, 20, 30)
    g16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    cmyk = Image.new("CMYK", (10, 10), (0, 255, 255, 0))  # pure red in CMYK
    buf = io.BytesIO()
    cmyk.save(buf, format="JPEG", quality=95)
    return {
        "gray": (_png(Image.fromarray(gray)), np.repeat(gray[..., None], 3, -1), "L"),
        "rgba": (_png(Image.fromarray(rgba)), expected_rgba, "RGBA"),
        "palette": (_png(pal), expected_pal, "P"),
        "png16": (_png(Image.fromarray(g16)),
                  np.repeat(np.rint(g16 / 257).astype(np.uint8)[..., None], 3, -1), "I;16"),
        "cmyk": (buf.getvalue(), None, "CMYK"),  # JPEG re-encode: compare approximately
    }


def bad_records():
    """(key, image bytes or None, caption bytes or None, reason)."""
    good = _jpeg(100)
    half = _jpeg(101, size=(64, 64))
    corrupt = bytearray(_jpeg(102))
    corrupt[2:40] = b"\x00" * 38
    return [
        ("corrupt", bytes(corrupt), b"a corrupt jpeg", "undecodable_image"),
        ("truncated", half[:len(half) // 2], b"half a jpeg", "truncated_image"),
        ("zero", b"", b"zero bytes", "empty_image"),
        ("bomb", bomb_png(), b"a huge image", "image_too_large"),
        ("emptycap", good, b"   \n ", "empty_caption"),
        ("longcap", good, b"x" * 100_000, "caption_too_long"),
        ("nonutf8", good, b"caf\xe9 \xff\xfe", "non_utf8_caption"),
    ]


def valid_records():
    return [(f"ok{i}", _jpeg(i), f"valid photo number {i}".encode()) for i in range(NUM_VALID)]


EXPECTED_SKIPS_COMMON = {"undecodable_image": 1, "truncated_image": 1, "empty_image": 1,
                         "image_too_large": 1, "empty_caption": 1, "caption_too_long": 1,
                         "non_utf8_caption": 1, "unsafe_path": 2}
EXPECTED_WDS_SKIPS = dict(EXPECTED_SKIPS_COMMON, truncated_shard=1, missing_caption=1)
EXPECTED_JSONL_SKIPS = dict(EXPECTED_SKIPS_COMMON, bad_json=1, missing_file=1)
EXPECTED_CONVERTED = {"converted/L": 1, "converted/RGBA": 1, "converted/P": 1,
                      "converted/I;16": 1, "converted/CMYK": 1}


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_wds(root, outside_abs):
    """Shards under root/shards; returns the brace pattern. `outside_abs` must never appear."""
    os.makedirs(os.path.join(root, "shards"), exist_ok=True)
    shard = os.path.join(root, "shards", "{:05d}.tar")
    with tarfile.open(shard.format(0), "w", format=tarfile.GNU_FORMAT) as tar:
        for key, img, cap in valid_records()[:4]:
            _add(tar, f"{key}.jpg", img)
            _add(tar, f"{key}.txt", cap)
        _add(tar, outside_abs, _jpeg(7))  # absolute path
        _add(tar, "../escaped.jpg", _jpeg(8))  # parent path
        _add(tar, "nocap.jpg", _jpeg(9))  # image without caption
        _add(tar, "README", b"ignored: no extension")
    with tarfile.open(shard.format(1), "w") as tar:
        for key, img, cap, _ in bad_records():
            _add(tar, f"{key}.jpg", img)
            _add(tar, f"{key}.txt", cap)
        for name, (data, _, _) in convertible_images().items():
            _add(tar, f"{name}.png", data)
            # the caption from .json (no .txt), as img2dataset writes it
            _add(tar, f"{name}.json", json.dumps({"caption": f"a {name} image"}).encode())
    path = shard.format(2)
    with tarfile.open(path, "w") as tar:
        for key, img, cap in valid_records()[4:] + [("lost", _jpeg(50, (64, 64)), b"lost")]:
            _add(tar, f"{key}.jpg", img)
            _add(tar, f"{key}.txt", cap)
    with tarfile.open(path) as tar:
        lost = tar.getmember("lost.jpg")
        cut = lost.offset_data + lost.size // 2
    with open(path, "r+b") as f:
        f.truncate(cut)  # a shard cut in the middle of its last image
    return os.path.join(root, "shards", "{00000..00002}.tar")


def write_jsonl(root, outside_abs):
    images = os.path.join(root, "images")
    os.makedirs(images, exist_ok=True)
    lines = []

    def put(name, data):
        with open(os.path.join(images, name), "wb") as f:
            f.write(data)

    for key, img, cap in valid_records():
        put(f"{key}.jpg", img)
        lines.append(json.dumps({"image": f"images/{key}.jpg",
                                 "caption": cap.decode()}).encode())
    for key, img, cap, _ in bad_records():
        put(f"{key}.jpg", img)
        if key == "nonutf8":  # raw invalid bytes inside the JSON string
            lines.append(b'{"image": "images/nonutf8.jpg", "caption": "' + cap + b'"}')
        else:
            lines.append(json.dumps({"image": f"images/{key}.jpg",
                                     "caption": cap.decode()}).encode())
    for name, (data, _, _) in convertible_images().items():
        put(f"{name}.png", data)
        lines.append(json.dumps({"image": f"images/{name}.png",
                                 "captions": [f"a {name} image", "", "second caption"]}).encode())
    lines.append(json.dumps({"image": outside_abs, "caption": "absolute"}).encode())
    lines.append(json.dumps({"image": "../../etc/passwd", "caption": "parent"}).encode())
    lines.append(json.dumps({"image": "nothere.jpg", "caption": "missing"}).encode())
    lines.append(b'{"image": "images/ok0.jpg", "caption": ')  # broken JSON
    src = os.path.join(root, "pairs.jsonl")
    with open(src, "wb") as f:
        f.write(b"\n".join(lines) + b"\n\n")
    return src
