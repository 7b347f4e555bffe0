#!/usr/bin/env python3
"""Writes the small synthetic example inputs in examples/data/ (deterministic; numpy only).

They imitate the statistics of a CLIP ViT encoder (CLS token at index 0, then a row-major patch
grid) at a size small enough to ship in the repository:

  attention_layer22.npy        float16 [8, 145, 145]   one layer: 8 heads, CLS + 12x12 patches
  clip_synthetic.safetensors   float16 tensors:
      attentions       [24, 2, 65, 65]  every layer of a smaller encoder (CLS + 8x8 patches)
      keys_layer22     [8, 145, 16]     the keys behind attention_layer22.npy (per head)
      hidden_layer22   [145, 64]        token features of that layer (for merging / pooling)
      queries_layer23  [145, 64]        last-layer queries and keys, one 64-wide head
      keys_layer23     [145, 64]        (PruMerge's exact input)
  llm_attention_layer1.npy     float16 [4, 80, 80]     one causal LLM layer: 5 prompt tokens, 64 visual
                                                       tokens (8x8) at positions 5..68, 11 text tokens

Structure: every attention row is softmax(q k^T / sqrt(d)) of synthetic queries and keys built
from (a) a positional code, so early layers attend locally; (b) a content code, with an "object"
blob in the image that attends to itself and draws the CLS query; (c) a shared "sink" direction:
a few background patches (and the CLS key) carry it and every query leans on it, giving the
attention sinks seen in real ViTs, stronger in deeper layers.

Run: python3 tools/make_example_data.py [--out examples/data]
"""
import argparse
import json
import os
import struct

import numpy as np

SEED = 20241122


