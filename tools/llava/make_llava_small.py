#!/usr/bin/env python3
"""Writes a random "llava-small" checkpoint (LLaVA-1.5 architecture, reduced sizes) for timing runs.

numpy only (no torch, no transformers). Generated at benchmark time into a directory given on the command line;
never committed. Shapes:
  CLIP ViT: image 336, patch 14 (24x24 = 576 patches + CLS), hidden 512, 12 layers, 8 heads, intermediate 2048,
            quick_gelu, vision_feature_layer -2, strategy default
  projector: 512 -> 512 -> 512 (gelu)
  Llama:    hidden 512, 8 layers, 8 heads (kv heads 8 unless --kv-heads), intermediate 1408, vocab rows 32064
The tokenizer files are copied from tests/data/llava-tiny-fp32 (1000 SentencePiece pieces; <image> = 1000,
<pad> = 1001, so image_token_index is 1000; embedding rows past 1001 are padding, as in llava-hf's 32064).
Weights: fp16 (default) or bf16, one model.safetensors with the pre-4.52 names (as llava-hf publishes), or the
4.52+ names with --layout new. Scales follow the tiny generator (peaked attention, non-degenerate logits).

Run:  python3 tools/llava/make_llava_small.py OUT_DIR [--dtype f16|bf16] [--layout old|new] [--seed N]
Takes a few seconds (about 200 MB written).
"""
import argparse
import json
import os
import shutil
import struct
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = os.path.join(HERE, "..", "..", "tests", "data", "llava-tiny-fp32")
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

V = dict(hidden=512, inter=2048, layers=12, heads=8, image=336, patch=14)
T = dict(hidden=512, inter=1408, layers=8, heads=8, vocab=32064)
IMAGE_TOKEN, PAD_TOKEN, SP_VOCAB = 1000, 1001, 1000


def tensor_specs(kv_heads):
    """(new-layout name, shape, kind) in a fixed order; kind selects the init rule."""
    out = []
    vh, th = V["hidden"], T["hidden"]
    n_pos = (V["image"] // V["patch"]) ** 2 + 1
    vp = "model.vision_tower.vision_model."
    out += [(vp + "embeddings.class_embedding", (vh,), "unit"),
            (vp + "embeddings.patch_embedding.weight", (vh, 3, V["patch"], V["patch"]), "patch"),
            (vp + "embeddings.position_embedding.weight", (n_pos, vh), "pos"),
            (vp + "pre_layrnorm.weight", (vh,), "ln_w"), (vp + "pre_layrnorm.bias", (vh,), "bias")]
    for i in range(V["layers"]):
        p = f"{vp}encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out += [(p + f"self_attn.{proj}.weight", (vh, vh), "qk" if proj in ("q_proj", "k_proj") else "lin"),
                    (p + f"self_attn.{proj}.bias", (vh,), "bias")]
        out += [(p + "layer_norm1.weight", (vh,), "ln_w"), (p + "layer_norm1.bias", (vh,), "bias"),
                (p + "mlp.fc1.weight", (V["inter"], vh), "lin"), (p + "mlp.fc1.bias", (V["inter"],), "bias"),
                (p + "mlp.fc2.weight", (vh, V["inter"]), "lin"), (p + "mlp.fc2.bias", (vh,), "bias"),
                (p + "layer_norm2.weight", (vh,), "ln_w"), (p + "layer_norm2.bias", (vh,), "bias")]
    out += [(vp + "post_layernorm.weight", (vh,), "ln_w"), (vp + "post_layernorm.bias", (vh,), "bias")]
    out += [("model.multi_modal_projector.linear_1.weight", (th, vh), "lin"),
            ("model.multi_modal_projector.linear_1.bias", (th,), "bias"),
            ("model.multi_modal_projector.linear_2.weight", (th, th), "lin"),
            ("model.multi_modal_projector.linear_2.bias", (th,), "bias")]
    lp = "model.language_model."
    hd = th // T["heads"]
    out.append((lp + "embed_tokens.weight", (T["vocab"], th), "unit"))
    for i in range(T["layers"]):
        p = f"{lp}layers.{i}."
        out += [(p + "self_attn.q_proj.weight", (th, th), "qk"),
                (p + "self_attn.k_proj.weight", (kv_heads * hd, th), "qk"),
                (p + "self_attn.v_proj.weight", (kv_heads * hd, th), "lin"),
                (p + "self_attn.o_proj.weight", (th, th), "lin"),
                (p + "mlp.gate_proj.weight", (T["inter"], th), "lin"),
                (p + "mlp.up_proj.weight", (T["inter"], th), "lin"),
                (p + "mlp.down_proj.weight", (th, T["inter"]), "lin"),
                (p + "input_layernorm.weight", (th,), "ln_w"),
                (p + "post_attention_layernorm.weight", (th,), "ln_w")]
    out += [(lp + "norm.weight", (th,), "ln_w"), ("lm_head.weight", (T["vocab"], th), "head")]
    return out


