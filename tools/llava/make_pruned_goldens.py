#!/usr/bin/env python3
"""Independent goldens for the runtime's PRUNED forward passes (issue 19).

For each committed tiny checkpoint (tests/data/llava-tiny-{fp32,bf16}, each with its golden image and
prompt) and each method / keep setting the runtime offers, this script applies the method the way its
official code does inside the Hugging Face model and records what the model then computes:

  projector_input  [rows, D]   the vision rows handed to multi_modal_projector (gathered, merged or pooled)
  logits_last      [vocab]     logits at the last prompt position after the (pruned) prefill
  decode_logits    [2, vocab]  logits of the first two KV-cache decode steps (greedy tokens 1 and 2 fed
                               at positions L and L+1, L = the prompt length before any in-LLM drop)
  pruned.json                  per case: method, keep, kept patch indices, greedy tokens (8), the prompt
                               length, the rows going on after each LLM layer, FitPrune's per-layer drops

Written independently of the C++ runtime and library. What comes from where:
  * fopru, freepruner, random, uniform: the kept indices are the library's (read from the built `llava
    --json`; they are checked against the library elsewhere); the gather and everything after is here.
  * prumerge, prumerge+, visionzip, pool, fastv, fitprune, divprune, vispruner, dart: the selection is
    computed here too, from the transformers model's own tensors (hooks on q_proj / k_proj, eager
    attention probabilities, the per-layer KV cache), following the official code (LLaVA-PruMerge
    clip_encoder.py token_prune_merge_advanced(_plus), VisionZip's CLIP forward, FastV's inplace prefill
    drop, FitPrune's per-layer drop) or, for DivPrune, VisPruner and DART, the formulas of
    docs/{divprune,vispruner,dart}.md (float64 here, written from those pages, not from tokensel's code),
    and the kept indices are then
    compared with the runtime's `kept`: any difference is printed and the script exits non-zero (a
    disagreement is a finding, not something to paper over).
  * Merge / pooling / projector / sequence building / decoder layers / RoPE at the survivors' original
    position ids / per-layer KV caches / greedy decoding: here, with transformers' modules
    (LlamaDecoderLayer, rotary_emb, DynamicCache, lm_head).

In-LLM drops (FastV at K, FitPrune at each recipe layer): the layer runs on the current rows with a
causal mask; rows are dropped after it (its KV cache keeps them: DynamicCache was updated by the layer),
later layers see only the survivors, whose position ids stay the original ones. Decoding attends to each
layer's own cache (the KV-cache variant of the spec) and continues at position L.

Usage (versions as tools/llava/README.md; build the runtime first):
    python3 tools/llava/make_pruned_goldens.py --root . --llava build/examples/llava/llava
Writes tests/data/llava-tiny-{fp32,bf16}/pruned.{safetensors,json}; prints a summary and the data size.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from transformers import DynamicCache, LlavaForConditionalGeneration

VARIANTS = {
    # name: (CLI flags reproducing the golden prompt / image of golden.json)
    "fp32": {"image": "shapes.png", "template": "llava-hf", "pad": True},
    "bf16": {"image": "scene.jpg", "template": "vicuna", "pad": False},
}
DECODE_STEPS = 2   # decode-step logits stored per case
GREEDY = 8
FASTV_K = 2        # runtime default --fastv-layer
MISMATCHES = []    # runtime kept indices that differ from the reference's selection


def cases():
    """(method, keep) pairs: every method the runtime offers at 0.5 and 0.25 (pool: 0.25 only), adaptive
    where adaptive."""
    out = []
    for m in ("fopru", "random", "uniform", "pool", "visionzip", "fastv", "fitprune", "divprune", "vispruner",
              "dart"):
        # pool keeps whole windows (8x8 grid: 64, 16, 9, ... tokens): 0.5 is refused (test_llava_cli)
        out += [(m, "0.5"), (m, "0.25")] if m != "pool" else [(m, "0.25")]
    out += [("freepruner", ""), ("freepruner", "0.5"), ("freepruner", "0.25")]
    out += [("prumerge", ""), ("prumerge+", "")]
    out += [("visionzip", "")]   # the default 54 + 10 split (here 53 patches + CLS, 10 contextual)
    return out


def case_name(method, keep):
    return f"{method}.{keep if keep else 'adaptive' if method != 'visionzip' else 'default'}"


def tokens_for(keep, n):
    """The runtime's keep_spec::tokens: ratio -> max(1, floor(n * ratio)); count -> count."""
    if "." in keep:
        return max(1, int(np.floor(n * float(keep))))
    return int(keep)


