"""Builds the committed parity fixtures under tests/zoo/fixtures/ (run by hand, needs torch).

The tests compare mmfm's converted models and tokenizers against these files WITHOUT torch. The
script makes small randomly initialised reference models (width 32, 2 layers, 32 px images, vocab
256), perturbs every parameter (so LayerNorm scales/biases and zero-initialised biases are tested
too), and saves: their weights in the source's own layout on disk (open_clip's hub directory with
open_clip_config.json; Hugging Face directories with their tokenizer and preprocessor files), the
inputs, and the reference outputs (L2-normalised image/text embeddings and logits). The open_clip
model has 16-wide vision heads and 4 text heads, so a converter that guesses `width // 64` fails.
The CLIP models use a small CLIP BPE (the first 1,000 merges of CLIP's, 1,514 ids, not 49,408).
It also saves token ids of varied strings from open_clip's CLIP BPE tokenizer (shipped and small),
Hugging Face's CLIPTokenizer (its tokenizer.json) on the small BPE, and SiglipTokenizer on a
small SentencePiece model trained here (no network is needed).

Set-up (a separate venv: torch never becomes an mmfm dependency). PyPI's torchvision does not
import beside the CPU-only torch 2.13.0 build; torch 2.14.1 with torchvision 0.29.1 does:

    python3 -m venv /tmp/zoo/torchvenv
    /tmp/zoo/torchvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 open_clip_torch \
        transformers safetensors numpy sentencepiece
    /tmp/zoo/torchvenv/bin/python tests/zoo/make_parity_fixtures.py

Versions used for the committed files are written to fixtures/versions.json.
"""
from __future__ import annotations

import io
import json
import os
import shutil

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures")
W, LAYERS, HEADS, MLP, IMG, PATCH, VOCAB, CTX = 32, 2, 2, 64, 32, 8, 256, 16
N_IMG, N_TXT = 3, 4
N_MERGES = 1000  # the small CLIP BPE: 256 bytes x 2 + 1000 merges + SOT/EOT = 1514 ids
CLIP_VOCAB = 512 + N_MERGES + 2
OC_HEAD_WIDTH, OC_TEXT_HEADS = 16, 4  # open_clip fixture: neither is what width // 64 gives
CLIP_MERGES = os.path.join(HERE, "..", "..", "mmfm", "zoo", "data", "clip_bpe_merges.txt")

TOKENIZER_STRINGS = [
    "", " ", "a photo of a cat", "A Photo Of A CAT.", "hello, world!", "what's up? it's fine.",
    "don't stop", "they're here; we've gone", "I'm sure you'll see", "he'd say: 'no'",
    "numbers 1234 and 3.14159", "100% sure #1 @home", "e-mail: someone@example.com",
    "https://example.com/path?q=1&r=2", "tabs\tand\nnewlines\r\nhere", "   leading and trailing   ",
    "multiple     spaces", "café naïve résumé", "Ünïcödé ÀÉÎÕÜ", "日本語のテキスト", "中文字符测试",
    "한국어 문장", "Ελληνικά γράμματα", "русский текст", "עברית", "العربية", "emoji 😀🐱🚀",
    "curly ‘quotes’ and “double”", "em—dash and en–dash", "ellipsis… here", "ﬁ ligature",
    "ＦＵＬＬＷＩＤＴＨ text", "&amp; &lt;b&gt; html", "snake_case and camelCase",
    "C++ / C# / F#", "(parentheses) [brackets] {braces}", "a.b.c.d", "!!!???...",
    "x" * 200, "word " * 100, "the quick brown fox jumps over the lazy dog " * 5,
    "a small red circle left of a large blue square", "Mixed CASE With Numbers 42X",
    "under_score-dash.dot", "slashes/and\\backslashes", "$100.00 or €90,50", "1st 2nd 3rd 4th",
    "naïve café — ‘fancy’ “text”…", "ŁÓDŹ żółć", "ñandú pingüino", "Zürich Straße",
    "tiếng Việt", "हिन्दी", "ไทย", "mañana?¿", "¡hola!", "🙂 smile", "a\u00a0non-breaking space",
    "zero\u200bwidth", "COMBINING e\u0301 accent",
]