def old_name(new):
    if new.startswith("lm_head."):
        return "language_model." + new
    if new.startswith("model.language_model."):
        return "language_model.model." + new[len("model.language_model."):]
    return new[len("model."):]


def make(kind, shape, rng):
    x = rng.standard_normal(shape, dtype=np.float32)
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    if kind == "unit":
        return x
    if kind == "pos":
        return x * 0.5
    if kind == "patch":
        return x * (0.5 / 0.27 / np.sqrt(fan_in))
    if kind == "ln_w":
        return 1.0 + 0.1 * x
    if kind == "bias":
        return 0.1 * x
    if kind == "qk":
        return x * (1.4 / np.sqrt(fan_in))
    if kind == "lin":
        return x * (1.0 / np.sqrt(fan_in))
    if kind == "head":
        x *= 4.0 / np.sqrt(fan_in)
        x[:259] *= 0.25
        x[SP_VOCAB:] *= 0.25
        return x
    raise ValueError(kind)


def to_bf16_bits(a):
    """float32 -> bfloat16 bit patterns, round to nearest even (finite inputs)."""
    u = a.astype(np.float32).view(np.uint32)
    rounded = u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def config_json(kv_heads, dtype):
    torch_dtype = "float16" if dtype == "f16" else "bfloat16"
    return {
        "architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
        "ignore_index": -100, "image_token_index": IMAGE_TOKEN, "pad_token_id": PAD_TOKEN,
        "projector_hidden_act": "gelu", "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
        "image_seq_length": (V["image"] // V["patch"]) ** 2, "tie_word_embeddings": False,
        "torch_dtype": torch_dtype, "vocab_size": T["vocab"],
        "text_config": {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                        "hidden_size": T["hidden"], "intermediate_size": T["inter"],
                        "num_hidden_layers": T["layers"], "num_attention_heads": T["heads"],
                        "num_key_value_heads": kv_heads, "hidden_act": "silu", "max_position_embeddings": 4096,
                        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "vocab_size": T["vocab"],
                        "tie_word_embeddings": False, "torch_dtype": torch_dtype},
        "vision_config": {"model_type": "clip_vision_model", "hidden_size": V["hidden"],
                          "intermediate_size": V["inter"], "num_hidden_layers": V["layers"],
                          "num_attention_heads": V["heads"], "image_size": V["image"], "patch_size": V["patch"],
                          "projection_dim": V["hidden"], "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
                          "num_channels": 3},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--dtype", choices=("f16", "bf16"), default="f16")
    ap.add_argument("--layout", choices=("old", "new"), default="old")
    ap.add_argument("--kv-heads", type=int, default=T["heads"])
    ap.add_argument("--seed", type=int, default=20261122)
    args = ap.parse_args()
    if T["heads"] % args.kv_heads:
        sys.exit(f"--kv-heads {args.kv_heads} must divide {T['heads']}")
    os.makedirs(args.out_dir, exist_ok=True)
    for f in TOKENIZER_FILES:
        src = os.path.join(TINY, f)
        if not os.path.exists(src):
            sys.exit(f"missing {src} (run from a checkout with tests/data/llava-tiny-fp32)")
        shutil.copy(src, os.path.join(args.out_dir, f))
    with open(os.path.join(args.out_dir, "config.json"), "w") as f:
        json.dump(config_json(args.kv_heads, args.dtype), f, indent=2)

    specs = tensor_specs(args.kv_heads)
    st_dtype = "F16" if args.dtype == "f16" else "BF16"
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape, _ in specs:
        nbytes = 2 * int(np.prod(shape))
        key = old_name(name) if args.layout == "old" else name
        header[key] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hjson += b" " * (-len(hjson) % 8)
    path = os.path.join(args.out_dir, "model.safetensors")
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for i, (name, shape, kind) in enumerate(specs):
            rng = np.random.default_rng([args.seed, i])
            x = make(kind, shape, rng)
            f.write((x.astype("<f2") if args.dtype == "f16" else to_bf16_bits(x).astype("<u2")).tobytes())
    os.replace(path + ".tmp", path)
    print(f"wrote {path} ({(offset + len(hjson) + 8) / 2**20:.1f} MiB, {len(specs)} tensors, "
          f"{offset // 2 / 1e6:.1f} M parameters, {st_dtype}, {args.layout} names)")


if __name__ == "__main__":
    main()