def divprune_tokens(keep, n):
    """DivPrune's ratio rule: Python's round (half to even) of n * ratio, at least 1; count -> count."""
    if "." in keep:
        return min(n, max(1, int(round(n * float(keep)))))
    return int(keep)


# ------------------------------------------------------------------------------------------- runtime
def runtime_json(llava, model_dir, images_dir, spec, question, method, keep):
    cmd = [llava, "--model", model_dir, "--image", os.path.join(images_dir, spec["image"]), "--prompt", question,
           "--template", spec["template"], "--method", method, "--max-new-tokens", str(GREEDY), "--json"]
    if keep:
        cmd += ["--keep", keep]
    if not spec["pad"]:
        cmd.append("--no-pad")
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


# ------------------------------------------------------------------------------------------- vision
def vision_pass(model, pv):
    """CLIP with hooks: hidden states, attentions, raw q_proj / k_proj outputs (bias included) per layer."""
    vt = model.model.vision_tower
    qk, hooks = {}, []
    for li, layer in enumerate(vt.encoder.layers):
        for which in ("q_proj", "k_proj"):
            def hook(mod, inp, out, li=li, which=which):
                qk[(li, which)] = out[0].detach().clone()
            hooks.append(getattr(layer.self_attn, which).register_forward_hook(hook))
    out = vt(pv, output_hidden_states=True, output_attentions=True, return_dict=True)
    for h in hooks:
        h.remove()
    return out, qk


def iqr_outlier_count(x):
    """LLaVA-PruMerge's outlier_dectection: numpy percentiles (linear), fence Q3 + 1.5 IQR, strict >."""
    a = x.astype(np.float32).flatten()
    q1, q3 = np.percentile(a, 25), np.percentile(a, 75)
    return int(np.sum(a > q3 + 1.5 * (q3 - q1)))


def prumerge(feat, q_last, k_last, plus):
    """LLaVA-PruMerge token_prune_merge_advanced(_plus), adaptive branch, batch 1, as the official code:
    rows in the official order (top-Kc by descending CLS attention, then the stride grid ascending), each
    kept row plus its 32 nearest others by key cosine weighted by their CLS attention, then the extra row."""
    n, C = feat.shape                                   # patches (CLS dropped), feature width
    attn = torch.softmax((q_last @ k_last.T) * C ** -0.5, dim=-1)
    cls_attn = attn[0, 1:]
    kc = iqr_outlier_count(cls_attn.numpy())
    ratio = kc / n
    idx = torch.topk(cls_attn, int(n * ratio), largest=True, sorted=True).indices
    if plus and kc > 0:
        step = int(1 / ratio)
        stride = max(1, int(step / 3))
        grid = [g for g in range(0, n - 1, stride) if g not in set(idx.tolist())]
        idx = torch.cat([idx, torch.tensor(grid, dtype=idx.dtype)])
    order = idx.tolist()
    keys = k_last[1:]
    compl = sorted(set(range(n)) - set(order))
    x_kept, a_kept = feat[order], cls_attn[order]
    x_rest_all, a_rest_all = feat[compl], cls_attn[compl]
    kn = torch.nn.functional.normalize(keys[order], p=2, dim=-1)
    cn = torch.nn.functional.normalize(keys[compl], p=2, dim=-1)
    rows = []
    for i in range(len(order)):
        others = [j for j in range(len(order)) if j != i]
        rest_k = torch.cat([kn[others], cn])
        rest_x = torch.cat([x_kept[others], x_rest_all])
        rest_a = torch.cat([a_kept[others], a_rest_all])
        cos = rest_k @ kn[i]
        nn_idx = torch.topk(cos, min(32, cos.numel()), largest=True).indices
        rows.append(x_kept[i] + (rest_x[nn_idx] * rest_a[nn_idx, None]).sum(0))
    rows.append((x_rest_all * a_rest_all[:, None]).sum(0))
    return torch.stack(rows), sorted(order)