def perturb_(model: torch.nn.Module, seed: int) -> None:
    """Random, non-trivial values for every parameter (LayerNorm scale near 1, others near 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "logit_scale" in name:
                p.fill_(float(np.log(12.5)))
            elif "logit_bias" in name:
                p.fill_(-3.0)
            elif p.ndim == 1 and ("ln" in name or "norm" in name) and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)


def inputs(seed: int, bos: int | None, eot: int, pad: int, max_id: int):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(N_IMG, 3, IMG, IMG)).astype(np.float32)  # NCHW, already normalised
    tokens = np.full((N_TXT, CTX), pad, np.int64)
    for i, n in enumerate([3, 7, CTX - 2 - (bos is not None) + 1, 1]):
        ids = list(rng.integers(3, max_id, size=n))
        row = ([bos] if bos is not None else []) + ids
        row = row[:CTX - 1] + [eot]
        tokens[i, :len(row)] = row
    return images, tokens


def save_ref(name: str, images, tokens, img_emb, txt_emb, logits, **extra) -> None:
    np.savez(os.path.join(OUT, f"{name}_ref.npz"), images_nhwc=images.transpose(0, 2, 3, 1),
             tokens=tokens.astype(np.int32), img_emb=img_emb.astype(np.float32),
             txt_emb=txt_emb.astype(np.float32), logits=logits.astype(np.float32), **extra)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's byte -> unicode map (the first 256 vocabulary entries, in order)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    out, n = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + n)
            n += 1
    return out  # insertion order is the vocabulary order (printable bytes first)


def write_small_clip_bpe(d: str) -> tuple[str, str, str]:
    """vocab.json + merges.txt (Hugging Face's CLIP files) and bpe.txt.gz (open_clip's format)."""
    import gzip

    with open(CLIP_MERGES, encoding="utf-8") as f:
        lines = f.read().split("\n")
    header, merges = lines[0], lines[1:N_MERGES + 1]
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == CLIP_VOCAB
    os.makedirs(d, exist_ok=True)
    vocab_path, merges_path = os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt")
    with open(vocab_path, "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
    with open(merges_path, "w", encoding="utf-8") as f:  # Hugging Face's merges.txt header
        f.write("\n".join(["#version: 0.2"] + merges) + "\n")
    gz = os.path.join(OUT, "small_clip_bpe.txt.gz")
    with gzip.open(gz, "wt", encoding="utf-8") as f:  # no final newline: open_clip would read a '' merge
        f.write("\n".join([header] + merges))
    return vocab_path, merges_path, gz


def make_openclip() -> dict:
    """open_clip's hub layout: open_clip_config.json + open_clip_model.safetensors (+ BPE files)."""
    import open_clip
    from safetensors.torch import save_file

    d = os.path.join(OUT, "openclip_tiny")
    shutil.rmtree(d, ignore_errors=True)
    write_small_clip_bpe(d)
    model_cfg = {
        "embed_dim": 24, "quick_gelu": True,
        "vision_cfg": {"layers": LAYERS, "width": W, "head_width": OC_HEAD_WIDTH, "mlp_ratio": MLP / W,
                       "patch_size": PATCH, "image_size": IMG},
        "text_cfg": {"context_length": CTX, "vocab_size": CLIP_VOCAB, "width": W,
                     "heads": OC_TEXT_HEADS, "layers": LAYERS, "mlp_ratio": MLP / W,
                     "norm_kwargs": {"eps": 1e-6}}}
    preprocess_cfg = {"mean": [0.4, 0.45, 0.5], "std": [0.2, 0.25, 0.3], "interpolation": "bilinear",
                      "resize_mode": "squash"}
    model = open_clip.model.CLIP(
        embed_dim=model_cfg["embed_dim"], quick_gelu=True,
        vision_cfg=open_clip.model.CLIPVisionCfg(**model_cfg["vision_cfg"]),
        text_cfg=open_clip.model.CLIPTextCfg(**model_cfg["text_cfg"])).eval()
    assert model.visual.transformer.resblocks[0].attn.num_heads == W // OC_HEAD_WIDTH
    assert model.transformer.resblocks[0].attn.num_heads == OC_TEXT_HEADS
    perturb_(model, 0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              os.path.join(d, "open_clip_model.safetensors"))
    with open(os.path.join(d, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, f, indent=1)
    images, tokens = inputs(1, bos=CLIP_VOCAB - 2, eot=CLIP_VOCAB - 1, pad=0, max_id=CLIP_VOCAB - 2)
    with torch.no_grad():
        im = model.encode_image(torch.from_numpy(images), normalize=True)
        tx = model.encode_text(torch.from_numpy(tokens), normalize=True)
        logits = model.logit_scale.exp() * im @ tx.T
    save_ref("openclip_tiny", images, tokens, im.numpy(), tx.numpy(), logits.numpy())
    return model_cfg


def make_hf_clip() -> None:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    common = dict(hidden_size=W, intermediate_size=MLP, num_hidden_layers=LAYERS,
                  num_attention_heads=HEADS, hidden_act="quick_gelu")
    cfg = CLIPConfig(text_config=dict(vocab_size=CLIP_VOCAB, max_position_embeddings=CTX,
                                      bos_token_id=CLIP_VOCAB - 2, eos_token_id=CLIP_VOCAB - 1,
                                      pad_token_id=CLIP_VOCAB - 1, **common),
                     vision_config=dict(image_size=IMG, patch_size=PATCH, **common), projection_dim=24)
    model = CLIPModel(cfg).eval()
    perturb_(model, 1)
    d = os.path.join(OUT, "hf_clip_tiny")
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d)
    vocab, merges, _ = write_small_clip_bpe(os.path.join(OUT, "tmp_bpe"))
    with open(vocab, encoding="utf-8") as f:
        vocab_dict = json.load(f)
    with open(merges, encoding="utf-8") as f:
        merge_list = [tuple(m.split()) for m in f.read().split("\n")[1:] if m]
    CLIPTokenizer(vocab=vocab_dict, merges=merge_list).save_pretrained(d)  # writes tokenizer.json
    shutil.rmtree(os.path.join(OUT, "tmp_bpe"))
    CLIPImageProcessor(size={"shortest_edge": IMG}, crop_size={"height": IMG, "width": IMG}).save_pretrained(d)
    images, tokens = inputs(2, bos=CLIP_VOCAB - 2, eot=CLIP_VOCAB - 1, pad=CLIP_VOCAB - 1,
                            max_id=CLIP_VOCAB - 2)
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(tokens), pixel_values=torch.from_numpy(images))
    save_ref("hf_clip_tiny", images, tokens, out.image_embeds.numpy(), out.text_embeds.numpy(),
             out.logits_per_image.numpy())


