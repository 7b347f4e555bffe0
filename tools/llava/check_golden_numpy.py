#!/usr/bin/env python3
"""Independent numpy re-implementation of the tiny LLaVA goldens (no torch, no transformers).

For each tests/data/llava-tiny-*/ it reads config.json (applying the transformers defaults for absent fields),
the safetensors weights (single file or sharded; F32/F16/BF16; pre-4.52, 4.52+ and transformers-5 in-memory
names), recomputes in float64 and compares with golden.safetensors:
  - pixel_values of both images in both modes, with PIL only (expand2square, bicubic resize, crop, rescale,
    normalise) -> expected bit-exact
  - CLIP: every hidden state, every attention map, every layer's Q and K
  - projector output
  - Llama: every attention map, every hidden state, last-position logits, 8 greedy tokens (no KV cache)
Fails (exit 1) if a relative error (max |a-b| / max |b|) exceeds the tolerance (1e-5). Meant as the readable
reference for the C++ runtime: every convention is spelled out below.

Run: python3 tools/llava/check_golden_numpy.py [--data tests/data]
"""
import argparse
import json
import math
import os
import struct
import sys

import numpy as np
from PIL import Image

TOL = 1e-5
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ---------------------------------------------------------------------------------------------- files
def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        blob = f.read()
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        raw = blob[b:end]
        if e["dtype"] == "F32":
            a = np.frombuffer(raw, "<f4")
        elif e["dtype"] == "F16":
            a = np.frombuffer(raw, "<f2").astype(np.float32)
        elif e["dtype"] == "BF16":
            a = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            raise ValueError(f"{path}: {name}: dtype {e['dtype']}")
        out[name] = a.reshape(e["shape"]).astype(np.float64)
    return out


def canonical(name):
    """Any of the three layouts -> 'vision.<...>', 'projector.<...>', 'text.<...>', 'lm_head.weight'."""
    for prefix, repl in (("model.vision_tower.vision_model.", "vision."), ("vision_tower.vision_model.", "vision."),
                         ("model.vision_tower.", "vision."),  # transformers 5 in-memory names
                         ("model.multi_modal_projector.", "projector."), ("multi_modal_projector.", "projector."),
                         ("model.language_model.", "text."), ("language_model.model.", "text."),
                         ("language_model.lm_head.", "lm_head."), ("lm_head.", "lm_head.")):
        if name.startswith(prefix):
            return repl + name[len(prefix):]
    raise ValueError(f"unknown weight name {name}")


def load_weights(d):
    idx = os.path.join(d, "model.safetensors.index.json")
    files = sorted(set(json.load(open(idx))["weight_map"].values())) if os.path.exists(idx) else ["model.safetensors"]
    w = {}
    for f in files:
        for k, v in read_safetensors(os.path.join(d, f)).items():
            if k.endswith("position_ids"):
                continue
            w[canonical(k)] = v
    return w


def load_config(d):
    """The fields the runtime needs, with the transformers defaults (LlavaConfig / CLIPVisionConfig /
    LlamaConfig) for absent ones."""
    c = json.load(open(os.path.join(d, "config.json")))
    v, t = c.get("vision_config", {}), c.get("text_config", {})
    rope = t.get("rope_parameters") or {}
    heads = t.get("num_attention_heads", 32)
    return {
        "vision_feature_layer": c.get("vision_feature_layer", -2),
        "strategy": c.get("vision_feature_select_strategy", "default"),
        "projector_act": c.get("projector_hidden_act", "gelu"),
        "image_token": c.get("image_token_index", 32000),
        "v_hidden": v.get("hidden_size", 768), "v_layers": v.get("num_hidden_layers", 12),
        "v_heads": v.get("num_attention_heads", 12), "v_act": v.get("hidden_act", "quick_gelu"),
        "v_eps": v.get("layer_norm_eps", 1e-5), "patch": v.get("patch_size", 32), "image": v.get("image_size", 224),
        "t_hidden": t.get("hidden_size", 4096), "t_layers": t.get("num_hidden_layers", 32), "t_heads": heads,
        "t_kv": t.get("num_key_value_heads") or heads, "t_eps": t.get("rms_norm_eps", 1e-6),
        "theta": rope.get("rope_theta", t.get("rope_theta", 10000.0)), "t_act": t.get("hidden_act", "silu"),
    }


# ---------------------------------------------------------------------------------------------- image
PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed point for 8-bit resampling