def visionzip(hidden, attn, keys_heads, dominant, contextual):
    """VisionZip (dvlab-research) for LLaVA-1.5: hidden = hidden_states[-2] with CLS [N, D]; attn = that
    layer's probabilities [H, N, N]; keys_heads = its raw k_proj output per head [H, N, hd]."""
    N = hidden.shape[0]
    cls_sum = attn[:, 0, 1:].sum(0)
    top = torch.topk(cls_sum, dominant - 1).indices + 1
    keep_mask = torch.zeros(N, dtype=torch.bool)
    keep_mask[0] = True
    keep_mask[top] = True
    dominant_rows = hidden[keep_mask]                   # CLS first, then ascending
    rest = (~keep_mask).nonzero().flatten()
    metric = keys_heads.mean(0)[rest]
    metric = metric / metric.norm(dim=-1, keepdim=True)
    R = rest.numel()
    step = max(1, R // contextual)
    targets = torch.arange(0, R, step)[:contextual]
    is_target = torch.zeros(R, dtype=torch.bool)
    is_target[targets] = True
    to_merge = (~is_target).nonzero().flatten()
    sim = metric[to_merge] @ metric[targets].T
    assign = sim.argmax(dim=1)
    hid_rest = hidden[rest]
    ctx = []
    for t in range(targets.numel()):
        members = to_merge[assign == t]
        agg = hid_rest[members].sum(0) / max(1, members.numel()) if members.numel() else torch.zeros_like(hid_rest[0])
        ctx.append(hid_rest[targets[t]] + agg)
    rows = torch.cat([dominant_rows, torch.stack(ctx)])
    kept = sorted(set((top - 1).tolist()) | set((rest[targets] - 1).tolist()))
    return rows, kept


def unit_rows(x):
    """Rows scaled to unit L2 norm (float64); a zero row stays zero (cosine 0 with everything)."""
    x = x.double()
    norm = x.norm(dim=-1, keepdim=True)
    return torch.where(norm > 0, x / torch.where(norm > 0, norm, torch.ones_like(norm)), torch.zeros_like(x))


def divprune(proj, k):
    """DivPrune (docs/divprune.md): greedy max-min diversity over d = 1 - cos of the PROJECTED features.
    First: argmax_j min_{i != j} d(i, j); then argmax over the rest of the distance to the kept set.
    Ties: lowest index (torch.argmax's first maximum)."""
    u = unit_rows(proj)
    n = u.shape[0]
    d = 1.0 - u @ u.T
    if n == 1:
        return [0]
    off = d.clone()
    off.fill_diagonal_(float("inf"))
    kept = [int(torch.argmax(off.min(dim=0).values))]
    nearest = d[kept[0]].clone()
    while len(kept) < k:
        cand = nearest.clone()
        cand[kept] = -float("inf")
        j = int(torch.argmax(cand))
        kept.append(j)
        nearest = torch.minimum(nearest, d[j])
    return sorted(kept)


def vispruner(attn, feat, T, important_ratio=0.5, per_round=8):
    """VisPruner (docs/vispruner.md): attn = the feature layer's probabilities [H, N, N] (CLS at 0), feat =
    its patch features [n, D]. Important: the T_imp = int(T * important_ratio) patches of highest head-mean
    CLS attention; diverse: the rest, ranked by that attention, lose duplicates round by round (even list
    positions a scored by their highest cosine to any odd-position b token, the min(8, R - T_div) highest
    dropped, the list becomes the other a tokens by descending score, then b) until T_div remain."""
    s = attn[:, 0, 1:].double().mean(0).tolist()
    n = len(s)
    ranked = sorted(range(n), key=lambda j: (-s[j], j))
    t_imp = int(T * important_ratio)
    t_div = T - t_imp
    important, rest = ranked[:t_imp], ranked[t_imp:]
    u = unit_rows(feat)
    if t_div == 0:
        rest = []
    while len(rest) > t_div:
        a, b = rest[0::2], rest[1::2]
        score = (u[a] @ u[b].T).max(dim=1).values.tolist()
        r = min(per_round, len(rest) - t_div, len(a))
        by_score = sorted(range(len(a)), key=lambda i: (-score[i], i))
        rest = [a[i] for i in by_score[r:]] + b
    return sorted(important + rest)


def dart(keys, hidden, weight, s0, n, k, image_pivots=4, text_pivots=4):
    """DART (docs/dart.md) after layer K-1: keys = that layer's post-RoPE keys [KV, L, hd], hidden = the
    states leaving it [L, D], weight = the final RMSNorm weight. Pivots: the image_pivots visual and the
    text_pivots text tokens (after the visual span) of largest key L1 norm; pivot by pivot (ascending
    position) each takes its quota of the pool's LOWEST-cosine tokens (hidden * weight, unit rows); the
    k - image pivots tokens are split evenly, the first pivots one more. Ties: lower index."""
    L = hidden.shape[0]
    m = L - (s0 + n)
    a = keys.double().abs().sum(dim=(0, 2)).tolist()
    pi, pt = min(image_pivots, k), min(text_pivots, m)
    img = sorted(sorted(range(n), key=lambda j: (-a[s0 + j], j))[:pi])
    txt = sorted(sorted(range(m), key=lambda j: (-a[s0 + n + j], j))[:pt])
    pivots = [s0 + j for j in img] + [s0 + n + j for j in txt]
    u = unit_rows(hidden.double() * weight.double())
    pool = [j for j in range(n) if j not in img]
    extra, P = k - pi, len(pivots)
    kept = list(img)
    for q, pos in enumerate(pivots):
        quota = extra // P + (1 if q < extra % P else 0)
        if quota == 0:
            continue
        sim = (u[[s0 + j for j in pool]] @ u[pos]).tolist()
        take = set(sorted(range(len(pool)), key=lambda c: (sim[c], c))[:quota])
        kept += [pool[c] for c in sorted(take)]
        pool = [pool[c] for c in range(len(pool)) if c not in take]
    return sorted(kept)


# ---------------------------------------------------------------------------------------------- LLM
def causal_mask(n, dtype):
    return torch.full((n, n), torch.finfo(dtype).min, dtype=dtype).triu(1)[None, None]


def llm_prefill(model, embeds, s0, n_vis, drop=None, drop_end=None):
    """Decoder layers over [L, D] embeddings at positions 0..L-1 with per-layer drops.
    drop(layer, probs[H, Lc, Lc], vis_begin, vis_count) -> local visual indices to keep (ascending) or None;
    drop_end(layer, hidden[Lc, D] leaving it, its keys after RoPE [KV, Lc, hd], vis_begin, vis_count): the
    same at the end of the layer (DART).
    Returns logits of the last row, the cache, the original rows reaching the end, rows after each layer."""
    lm = model.model.language_model
    x = embeds[None]
    L = x.shape[1]
    pos = torch.arange(L)
    rows = torch.arange(L)
    cache = DynamicCache(config=lm.config)
    layer_rows, vis = [], n_vis
    for l, layer in enumerate(lm.layers):
        got = {}
        h = layer.self_attn.register_forward_hook(lambda m, i, o: got.__setitem__("p", o[1]))
        cos, sin = lm.rotary_emb(x, pos[None])
        x = layer(x, attention_mask=causal_mask(x.shape[1], x.dtype), position_ids=pos[None],
                  past_key_values=cache, use_cache=True, position_embeddings=(cos, sin))
        h.remove()
        keep_vis = None
        if drop is not None:
            keep_vis = drop(l, got["p"][0], s0, vis)
        if drop_end is not None:
            keep_vis = drop_end(l, x[0], cache.layers[l].keys[0], s0, vis)
        if keep_vis is not None:
            Lc = x.shape[1]
            keep = list(range(s0)) + [s0 + j for j in keep_vis] + list(range(s0 + vis, Lc))
            keep = torch.tensor(keep)
            x, pos, rows = x[:, keep], pos[keep], rows[keep]
            vis = len(keep_vis)
        layer_rows.append(x.shape[1])
    logits = model.lm_head(lm.norm(x))[0, -1]
    return logits, cache, rows, layer_rows


def llm_decode(model, cache, token, position):
    lm = model.model.language_model
    x = lm.embed_tokens(torch.tensor([[token]]))
    pos = torch.tensor([[position]])
    cos, sin = lm.rotary_emb(x, pos)
    for layer in lm.layers:
        x = layer(x, attention_mask=None, position_ids=pos, past_key_values=cache, use_cache=True,
                  position_embeddings=(cos, sin))
    return model.lm_head(lm.norm(x))[0, -1]


def greedy(model, logits, cache, L):
    toks, steps = [], []
    for t in range(GREEDY):
        tok = int(torch.argmax(logits))
        toks.append(tok)
        if t + 1 == GREEDY:
            break
        logits = llm_decode(model, cache, tok, L + t)
        if len(steps) < DECODE_STEPS:
            steps.append(logits.clone())
    return toks, torch.stack(steps)


def fastv_drop(keep_ratio):
    """FastV at K: layer K-1's probabilities, head mean, last query row, visual columns; keep
    round(n (1 - R)) with R = 1 - keep ratio, highest first (the runtime: R = 1 - ratio)."""
    def f(l, p, s0, vis):
        if l != FASTV_K - 1:
            return None
        R = 1.0 - float(keep_ratio)
        k = int(round(vis * (1.0 - R)))
        score = p.mean(0)[-1, s0:s0 + vis]
        return sorted(torch.topk(score, k).indices.tolist())
    return f


def fitprune_drop(drops, log):
    """FitPrune at layer l with drops[l] > 0: M = max over heads of that layer's probabilities;
    a_c[j] = sum over text rows (after the visual span) of M[i, s0+j]; a_s[j] = mean over visual rows of
    M[s0+i, s0+j]; drop the drops[l] smallest a_c * a_s (ties: lower index dropped first)."""
    def f(l, p, s0, vis):
        k = min(drops[l], vis)
        if k <= 0:
            return None
        M = p.max(dim=0).values.double()
        a_c = M[s0 + vis:, s0:s0 + vis].sum(0)
        a_s = M[s0:s0 + vis, s0:s0 + vis].sum(0) / vis
        score = (a_c * a_s).tolist()
        order = sorted(range(vis), key=lambda j: (score[j], j))
        dropped = set(order[:k])
        log.append({"layer": l, "dropped_local": sorted(dropped)})
        return [j for j in range(vis) if j not in dropped]
    return f


def dart_drop(keep, weight, K=2):
    """DART at the end of layer K-1 (the runtime's default K = 2), keep = max(1, floor(n * ratio))."""
    def f(l, hidden, keys, s0, vis):
        if l != K - 1:
            return None
        return dart(keys, hidden, weight, s0, vis, tokens_for(keep, vis))
    return f


def fitprune_recipe(n, keep, layers):
    """The runtime's synthetic recipe for --keep: n - keep drops spread over the first half of the layers
    (earlier layers get the remainder); drops_at scales by n / n_fit = 1 here."""
    total = n - tokens_for(keep, n)
    m = max(1, layers // 2)
    return [total // m + (1 if l < total % m else 0) if l < m else 0 for l in range(layers)]


# ---------------------------------------------------------------------------------------------- main
def make_variant(root, name, llava):
    d = os.path.join(root, "tests", "data", f"llava-tiny-{name}")
    images = os.path.join(root, "tests", "data", "llava-images")
    spec = VARIANTS[name]
    g = json.load(open(os.path.join(d, "golden.json")))
    gt = load_file(os.path.join(d, "golden.safetensors"))
    model = LlavaForConditionalGeneration.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    cfg = model.config
    pv = torch.from_numpy(gt[g["pixel_values_key"]])[None]
    ids = g["input_ids"]
    s0 = g["image_token_position"]
    prefix, text = ids[:s0], ids[s0 + 1:]
    vc = cfg.vision_config
    heads, hd = vc.num_attention_heads, vc.hidden_size // vc.num_attention_heads
    nlayers = len(model.model.vision_tower.encoder.layers)
    f = nlayers + cfg.vision_feature_layer if cfg.vision_feature_layer < 0 else cfg.vision_feature_layer - 1

    tensors, meta = {}, {"variant": name, "image": spec["image"], "template": spec["template"],
                         "pad_to_square": spec["pad"], "question": g["question"], "input_ids": ids,
                         "image_token_position": s0, "fastv_layer": FASTV_K, "decode_steps": DECODE_STEPS,
                         "generator": "tools/llava/make_pruned_goldens.py",
                         "versions": {"torch": torch.__version__,
                                      "transformers": __import__("transformers").__version__,
                                      "numpy": np.__version__, "python": sys.version.split()[0]},
                         "cases": {}}
    with torch.no_grad():
        vout, qk = vision_pass(model, pv)
        hs = vout.hidden_states
        feature = hs[cfg.vision_feature_layer][0]           # [N, D], CLS in row 0
        feat = feature[1:]                                  # [n, D]
        n, D = feat.shape
        G = int(round(n ** 0.5))
        assert np.abs(feature.numpy() - gt["clip.feature"]).max() <= 1e-6 * np.abs(gt["clip.feature"]).max()
        lm = model.model.language_model
        emb = lambda t: lm.embed_tokens(torch.tensor(t, dtype=torch.long)) if t else torch.zeros(0, cfg.text_config.hidden_size)

        def sequence(rows):
            return torch.cat([emb(prefix), model.model.multi_modal_projector(rows), emb(text)])

        # The loop reproduces the unpruned golden (same sequence, logits, greedy tokens).
        logits, cache, _, _ = llm_prefill(model, sequence(feat), s0, n)
        assert float((logits - torch.from_numpy(gt["llm.logits_last"])).abs().max()) < 1e-4
        L0 = s0 + n + len(text)
        assert greedy(model, logits, cache, L0)[0] == g["greedy_tokens"]

        for method, keep in cases():
            cname = case_name(method, keep)
            rt = runtime_json(llava, d, images, spec, g["question"], method, keep)
            assert rt["input_ids"] == ids, (name, cname, "runtime prompt ids differ from the golden's")
            drop, drop_end, fit_log, recipe = None, None, [], None
            if method in ("fopru", "freepruner", "random", "uniform"):
                kept = rt["kept"]                           # the library's choice
                rows = feat[kept]
            elif method == "pool":
                k = tokens_for(keep, n)
                w = max(1, int(np.floor(np.sqrt(n / k) + 0.5)))
                rows = feat.reshape(G // w, w, G // w, w, D).mean(dim=(1, 3)).reshape(-1, D)
                kept = [r * w * G + c * w for r in range(G // w) for c in range(G // w)]
            elif method == "divprune":
                kept = divprune(model.model.multi_modal_projector(feat), divprune_tokens(keep, n))
                rows = feat[kept]
            elif method == "vispruner":
                kept = vispruner(vout.attentions[f][0], feat, tokens_for(keep, n))
                rows = feat[kept]
            elif method == "dart":
                rows = feat
                drop_end = dart_drop(keep, lm.norm.weight)
            elif method in ("prumerge", "prumerge+"):
                rows, kept = prumerge(feat, qk[(nlayers - 1, "q_proj")], qk[(nlayers - 1, "k_proj")],
                                      method == "prumerge+")
            elif method == "visionzip":
                if keep:
                    k = tokens_for(keep, n)
                    contextual = k * 10 // 64
                    dominant = k - contextual
                else:
                    dominant, contextual = 54, 10
                keys_heads = qk[(f, "k_proj")].view(-1, heads, hd).transpose(0, 1)
                rows, kept = visionzip(feature, vout.attentions[f][0], keys_heads, dominant, contextual)
            else:
                rows = feat
                if method == "fastv":
                    drop = fastv_drop(keep)
                else:
                    recipe = fitprune_recipe(n, keep, cfg.text_config.num_hidden_layers)
                    drop = fitprune_drop(recipe, fit_log)
            seq = sequence(rows)
            L = seq.shape[0]
            logits, cache, final_rows, layer_rows = llm_prefill(model, seq, s0, rows.shape[0], drop, drop_end)
            if drop is not None or drop_end is not None:
                kept = [int(r) - s0 for r in final_rows if s0 <= r < s0 + n]
            toks, steps = greedy(model, logits, cache, L)
            if rt["kept"] != kept:
                MISMATCHES.append((name, cname, rt["kept"], kept))
                print(f"KEPT MISMATCH {name} {cname}: runtime {rt['kept']} reference {kept}")
            tensors[f"{cname}.projector_input"] = rows.numpy().astype(np.float32)
            tensors[f"{cname}.logits_last"] = logits.numpy().astype(np.float32)
            tensors[f"{cname}.decode_logits"] = steps.numpy().astype(np.float32)
            top2 = torch.topk(logits, 2).values
            c = {"method": method, "keep": keep, "kept": kept, "rows": int(rows.shape[0]),
                 "sequence_length": L, "final_length": len(final_rows), "layer_rows": layer_rows,
                 "greedy_tokens": toks, "prefill_top2_gap": float(top2[0] - top2[1])}
            if recipe is not None:
                c["fitprune_drops"] = recipe
                c["fitprune_dropped"] = fit_log
            meta["cases"][cname] = c
            same = "same" if rt["answer_ids"] == toks else "DIFFERENT"
            print(f"{name} {cname:22s} rows {rows.shape[0]:2d} L {L:3d} final {len(final_rows):3d} "
                  f"tokens {toks} (runtime answer: {same})")
    save_file(dict(sorted(tensors.items())), os.path.join(d, "pruned.safetensors"),
              metadata={"generator": "tools/llava/make_pruned_goldens.py"})
    with open(os.path.join(d, "pruned.json"), "w") as fh:
        json.dump(meta, fh, indent=1)
        fh.write("\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=".", help="repository root")
    ap.add_argument("--llava", required=True, help="the built llava CLI (kept indices of the library)")
    ap.add_argument("--variants", default="fp32,bf16")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    for v in args.variants.split(","):
        make_variant(args.root, v, args.llava)
    total = 0
    for v in ("fp32", "bf16"):
        for ext in ("safetensors", "json"):
            p = os.path.join(args.root, "tests", "data", f"llava-tiny-{v}", f"pruned.{ext}")
            if os.path.exists(p):
                total += os.path.getsize(p)
    print(f"pruned goldens: {total / 1024:.1f} KiB in total")
    if MISMATCHES:
        sys.exit(f"{len(MISMATCHES)} case(s) where the runtime keeps other tokens than the reference")


if __name__ == "__main__":
    main()