def positional_code(side, dim):
    """Sinusoidal 2-D code of the side x side patch grid, [side*side, dim]; dot products decay
    with the grid distance."""
    r, c = np.divmod(np.arange(side * side), side)
    freqs = np.linspace(0.35, 1.6, dim // 4)
    parts = [np.sin(np.outer(r, freqs)), np.cos(np.outer(r, freqs)),
             np.sin(np.outer(c, freqs)), np.cos(np.outer(c, freqs))]
    return np.concatenate(parts, axis=1) / np.sqrt(dim / 2)


def object_mask(side):
    r, c = np.divmod(np.arange(side * side), side)
    cr, cc, radius = 0.45 * side, 0.55 * side, 0.3 * side
    return ((r - cr) ** 2 + (c - cc) ** 2) <= radius ** 2


def sink_patches(side):
    """Three background patches: near a corner, an edge and the middle of the bottom row."""
    return np.array([1 * side + 1, 0 * side + side - 2, (side - 1) * side + side // 2])


def layer_qk(rng, side, heads, dh, depth):
    """Queries and keys [heads, N, dh] of one layer at relative depth in [0, 1]."""
    n = side * side
    tokens = n + 1
    pos = positional_code(side, dh)
    obj = object_mask(side)
    sinks = sink_patches(side)
    locality = 7.0 * (1.0 - depth) ** 2 + 0.6       # early layers: local attention
    content = 1.0 + 3.0 * depth                      # deeper: semantic grouping
    sink = 0.5 + 5.5 * min(1.0, depth / 0.4)         # sinks appear after the first layers
    q = np.zeros((heads, tokens, dh))
    k = np.zeros((heads, tokens, dh))
    for h in range(heads):
        basis = np.linalg.qr(rng.standard_normal((dh, dh)))[0]
        u_sink, u_obj = basis[:, 0], basis[:, 1]
        mix = rng.standard_normal((dh, dh)) / np.sqrt(dh)
        head_local = locality * (0.6 + 0.8 * rng.random())
        patch_q = head_local * pos @ mix + 0.35 * rng.standard_normal((n, dh))
        patch_k = pos @ mix + 0.35 * rng.standard_normal((n, dh))
        patch_q += np.outer(obj * content, u_obj)
        patch_k += np.outer(obj * 1.0, u_obj)
        patch_q += sink * 0.5 * u_sink
        patch_k[sinks] += 1.6 * u_sink
        q[h, 1:], k[h, 1:] = patch_q, patch_k
        # CLS: its query looks for the object and the sinks; its key is a mild sink.
        q[h, 0] = 1.2 * content * u_obj + 0.5 * sink * u_sink + 0.2 * rng.standard_normal(dh)
        k[h, 0] = 0.9 * u_sink + 0.2 * rng.standard_normal(dh)
    return q, k


def softmax_attention(q, k):
    logits = np.einsum("hid,hjd->hij", q, k) / np.sqrt(q.shape[-1]) * 4.0
    logits -= logits.max(axis=-1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=-1, keepdims=True)


def llm_attention(rng, heads=4, prefix=5, side=8, text=11, dh=32):
    """Causal prefill attention of one LLM layer over [prompt | visual | text]: a strong BOS sink,
    local attention among visual tokens, text tokens drawn to the object's visual tokens."""
    n = side * side
    tokens = prefix + n + text
    obj = object_mask(side)
    pos = positional_code(side, dh)
    q = 0.3 * rng.standard_normal((heads, tokens, dh))
    k = 0.3 * rng.standard_normal((heads, tokens, dh))
    for h in range(heads):
        basis = np.linalg.qr(rng.standard_normal((dh, dh)))[0]
        u_bos, u_obj = basis[:, 0], basis[:, 1]
        k[h, 0] += 3.0 * u_bos
        q[h] += 1.5 * u_bos
        vis = slice(prefix, prefix + n)
        q[h, vis] += 2.0 * pos
        k[h, vis] += pos + np.outer(obj, u_obj)
        q[h, prefix + n:] += (1.5 + h) * u_obj
    logits = np.einsum("hid,hjd->hij", q, k) / np.sqrt(dh) * 4.0
    logits = np.where(np.tril(np.ones((tokens, tokens), dtype=bool)), logits, -np.inf)
    logits -= logits.max(axis=-1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=-1, keepdims=True)


def hidden_states(rng, side, dim):
    n = side * side
    obj = object_mask(side)
    x = positional_code(side, dim) + 0.3 * rng.standard_normal((n, dim))
    x += np.outer(obj, rng.standard_normal(dim))
    cls = x.mean(axis=0) + 0.5 * rng.standard_normal(dim)
    return np.vstack([cls, x])


def save_safetensors(path, tensors):
    """Minimal safetensors writer (sorted names, packed data, header padded to 8 bytes)."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        dtype = {np.dtype("<f2"): "F16", np.dtype("<f4"): "F32"}[a.dtype.newbyteorder("<")]
        data = a.astype(a.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header["__metadata__"] = {"generator": "tools/make_example_data.py", "seed": str(SEED)}
    text = json.dumps(header, separators=(",", ":"))
    text += " " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text.encode())
        for b in blobs:
            f.write(b)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "examples", "data"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(SEED)

    # One layer of a 12x12-patch encoder, 8 heads of 16: "layer 22 of 24".
    q22, k22 = layer_qk(rng, 12, 8, 16, depth=22 / 23)
    attn22 = softmax_attention(q22, k22).astype(np.float16)
    np.save(os.path.join(args.out, "attention_layer22.npy"), attn22)
    hidden = hidden_states(rng, 12, 64).astype(np.float16)
    q23, k23 = layer_qk(rng, 12, 4, 16, depth=1.0)
    q23 = q23.transpose(1, 0, 2).reshape(145, 64).astype(np.float16)  # 4 heads of 16 -> one 64-wide head
    k23 = k23.transpose(1, 0, 2).reshape(145, 64).astype(np.float16)

    # Every layer of a smaller encoder (8x8 patches, 2 heads).
    stack = np.stack([softmax_attention(*layer_qk(rng, 8, 2, 16, depth=l / 23)) for l in range(24)])
    save_safetensors(os.path.join(args.out, "clip_synthetic.safetensors"), {
        "attentions": stack.astype(np.float16),
        "keys_layer22": k22.astype(np.float16),
        "hidden_layer22": hidden,
        "queries_layer23": q23,
        "keys_layer23": k23,
    })
    # One LLM layer (FastV reads layer K-1 = 1; FitPrune any layer).
    np.save(os.path.join(args.out, "llm_attention_layer1.npy"), llm_attention(rng).astype(np.float16))
    for name in sorted(os.listdir(args.out)):
        print(name, os.path.getsize(os.path.join(args.out, name)), "bytes")


if __name__ == "__main__":
    main()