def bicubic(x):
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def pil_coeffs(in_size, out_size):
    """Pillow's per-output-pixel window [xmin, xmin + n) and fixed-point weights (support 2 scaled by the
    downscale factor, weights normalised to sum 1 in double, then rounded half away from zero to 22 bits)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    out = []
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        w = [bicubic((x + xmin - center + 0.5) / filterscale) for x in range(xmax - xmin)]
        tot = sum(w)
        w = [v / tot for v in w] if tot != 0.0 else w
        k = [int(-0.5 + v * (1 << PRECISION_BITS)) if v < 0 else int(0.5 + v * (1 << PRECISION_BITS)) for v in w]
        out.append((xmin, np.array(k, np.int64)))
    return out


def pil_resample_axis(a, out_size, axis):
    """One separable pass on a uint8 array: sum in int64 with the 1 << 21 rounding offset, >> 22, clip."""
    a = np.moveaxis(a, axis, 0).astype(np.int64)
    res = np.empty((out_size,) + a.shape[1:], np.uint8)
    for i, (xmin, k) in enumerate(pil_coeffs(a.shape[0], out_size)):
        acc = (1 << (PRECISION_BITS - 1)) + np.tensordot(k, a[xmin:xmin + len(k)], axes=(0, 0))
        res[i] = np.clip(acc >> PRECISION_BITS, 0, 255)
    return np.moveaxis(res, 0, axis)


def pil_resize_bicubic(a, new_w, new_h):
    """Image.resize((new_w, new_h), BICUBIC) on an [H, W, 3] uint8 array: two separable passes (a pass is
    skipped when its size does not change), each rounded and clipped to uint8. Pass order: Pillow <= 12
    always runs the horizontal pass first; Pillow 13.0 runs the vertical pass first when
    new_h < h and (h - new_h) > 2 * (w - new_w) (found by experiment: matches Pillow 13.0.0 on every random
    case tried; the order changes the result by a few uint8 levels). For the committed images (and for
    typical photos, or pad-to-square inputs) both versions take the horizontal-first path."""
    h, w = a.shape[:2]
    if new_h < h and (h - new_h) > 2 * (w - new_w):
        return pil_resample_axis(a, new_h, 0) if w == new_w else \
            pil_resample_axis(pil_resample_axis(a, new_h, 0), new_w, 1)
    if w != new_w:
        a = pil_resample_axis(a, new_w, 1)
    if h != new_h:
        a = pil_resample_axis(a, new_h, 0)
    return a


def preprocess(path, size, pad):
    img = Image.open(path).convert("RGB")
    if pad:  # original LLaVA expand2square: background int(mean*255), image pasted at floor offsets
        w, h = img.size
        side = max(w, h)
        sq = Image.new("RGB", (side, side), tuple(int(m * 255) for m in CLIP_MEAN))
        sq.paste(img, ((side - w) // 2, (side - h) // 2))
        img = sq
    w, h = img.size
    short, long_ = min(w, h), max(w, h)
    new_long = int(size * long_ / short)  # transformers truncates
    nw, nh = (size, new_long) if w <= h else (new_long, size)
    resized = pil_resize_bicubic(np.asarray(img), nw, nh)
    # the numpy re-implementation must equal Pillow itself, byte for byte
    assert np.array_equal(resized, np.asarray(img.resize((nw, nh), Image.BICUBIC))), "bicubic differs from PIL"
    left, top = (nw - size) // 2, (nh - size) // 2
    a = resized[top:top + size, left:left + size].transpose(2, 0, 1)
    x = (a.astype(np.float64) * (1 / 255)).astype(np.float32)  # rescale in float64, then float32
    mean = np.array(CLIP_MEAN, np.float32)[:, None, None]
    std = np.array(CLIP_STD, np.float32)[:, None, None]
    return (x - mean) / std  # float32 arithmetic


# ---------------------------------------------------------------------------------------------- model
def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def softmax(s):
    s = s - s.max(-1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(-1, keepdims=True)


_erf = np.vectorize(math.erf)


def act(name, x):
    if name == "quick_gelu":
        return x / (1 + np.exp(-1.702 * x))
    if name == "gelu":  # erf form
        return 0.5 * x * (1 + _erf(x / math.sqrt(2)))
    if name == "silu":
        return x / (1 + np.exp(-x))
    raise ValueError(name)


def clip_forward(cfg, w, pixels):
    D, H, P = cfg["v_hidden"], cfg["v_heads"], cfg["patch"]
    hd = D // H
    g = cfg["image"] // P
    # conv with kernel = stride = patch, no bias: flatten each patch as (channel, ky, kx), row-major grid
    patches = pixels.reshape(3, g, P, g, P).transpose(1, 3, 0, 2, 4).reshape(g * g, 3 * P * P)
    emb = patches @ w["vision.embeddings.patch_embedding.weight"].reshape(D, -1).T
    x = np.concatenate([w["vision.embeddings.class_embedding"][None], emb]) + w["vision.embeddings.position_embedding.weight"]
    x = layer_norm(x, w["vision.pre_layrnorm.weight"], w["vision.pre_layrnorm.bias"], cfg["v_eps"])
    hidden, atts, qs, ks = [x], [], [], []
    for i in range(cfg["v_layers"]):
        p = f"vision.encoder.layers.{i}."
        lin = lambda t, n: t @ w[p + n + ".weight"].T + w[p + n + ".bias"]
        h = layer_norm(x, w[p + "layer_norm1.weight"], w[p + "layer_norm1.bias"], cfg["v_eps"])
        q = lin(h, "self_attn.q_proj").reshape(-1, H, hd).transpose(1, 0, 2)
        k = lin(h, "self_attn.k_proj").reshape(-1, H, hd).transpose(1, 0, 2)
        v = lin(h, "self_attn.v_proj").reshape(-1, H, hd).transpose(1, 0, 2)
        a = softmax(q @ k.transpose(0, 2, 1) / math.sqrt(hd))
        o = (a @ v).transpose(1, 0, 2).reshape(-1, D)
        x = x + lin(o, "self_attn.out_proj")
        h = layer_norm(x, w[p + "layer_norm2.weight"], w[p + "layer_norm2.bias"], cfg["v_eps"])
        x = x + lin(act(cfg["v_act"], lin(h, "mlp.fc1")), "mlp.fc2")
        hidden.append(x)
        atts.append(a)
        qs.append(q)
        ks.append(k)
    return np.stack(hidden), np.stack(atts), np.stack(qs), np.stack(ks)


def projector(cfg, w, feats):
    h = feats @ w["projector.linear_1.weight"].T + w["projector.linear_1.bias"]
    h = act(cfg["projector_act"], h)
    return h @ w["projector.linear_2.weight"].T + w["projector.linear_2.bias"]


def rms_norm(x, wt, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * wt


def rope(x, pos, theta):
    """HF rotate-half: pairs (i, i + d/2), inv_freq = theta^(-2i/d)."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, d, 2) / d)
    ang = np.outer(pos, inv)
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
    rot = np.concatenate([-x[..., d // 2:], x[..., :d // 2]], -1)
    return x * cos + rot * sin


def llama_forward(cfg, w, emb):
    L = emb.shape[0]
    D, H, KV = cfg["t_hidden"], cfg["t_heads"], cfg["t_kv"]
    hd = D // H
    pos = np.arange(L)
    mask = np.triu(np.full((L, L), -np.inf), 1)
    x = emb
    hidden, atts = [x], []
    for i in range(cfg["t_layers"]):
        p = f"text.layers.{i}."
        lin = lambda t, n: t @ w[p + n + ".weight"].T
        h = rms_norm(x, w[p + "input_layernorm.weight"], cfg["t_eps"])
        q = rope(lin(h, "self_attn.q_proj").reshape(L, H, hd).transpose(1, 0, 2), pos, cfg["theta"])
        k = rope(lin(h, "self_attn.k_proj").reshape(L, KV, hd).transpose(1, 0, 2), pos, cfg["theta"])
        v = lin(h, "self_attn.v_proj").reshape(L, KV, hd).transpose(1, 0, 2)
        k, v = np.repeat(k, H // KV, 0), np.repeat(v, H // KV, 0)  # query head j uses kv head j // (H/KV)
        a = softmax(q @ k.transpose(0, 2, 1) / math.sqrt(hd) + mask)
        x = x + lin((a @ v).transpose(1, 0, 2).reshape(L, D), "self_attn.o_proj")
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], cfg["t_eps"])
        x = x + lin(act(cfg["t_act"], lin(h, "mlp.gate_proj")) * lin(h, "mlp.up_proj"), "mlp.down_proj")
        hidden.append(x)
        atts.append(a)
    x = rms_norm(x, w["text.norm.weight"], cfg["t_eps"])
    hidden[-1] = x  # transformers reports the last hidden state after the final norm
    return np.stack(hidden), np.stack(atts), x @ w["lm_head.weight"].T


def embed(w, ids, image_token, img):
    e = w["text.embed_tokens.weight"][np.array(ids)]
    slots = np.flatnonzero(np.array(ids) == image_token)
    assert len(slots) == len(img)
    e[slots] = img
    return e


# ---------------------------------------------------------------------------------------------- tokenizer
def check_tokenizer(d, cases):
    """transformers' LlamaTokenizer ids == libsentencepiece with the rule of the README: BOS; split on
    added/special tokens; text chunks encoded with add_dummy_prefix off; a chunk gets one ' ' prepended
    (unless it starts with one) if legacy is true (every chunk) or it is the start of the string (legacy
    false or absent). Skipped if sentencepiece is not installed."""
    try:
        import re
        import sentencepiece as spm
        from sentencepiece import sentencepiece_model_pb2 as pb
    except ImportError:
        print("  tokenizer cases: skipped (pip install sentencepiece protobuf)")
        return True
    m = pb.ModelProto()
    m.ParseFromString(open(os.path.join(d, "tokenizer.model"), "rb").read())
    m.normalizer_spec.add_dummy_prefix = False
    sp = spm.SentencePieceProcessor(model_proto=m.SerializeToString())
    tc = json.load(open(os.path.join(d, "tokenizer_config.json")))
    legacy = bool(tc.get("legacy", False))
    special = {v["content"]: int(k) for k, v in tc["added_tokens_decoder"].items()}
    pattern = "(" + "|".join(re.escape(s) for s in sorted(special, key=len, reverse=True)) + ")"
    ok = True
    for c in cases:
        ids = [1]
        for i, part in enumerate(re.split(pattern, c["text"])):
            if part in special:
                ids.append(special[part])
            elif part:
                prefix = (legacy or i == 0) and not part.startswith(" ")
                ids += sp.encode(" " + part if prefix else part)
        if ids != c["ids"]:
            ok = False
            print(f"  tokenizer case {c['text']!r}: {ids} != {c['ids']}  FAIL")
    print(f"  tokenizer cases (legacy={str(legacy).lower()}): {len(cases)} {'match' if ok else 'MISMATCH'}")
    return ok


# ---------------------------------------------------------------------------------------------- check
def rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-30))