def make_hf_siglip():
    from transformers import SiglipConfig, SiglipModel

    common = dict(hidden_size=W, intermediate_size=MLP, num_hidden_layers=LAYERS,
                  num_attention_heads=HEADS)
    cfg = SiglipConfig(text_config=dict(vocab_size=VOCAB, max_position_embeddings=CTX, **common),
                       vision_config=dict(image_size=IMG, patch_size=PATCH, **common))
    model = SiglipModel(cfg).eval()
    perturb_(model, 2)
    d = os.path.join(OUT, "hf_siglip_tiny")
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d)
    from transformers import SiglipImageProcessor, SiglipTokenizer
    SiglipTokenizer(vocab_file=os.path.join(OUT, "siglip_tiny_spiece.model")).save_pretrained(d)
    SiglipImageProcessor(size={"height": IMG, "width": IMG}).save_pretrained(d)
    images, tokens = inputs(3, bos=None, eot=1, pad=1, max_id=VOCAB)
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(tokens), pixel_values=torch.from_numpy(images))
    save_ref("hf_siglip_tiny", images, tokens, out.image_embeds.numpy(), out.text_embeds.numpy(),
             out.logits_per_image.numpy())
    return model, cfg


def make_gemma_tokenizer(d: str):
    """A small Gemma-style tokenizer as SigLIP 2's Hugging Face checkpoints carry it: a byte-fallback
    SentencePiece BPE (pad 0, eos 1, bos 2, unk 3) as tokenizer.model + tokenizer.json, no BOS, a
    sticky EOS, right padding with <pad>, lowercased (do_lower_case), as transformers' SigLIP 2
    conversion sets it up."""
    import sentencepiece as spm
    from transformers import GemmaTokenizer

    corpus = [s for s in TOKENIZER_STRINGS if s.strip()] * 3
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=buf, vocab_size=1000, model_type="bpe",
        hard_vocab_limit=False, character_coverage=1.0, byte_fallback=True, split_digits=True,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
        bos_piece="<bos>", unk_piece="<unk>", allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", minloglevel=2, num_threads=1)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "tokenizer.model"), "wb") as f:
        f.write(buf.getvalue())
    kw = dict(add_bos_token=False, add_eos_token=True, padding_side="right", do_lower_case=True,
              model_input_names=["input_ids"])
    GemmaTokenizer.from_pretrained(d, **kw).save_pretrained(d)  # writes tokenizer.json
    from transformers.models.siglip2.tokenization_siglip2 import Siglip2Tokenizer
    return Siglip2Tokenizer.from_pretrained(d, **kw)  # Gemma + lowercasing: the reference


