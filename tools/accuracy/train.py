#!/usr/bin/env python3
"""Trains the tiny LLaVA-1.5-architecture model of the accuracy evaluation (docs/accuracy.md).

CLIP-style ViT (CLS token, pre-LayerNorm, quick_gelu) -> 2-layer GELU MLP projector -> Llama
decoder, in transformers' LlavaForConditionalGeneration, trained end to end (encoder included) on
the synthetic shapes task of shapes_vqa.py, with the loss on the answer tokens and EOS. The
tokenizer is the project's tiny SentencePiece one (tests/data/llava-tiny-fp32). The result is a
llava-hf checkpoint the C++ runtime reads (config.json, model.safetensors, tokenizer files,
preprocessor_config.json) plus learning_curve.json.

Deterministic: fixed seeds, a fixed step count, fixed thread count (--threads; the committed
checkpoint says which it used), the data stream drawn from numpy's SeedSequence.

    python3 tools/accuracy/train.py --out DIR [--steps N] [--threads 2]
"""
import argparse
import json
import math
import os
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file
from transformers import AutoTokenizer, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "llava"))
import make_tiny_llava as tiny  # noqa: E402  (the tokenizer's ids, CLIP normalisation, checkpoint names)
import shapes_vqa  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TOKENIZER_DIR = os.path.join(ROOT, "tests", "data", "llava-tiny-fp32")
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
IMAGE_TOKEN, PAD_TOKEN, VOCAB = tiny.IMAGE_TOKEN, tiny.PAD_TOKEN, tiny.VOCAB  # the copied tokenizer's
CLIP_MEAN, CLIP_STD = tiny.CLIP_MEAN, tiny.CLIP_STD
PATCH = 8
NUM_PATCHES = (shapes_vqa.SIZE // PATCH) ** 2
SEED = 20261206


def model_config(a):
    vision = CLIPVisionConfig(hidden_size=a.vision_hidden, intermediate_size=4 * a.vision_hidden,
                              num_hidden_layers=a.vision_layers, num_attention_heads=a.heads,
                              image_size=shapes_vqa.SIZE, patch_size=PATCH, projection_dim=a.vision_hidden,
                              hidden_act="quick_gelu", layer_norm_eps=1e-5, num_channels=3)
    text = LlamaConfig(vocab_size=VOCAB, hidden_size=a.text_hidden, intermediate_size=3 * a.text_hidden,
                       num_hidden_layers=a.text_layers, num_attention_heads=a.heads, num_key_value_heads=a.heads,
                       hidden_act="silu", max_position_embeddings=2048, rms_norm_eps=1e-6,
                       tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                       bos_token_id=1, eos_token_id=2, pad_token_id=PAD_TOKEN)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN,
                      projector_hidden_act="gelu", vision_feature_layer=-2, vision_feature_select_strategy="default",
                      image_seq_length=NUM_PATCHES, tie_word_embeddings=False)
    cfg.pad_token_id = PAD_TOKEN
    return cfg


def pixels(img):
    """CLIP preprocessing of an image already at the model's size (the resize and crop are identities)."""
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


class Encoder:
    """Prompt and answer ids as the runtime forms them (llava-hf template, <image> expanded)."""

    def __init__(self, tok):
        self.tok = tok
        self.cache = {}

    def prompt(self, question):
        return f"USER: <image>\n{question} ASSISTANT:"

    def __call__(self, question, answer):
        key = (question, answer)
        if key not in self.cache:
            p = self.tok(self.prompt(question)).input_ids
            full = self.tok(self.prompt(question) + " " + answer).input_ids
            assert full[:len(p)] == p and len(full) > len(p), (question, answer, p, full)
            answer_ids = full[len(p):] + [self.tok.eos_token_id]
            i = p.index(IMAGE_TOKEN)
            self.cache[key] = (p[:i] + [IMAGE_TOKEN] * NUM_PATCHES + p[i + 1:], answer_ids)
        return self.cache[key]