def check_variant(d, images_dir):
    g = read_safetensors(os.path.join(d, "golden.safetensors"))
    info = json.load(open(os.path.join(d, "golden.json")))
    cfg = load_config(d)
    w = load_weights(d)
    res = {}
    for key, p in info["preprocessing"].items():
        res[key] = rel(preprocess(os.path.join(images_dir, p["image"]), cfg["image"], p["pad"]), g[key])
    hs, att, q, k = clip_forward(cfg, w, g[info["pixel_values_key"]])
    res["clip.hidden_states"] = rel(hs, g["clip.hidden_states"])
    fl = cfg["vision_feature_layer"]
    res["clip.feature"] = rel(hs[fl], g["clip.feature"])
    res["clip.attentions"] = rel(att, g["clip.attentions"])
    res["clip.q"], res["clip.k"] = rel(q, g["clip.q"]), rel(k, g["clip.k"])
    feats = hs[fl][1:] if cfg["strategy"] == "default" else hs[fl]
    proj = projector(cfg, w, feats)
    res["projector"] = rel(proj, g["projector"])
    ids = info["input_ids_expanded"]
    lh, la, logits = llama_forward(cfg, w, embed(w, ids, cfg["image_token"], proj))
    res["llm.hidden_states"] = rel(lh, g["llm.hidden_states"])
    res["llm.attentions"] = rel(la, g["llm.attentions"])
    res["llm.logits_last"] = rel(logits[-1], g["llm.logits_last"])
    toks = []
    seq = list(ids)
    for _ in range(len(info["greedy_tokens"])):
        _, _, lg = llama_forward(cfg, w, embed(w, seq, cfg["image_token"], proj))
        toks.append(int(np.argmax(lg[-1])))
        seq.append(toks[-1])
    ok = all(v <= TOL for v in res.values()) and toks == info["greedy_tokens"]
    ok &= check_tokenizer(d, info["tokenizer_cases"])
    for kname, v in res.items():
        print(f"  {kname:34s} rel err {v:.2e}{'' if v <= TOL else '  FAIL'}")
    print(f"  greedy {toks} {'==' if toks == info['greedy_tokens'] else '!='} golden {info['greedy_tokens']}")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                                   "tests", "data"))
    args = ap.parse_args()
    ok = True
    for v in sorted(os.listdir(args.data)):
        d = os.path.join(args.data, v)
        if v.startswith("llava-tiny-") and os.path.exists(os.path.join(d, "golden.json")):
            print(v)
            ok &= check_variant(d, os.path.join(args.data, "llava-images"))
    print("OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