def gemma_text_and_common(tok) -> tuple[dict, dict]:
    """(text_config, shared tower sizes) of the tiny SigLIP 2 models: Gemma's special ids."""
    common = dict(hidden_size=W, intermediate_size=MLP, num_hidden_layers=LAYERS,
                  num_attention_heads=HEADS)
    return dict(vocab_size=len(tok), max_position_embeddings=CTX, pad_token_id=0, eos_token_id=1,
                bos_token_id=2, **common), common


def make_hf_siglip2():
    """SigLIP 2 at fixed resolution is a SiglipModel with Gemma's tokenizer. 36 px images with
    8 px patches: the stride-8 patch convolution drops the last 4 rows and columns."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    d = os.path.join(OUT, "hf_siglip2_tiny")
    shutil.rmtree(d, ignore_errors=True)
    tok = make_gemma_tokenizer(d)
    text, common = gemma_text_and_common(tok)
    cfg = SiglipConfig(text_config=text, vision_config=dict(image_size=36, patch_size=PATCH, **common))
    model = SiglipModel(cfg).eval()
    perturb_(model, 4)
    model.save_pretrained(d)
    SiglipImageProcessor(size={"height": 36, "width": 36}).save_pretrained(d)
    rng = np.random.default_rng(5)
    images = rng.normal(size=(N_IMG, 3, 36, 36)).astype(np.float32)
    tokens = np.asarray(tok(["A photo of a CAT.", "two dogs", "x" * 300, ""], padding="max_length",
                            max_length=CTX, truncation=True)["input_ids"], np.int64)
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(tokens), pixel_values=torch.from_numpy(images))
    save_ref("hf_siglip2_tiny", images, tokens, out.image_embeds.numpy(), out.text_embeds.numpy(),
             out.logits_per_image.numpy())
    ids = np.asarray(tok(TOKENIZER_STRINGS, padding="max_length", max_length=64, truncation=True)["input_ids"], np.int32)
    return model, cfg, ids


NAFLEX_SHAPES = {"wide": (24, 72), "tall": (72, 24), "square": (40, 40)}  # 3:1, 1:3, 1:1 (h, w)
NAFLEX_BUDGETS = (16, 6)


def make_hf_siglip2_naflex() -> None:
    """Siglip2Model (NaFlex): a 4 x 4 learned position grid at patch 8, images at three aspect
    ratios through Siglip2ImageProcessor at two max_num_patches. Reference embeddings are taken
    both in one mixed batch and one image at a time."""
    from transformers import Siglip2Config, Siglip2ImageProcessor, Siglip2Model

    d = os.path.join(OUT, "hf_siglip2_naflex_tiny")
    shutil.rmtree(d, ignore_errors=True)
    tok = make_gemma_tokenizer(d)
    text, common = gemma_text_and_common(tok)
    cfg = Siglip2Config(text_config=text, vision_config=dict(num_patches=16, patch_size=PATCH, **common))
    model = Siglip2Model(cfg).eval()
    perturb_(model, 6)
    model.save_pretrained(d)
    rng = np.random.default_rng(7)
    raw = {k: rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for k, (h, w) in NAFLEX_SHAPES.items()}
    texts = ["A photo of a CAT.", "two dogs", "x" * 300]
    tokens = np.asarray(tok(texts, padding="max_length", max_length=CTX, truncation=True)["input_ids"], np.int64)
    ref = {f"raw_{k}": v for k, v in raw.items()}
    ref["tokens"] = tokens.astype(np.int32)
    for budget in NAFLEX_BUDGETS:
        proc = Siglip2ImageProcessor(patch_size=PATCH, max_num_patches=budget)
        if budget == NAFLEX_BUDGETS[0]:
            proc.save_pretrained(d)
        batch = proc(images=[raw[k] for k in NAFLEX_SHAPES], return_tensors="pt")
        with torch.no_grad():
            out = model(input_ids=torch.from_numpy(tokens), pixel_values=batch["pixel_values"],
                        pixel_attention_mask=batch["pixel_attention_mask"],
                        spatial_shapes=batch["spatial_shapes"])
            alone = []
            for k in NAFLEX_SHAPES:
                one = proc(images=[raw[k]], return_tensors="pt")
                alone.append(model.get_image_features(
                    pixel_values=one["pixel_values"], pixel_attention_mask=one["pixel_attention_mask"],
                    spatial_shapes=one["spatial_shapes"]).pooler_output)
            alone = torch.nn.functional.normalize(torch.cat(alone), dim=-1)
        ref[f"b{budget}_patches"] = batch["pixel_values"].numpy()
        ref[f"b{budget}_valid"] = batch["pixel_attention_mask"].numpy().astype(bool)
        ref[f"b{budget}_spatial"] = batch["spatial_shapes"].numpy().astype(np.int32)
        ref[f"b{budget}_img_emb"] = out.image_embeds.numpy()
        ref[f"b{budget}_img_emb_alone"] = alone.numpy()
        ref[f"b{budget}_logits"] = out.logits_per_image.numpy()
        ref["txt_emb"] = out.text_embeds.numpy()
    np.savez(os.path.join(OUT, "hf_siglip2_naflex_tiny_ref.npz"), **ref)


def write_big_vision_npz(model, cfg, name: str = "big_vision_siglip_tiny") -> None:
    """The HF SigLIP weights in big_vision's two_towers npz naming (same math, different layout;
    SigLIP 2's fixed-resolution checkpoints use the same layout as SigLIP's)."""
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    out = {}

    def attn(dst, src, width, heads):
        hd = width // heads
        for a, b in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
            out[f"{dst}/{a}/kernel"] = sd[f"{src}.{b}.weight"].T.reshape(width, heads, hd)
            out[f"{dst}/{a}/bias"] = sd[f"{src}.{b}.bias"].reshape(heads, hd)
        out[f"{dst}/out/kernel"] = sd[f"{src}.out_proj.weight"].T.reshape(heads, hd, width)
        out[f"{dst}/out/bias"] = sd[f"{src}.out_proj.bias"]

    def block(dst, src, width, heads):
        for i, n in ((0, "layer_norm1"), (1, "layer_norm2")):
            out[f"{dst}/LayerNorm_{i}/scale"] = sd[f"{src}.{n}.weight"]
            out[f"{dst}/LayerNorm_{i}/bias"] = sd[f"{src}.{n}.bias"]
        for i, n in ((0, "fc1"), (1, "fc2")):
            out[f"{dst}/MlpBlock_0/Dense_{i}/kernel"] = sd[f"{src}.mlp.{n}.weight"].T
            out[f"{dst}/MlpBlock_0/Dense_{i}/bias"] = sd[f"{src}.mlp.{n}.bias"]
        attn(f"{dst}/MultiHeadDotProductAttention_0", f"{src}.self_attn", width, heads)

    v, t = "vision_model", "text_model"
    out["params/img/embedding/kernel"] = sd[f"{v}.embeddings.patch_embedding.weight"].transpose(2, 3, 1, 0)
    out["params/img/embedding/bias"] = sd[f"{v}.embeddings.patch_embedding.bias"]
    out["params/img/pos_embedding"] = sd[f"{v}.embeddings.position_embedding.weight"][None]
    for i in range(LAYERS):
        block(f"params/img/Transformer/encoderblock_{i}", f"{v}.encoder.layers.{i}", W, HEADS)
        block(f"params/txt/Encoder_0/encoderblock_{i}", f"{t}.encoder.layers.{i}", W, HEADS)
    out["params/img/Transformer/encoder_norm/scale"] = sd[f"{v}.post_layernorm.weight"]
    out["params/img/Transformer/encoder_norm/bias"] = sd[f"{v}.post_layernorm.bias"]
    h = f"{v}.head"
    out["params/img/MAPHead_0/probe"] = sd[f"{h}.probe"]
    out["params/img/MAPHead_0/LayerNorm_0/scale"] = sd[f"{h}.layernorm.weight"]
    out["params/img/MAPHead_0/LayerNorm_0/bias"] = sd[f"{h}.layernorm.bias"]
    for i, n in ((0, "fc1"), (1, "fc2")):
        out[f"params/img/MAPHead_0/MlpBlock_0/Dense_{i}/kernel"] = sd[f"{h}.mlp.{n}.weight"].T
        out[f"params/img/MAPHead_0/MlpBlock_0/Dense_{i}/bias"] = sd[f"{h}.mlp.{n}.bias"]
    w_in, b_in = sd[f"{h}.attention.in_proj_weight"], sd[f"{h}.attention.in_proj_bias"]
    hd = W // HEADS
    for j, a in enumerate(("query", "key", "value")):
        out[f"params/img/MAPHead_0/MultiHeadDotProductAttention_0/{a}/kernel"] = \
            w_in[j * W:(j + 1) * W].T.reshape(W, HEADS, hd)
        out[f"params/img/MAPHead_0/MultiHeadDotProductAttention_0/{a}/bias"] = \
            b_in[j * W:(j + 1) * W].reshape(HEADS, hd)
    out["params/img/MAPHead_0/MultiHeadDotProductAttention_0/out/kernel"] = \
        sd[f"{h}.attention.out_proj.weight"].T.reshape(HEADS, hd, W)
    out["params/img/MAPHead_0/MultiHeadDotProductAttention_0/out/bias"] = sd[f"{h}.attention.out_proj.bias"]
    out["params/txt/Embed_0/embedding"] = sd[f"{t}.embeddings.token_embedding.weight"]
    out["params/txt/pos_embedding"] = sd[f"{t}.embeddings.position_embedding.weight"][None]
    out["params/txt/Encoder_0/encoder_norm/scale"] = sd[f"{t}.final_layer_norm.weight"]
    out["params/txt/Encoder_0/encoder_norm/bias"] = sd[f"{t}.final_layer_norm.bias"]
    out["params/txt/head/kernel"] = sd[f"{t}.head.weight"].T
    out["params/txt/head/bias"] = sd[f"{t}.head.bias"]
    out["params/t"] = sd["logit_scale"].reshape(1)
    out["params/b"] = sd["logit_bias"].reshape(1)
    np.savez(os.path.join(OUT, f"{name}.npz"), **out)


def make_spiece() -> str:
    """A small SentencePiece model with SigLIP's (T5-style) special ids: pad 0, eos 1, unk 2."""
    import sentencepiece as spm

    corpus = [s for s in TOKENIZER_STRINGS if s.strip()] * 3 + [
        "a photo of a {} on the table".format(w) for w in
        ("cat", "dog", "red car", "small bird", "blue square", "green circle", "house", "tree")]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=buf, vocab_size=300, model_type="unigram",
        hard_vocab_limit=False, character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        minloglevel=2, num_threads=1)
    sp_path = os.path.join(OUT, "siglip_tiny_spiece.model")
    with open(sp_path, "wb") as f:
        f.write(buf.getvalue())
    return sp_path