def batch_tensors(enc, items):
    """items: [(pixel tensor, question, answer)] -> pixel batch, ids, mask, (row, col) of targets, targets."""
    seqs = [enc(q, a) for _, q, a in items]
    length = max(len(p) + len(t) - 1 for p, t in seqs)
    ids = torch.full((len(items), length), PAD_TOKEN, dtype=torch.long)
    mask = torch.zeros((len(items), length), dtype=torch.long)
    rows, cols, targets = [], [], []
    for b, (p, t) in enumerate(seqs):
        s = p + t[:-1]  # the last target (EOS) is predicted, never fed
        ids[b, :len(s)] = torch.tensor(s)
        mask[b, :len(s)] = 1
        for j, tgt in enumerate(t):
            rows.append(b)
            cols.append(len(p) - 1 + j)
            targets.append(tgt)
    pv = torch.stack([x for x, _, _ in items])
    return pv, ids, mask, torch.tensor(rows), torch.tensor(cols), torch.tensor(targets)


def image_features(model, pv):
    """Projected patch features (vision_feature_layer -2, CLS dropped) and that layer's patch states."""
    vis = model.model.vision_tower(pv, output_hidden_states=True)
    states = vis.hidden_states[-2][:, 1:]
    return model.model.multi_modal_projector(states), states


def forward_logits(model, pv, ids, mask, rows, cols):
    """Logits at the answer positions only (the LM head on every position would cost more than the
    rest), and the feature layer's patch states (for the auxiliary loss)."""
    feats, states = image_features(model, pv)
    feats = feats.reshape(-1, feats.shape[-1])
    emb = model.model.language_model.embed_tokens(ids.clamp(max=VOCAB - 1))
    image_pos = (ids == IMAGE_TOKEN).unsqueeze(-1).expand_as(emb)
    emb = emb.masked_scatter(image_pos, feats.to(emb.dtype))
    h = model.model.language_model(inputs_embeds=emb, attention_mask=mask).last_hidden_state
    return model.lm_head(h[rows, cols]), states