def make_tokenizer_fixtures(sp_path: str, gemma_ids) -> None:
    import open_clip
    from transformers import CLIPTokenizer, SiglipTokenizer

    clip_ids = open_clip.tokenize(TOKENIZER_STRINGS, context_length=77).numpy().astype(np.int32)
    small = open_clip.tokenizer.SimpleTokenizer(bpe_path=os.path.join(OUT, "small_clip_bpe.txt.gz"))
    small_ids = small(TOKENIZER_STRINGS, context_length=77).numpy().astype(np.int32)
    os.remove(os.path.join(OUT, "small_clip_bpe.txt.gz"))
    hf_dir = os.path.join(OUT, "hf_clip_tiny")
    hf_kw = dict(padding="max_length", max_length=77, truncation=True)
    hf_ids = np.asarray(CLIPTokenizer.from_pretrained(hf_dir)(TOKENIZER_STRINGS, **hf_kw)["input_ids"], np.int32)
    tok = SiglipTokenizer(vocab_file=sp_path)
    enc = tok(TOKENIZER_STRINGS, padding="max_length", max_length=64, truncation=True)
    siglip_ids = np.asarray(enc["input_ids"], np.int32)
    with open(os.path.join(OUT, "tokenizer_strings.json"), "w", encoding="utf-8") as f:
        json.dump(TOKENIZER_STRINGS, f, ensure_ascii=False, indent=0)
    np.savez(os.path.join(OUT, "tokenizer_ref.npz"), clip_bpe=clip_ids, siglip=siglip_ids,
             siglip_pad_id=np.int32(tok.pad_token_id), siglip_eos_id=np.int32(tok.eos_token_id),
             small_clip_openclip=small_ids, small_clip_hf=hf_ids, gemma_siglip2=gemma_ids)


def main() -> None:
    import open_clip
    import transformers

    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    for stale in ("openclip_tiny.safetensors",):
        if os.path.exists(os.path.join(OUT, stale)):
            os.remove(os.path.join(OUT, stale))
    sp_path = make_spiece()
    make_openclip()
    make_hf_clip()
    model, cfg = make_hf_siglip()
    write_big_vision_npz(model, cfg)
    model2, cfg2, gemma_ids = make_hf_siglip2()
    write_big_vision_npz(model2, cfg2, "big_vision_siglip2_tiny")
    make_hf_siglip2_naflex()
    make_tokenizer_fixtures(sp_path, gemma_ids)
    with open(os.path.join(OUT, "versions.json"), "w") as f:
        json.dump({"torch": torch.__version__, "open_clip": open_clip.__version__,
                   "transformers": transformers.__version__}, f, indent=1)
    total = sum(os.path.getsize(os.path.join(r, n)) for r, _, ns in os.walk(OUT) for n in ns)
    print(f"wrote {OUT} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