def patch_labels(label_map):
    """Per patch: the label covering most of its pixels when it covers >= 1/4 of them, else 0."""
    g = shapes_vqa.SIZE // PATCH
    blocks = label_map.reshape(g, PATCH, g, PATCH).transpose(0, 2, 1, 3).reshape(g * g, PATCH * PATCH)
    counts = np.stack([(blocks == v).sum(1) for v in range(int(label_map.max()) + 1)], 1)
    counts[:, 0] = 0
    best = counts.argmax(1)
    best[counts.max(1) < PATCH * PATCH // 4] = 0
    return torch.from_numpy(best.astype(np.int64))


def stream(split, rng_worker=0, type_weights=None):
    """Training samples: (type, pixels, question, answer, patch kind labels, patch colour labels);
    question types drawn with type_weights (default uniform)."""
    rng = shapes_vqa.split_rng(split, rng_worker)
    n = len(shapes_vqa.TYPES)
    if type_weights:
        p = np.array(type_weights, np.float64) / sum(type_weights)
        draw_type = lambda: int(rng.choice(n, p=p))  # noqa: E731
    else:  # rng.integers, not choice with equal weights: phase 1's stream draws exactly this
        draw_type = lambda: int(rng.integers(n))  # noqa: E731
    while True:
        qtype = shapes_vqa.TYPES[draw_type()]
        img, q, a, kinds, colours = shapes_vqa.sample(rng, qtype, labels=True)
        yield qtype, pixels(img), q, a, patch_labels(kinds), patch_labels(colours)


def fixed_set(split, count):
    return [(qtype, pixels(img), q, a) for _, qtype, img, q, a in shapes_vqa.generate(split, count)]


@torch.no_grad()
def evaluate(model, enc, data, batch=64):
    """Exact-match accuracy per type under teacher forcing of the answer (= greedy decoding's answer:
    every answer token and EOS must be the argmax)."""
    model.eval()
    per = {}
    for s in range(0, len(data), batch):
        chunk = data[s:s + batch]
        pv, ids, mask, rows, cols, tg = batch_tensors(enc, [(x, q, a) for _, x, q, a in chunk])
        ok = (forward_logits(model, pv, ids, mask, rows, cols)[0].argmax(-1) == tg)
        for b, (qtype, _, _, _) in enumerate(chunk):
            good = bool(ok[rows == b].all())
            n, c = per.get(qtype, (0, 0))
            per[qtype] = (n + 1, c + good)
    model.train()
    tot_n = sum(n for n, _ in per.values())
    tot_c = sum(c for _, c in per.values())
    return {"overall": tot_c / tot_n, **{k: c / n for k, (n, c) in sorted(per.items())}}


def memory_name(name):
    """The inverse of tiny.name_452 (checkpoint name -> transformers 5's in-memory name)."""
    on_disk = "model.vision_tower.vision_model."
    return "model.vision_tower." + name[len(on_disk):] if name.startswith(on_disk) else name


def save_checkpoint(model, cfg, out, info):
    os.makedirs(out, exist_ok=True)
    state = {tiny.name_452(k): v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    cfg.save_pretrained(out)
    for f in TOKENIZER_FILES:
        shutil.copy(os.path.join(TOKENIZER_DIR, f), os.path.join(out, f))
    with open(os.path.join(out, "preprocessor_config.json"), "w") as f:
        json.dump({"crop_size": {"height": shapes_vqa.SIZE, "width": shapes_vqa.SIZE}, "do_center_crop": True,
                   "do_normalize": True, "do_resize": True, "image_mean": list(CLIP_MEAN),
                   "image_std": list(CLIP_STD), "resample": 3, "size": {"shortest_edge": shapes_vqa.SIZE},
                   "image_processor_type": "CLIPImageProcessor"}, f, indent=2)
    with open(os.path.join(out, "learning_curve.json"), "w") as f:
        json.dump(info, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--val", type=int, default=400)
    ap.add_argument("--vision-hidden", type=int, default=128)
    ap.add_argument("--vision-layers", type=int, default=5)
    ap.add_argument("--text-hidden", type=int, default=128)
    ap.add_argument("--text-layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--aux-weight", type=float, default=1.0)
    ap.add_argument("--aux-columns", action="store_true", help="auxiliary target: each patch's grid column")
    ap.add_argument("--type-weights", default="", help="question-type mix, e.g. 1,1,3,1 (color,count,relation,"
                    "position); default uniform")
    ap.add_argument("--init", default="", help="continue from this checkpoint (phase 2)")
    ap.add_argument("--train-split-worker", type=int, default=0, help="training stream (phase 2 uses 1)")
    ap.add_argument("--bench", type=int, default=0, help="time this many steps and exit")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    # Adam's second moments of small gradients fall into the subnormal range, where x86 arithmetic
    # is ~100x slower: without this a step took 7 s instead of 0.85 s after 250 steps.
    torch.set_flush_denormal(True)
    torch.manual_seed(SEED)
    cfg = model_config(a)
    model = LlavaForConditionalGeneration(cfg)
    if a.init:  # phase 2: continue from phase 1's checkpoint (the auxiliary head starts afresh)
        from safetensors.torch import load_file
        state = load_file(os.path.join(a.init, "model.safetensors"))
        model.load_state_dict({memory_name(k): v for k, v in state.items()}, strict=True)
        with open(os.path.join(a.init, "learning_curve.json")) as f:
            previous = json.load(f)
        torch.manual_seed(SEED + 1)
    else:
        previous = {"phases": [], "curve": [], "train_seconds": 0.0}
    step0, examples0 = (previous["curve"][-1]["step"], previous["curve"][-1]["examples"]) if previous["curve"] else (0, 0)
    model.config._attn_implementation = "sdpa"
    for sub in (model.model.vision_tower, model.model.language_model):
        sub.config._attn_implementation = "sdpa"
    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    enc = Encoder(tok)
    # Auxiliary dense supervision of the encoder (not saved): each patch's shape kind and colour from
    # the feature layer's states. It only speeds up learning what the answers need.
    # --aux-columns adds each patch's grid column (position information the left-of answers need).
    grid = shapes_vqa.SIZE // PATCH
    aux = torch.nn.Linear(a.vision_hidden, 1 + len(shapes_vqa.SHAPES) + 1 + len(shapes_vqa.COLOURS) +
                          (grid if a.aux_columns else 0))
    params = sum(p.numel() for p in model.parameters())
    print(f"parameters {params / 1e6:.2f} M, image tokens {NUM_PATCHES}", flush=True)

    named = list(model.named_parameters()) + [("aux." + n, p) for n, p in aux.named_parameters()]
    decay = [p for n, p in named if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in named if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.98), eps=1e-8)
    warmup = max(1, a.steps // 30)

    def lr_at(step):
        if step < warmup:
            return a.lr * (step + 1) / warmup
        return a.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, a.steps - warmup))) + a.lr * 0.02

    with torch.no_grad():  # image_features is transformers' get_image_features (layer -2, CLS dropped)
        probe = torch.randn(2, 3, shapes_vqa.SIZE, shapes_vqa.SIZE)
        ref = model.model.get_image_features(pixel_values=probe, vision_feature_layer=-2,
                                             vision_feature_select_strategy="default")
        ref = getattr(ref, "pooler_output", ref)
        ref = torch.stack(list(ref)) if isinstance(ref, (list, tuple)) else ref
        assert torch.equal(ref.reshape(2, NUM_PATCHES, -1), image_features(model, probe)[0]), "feature path"
    data = stream("train", a.train_split_worker,
                  [float(x) for x in a.type_weights.split(",")] if a.type_weights else None)
    val = fixed_set("val", a.val) if not a.bench else []
    curve = []
    t0 = time.time()
    loss_acc, aux_acc, n_acc = 0.0, 0.0, 0
    steps = a.bench or a.steps
    for step in range(steps):
        items = [next(data) for _ in range(a.batch)]
        pv, ids, mask, rows, cols, tg = batch_tensors(enc, [(x, q, ans) for _, x, q, ans, _, _ in items])
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        logits, states = forward_logits(model, pv, ids, mask, rows, cols)
        aux_logits = aux(states)
        nk = 1 + len(shapes_vqa.SHAPES)
        kinds = torch.stack([it[4] for it in items])
        colours = torch.stack([it[5] for it in items])
        nc = 1 + len(shapes_vqa.COLOURS)
        aux_loss = (F.cross_entropy(aux_logits[..., :nk].reshape(-1, nk), kinds.reshape(-1)) +
                    F.cross_entropy(aux_logits[..., nk:nk + nc].reshape(-1, nc), colours.reshape(-1)))
        if a.aux_columns:
            columns = torch.arange(grid * grid).remainder(grid).repeat(len(items))
            aux_loss = aux_loss + F.cross_entropy(aux_logits[..., nk + nc:].reshape(-1, grid), columns)
        answer_loss = F.cross_entropy(logits, tg)
        loss = answer_loss + a.aux_weight * aux_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
        opt.step()
        loss_acc += float(answer_loss.detach())
        aux_acc += float(aux_loss.detach())
        n_acc += 1
        if a.bench:
            print(f"step {step} answer {float(answer_loss):.3f} aux {float(aux_loss):.3f} {time.time() - t0:.1f}s",
                  flush=True)
            continue
        if (step + 1) % a.eval_every == 0 or step + 1 == steps:
            acc = evaluate(model, enc, val)
            rec = {"step": step0 + step + 1, "examples": examples0 + (step + 1) * a.batch, "phase": len(previous["phases"]) + 1, "seconds": round(time.time() - t0, 1),
                   "train_answer_loss": round(loss_acc / n_acc, 4),
                   "train_aux_loss": round(aux_acc / n_acc, 4), "val_accuracy": {k: round(v, 4) for k, v in acc.items()}}
            curve.append(rec)
            loss_acc, aux_acc, n_acc = 0.0, 0.0, 0
            print(json.dumps(rec), flush=True)
    if a.bench:
        print(f"{(time.time() - t0) / steps:.2f} s/step", flush=True)
        return
    seconds = round(time.time() - t0, 1)
    phase = {"args": vars(a), "steps": steps, "seconds": seconds}
    info = {"generator": "tools/accuracy/train.py", "seed": SEED, "parameters": params, "threads": a.threads,
            "batch": a.batch, "train_seconds": round(previous["train_seconds"] + seconds, 1),
            "phases": previous["phases"] + [phase], "curve": previous["curve"] + curve,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "numpy": np.__version__}}
    save_checkpoint(model, cfg, a.out, info)


if __name__ == "__main__":
    main()
