#!/usr/bin/env python3
"""tokensel inside Hugging Face transformers: prune LLaVA-1.5's image tokens, then generate.

Loads a llava-hf checkpoint with transformers (LlavaForConditionalGeneration, eager attention so the
vision tower returns its attention maps), runs the vision tower once with attentions, selects image
tokens with tokensel (FoPru or VisionZip; `none` keeps all), projects only the kept rows and generates
greedily from the pruned image features. The attention maps, keys and hidden states go to tokensel as
torch tensors, read in place (DLPack, no copy).

    python3 examples/transformers/llava_tokensel.py --model tests/data/llava-tiny-fp32 \
        --image tests/data/llava-images/shapes.png --prompt "What is in the picture?" --method fopru --keep 0.5

Same conventions as examples/llava (`llava --json`): LLaVA's pad-to-square (--no-pad to skip), the
CLIP PIL preprocessing, the prompt templates llava-hf / vicuna, --keep as a ratio ("0.5") or a count
("32"); on the same image, prompt and method the kept indices and the generated tokens agree (test:
python/tests/test_transformers_example.py).
"""
import argparse
import json

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, LlavaForConditionalGeneration

import tokensel

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the user's questions.")


def prompt_text(template, question):
    body = question if "<image>" in question else f"<image>\n{question}"
    if template == "llava-hf":
        return f"USER: {body} ASSISTANT:"
    if template == "vicuna":
        return f"{SYSTEM} USER: {body} ASSISTANT:"
    return body  # raw


def pixel_values(path, size, pad):
    """LLaVA's expand2square (background int(mean * 255)), then CLIP's PIL preprocessing."""
    try:  # transformers 5: the PIL backend of the classic CLIPImageProcessor
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as Processor
    except ImportError:  # transformers 4
        from transformers import CLIPImageProcessor as Processor
    img = Image.open(path).convert("RGB")
    w, h = img.size
    if pad and w != h:
        side = max(w, h)
        square = Image.new("RGB", (side, side), tuple(int(m * 255) for m in CLIP_MEAN))
        square.paste(img, ((side - w) // 2, (side - h) // 2))
        img = square
    proc = Processor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                     image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    return torch.from_numpy(np.asarray(proc(images=img, return_tensors="np")["pixel_values"], dtype=np.float32))


def parse_keep(keep):
    if keep is None:
        return None
    return float(keep) if "." in keep else int(keep)


def vision_features(model, pv, want_keys):
    """Feature layer's hidden states [N, D] (CLS first), attention [heads, N, N] and keys [heads, N, d]."""
    cfg = model.config
    tower = model.model.vision_tower
    layers = tower.encoder.layers if hasattr(tower, "encoder") else tower.vision_model.encoder.layers
    f = cfg.vision_feature_layer if cfg.vision_feature_layer >= 0 else len(layers) + cfg.vision_feature_layer
    # hidden_states[i] is the output of layer i - 1, so hidden_states[feature_layer] comes out of layer f.
    got = {}
    hook = layers[f].self_attn.k_proj.register_forward_hook(lambda m, i, o: got.__setitem__("k", o)) if want_keys else None
    out = tower(pv, output_hidden_states=True, output_attentions=True, return_dict=True)
    if hook is not None:
        hook.remove()
    hidden = out.hidden_states[cfg.vision_feature_layer][0]
    attn = out.attentions[f][0]
    keys = None
    if want_keys:
        heads = cfg.vision_config.num_attention_heads
        k = got["k"][0]  # [N, D]
        keys = k.view(k.shape[0], heads, -1).transpose(0, 1)  # [heads, N, head_dim], a strided view
    return hidden, attn, keys


def select_rows(method, keep, hidden, attn, keys):
    """The image rows handed to the projector and the kept patch indices (ascending)."""
    patches = hidden[1:]
    if method == "none":
        return patches, list(range(patches.shape[0]))
    if method == "fopru":
        kept = tokensel.fopru.select(attn, keep=keep)  # attn: a torch tensor, read in place
        return patches[torch.from_numpy(kept).long()], kept.tolist()
    if method == "visionzip":
        cfg = tokensel.visionzip.config() if keep is None else None
        idx, rows = tokensel.visionzip.select(attn, keys, hidden, cfg, keep=keep)
        kept = sorted(int(i) - 1 for i in idx if i != 0)  # full-sequence indices (CLS = 0) -> patches
        return torch.from_numpy(rows).to(hidden.dtype), kept
    raise SystemExit(f"unknown method {method!r} (fopru, visionzip, none)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="llava-hf checkpoint directory")
    ap.add_argument("--image", required=True)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--template", default="llava-hf", choices=["llava-hf", "vicuna", "raw"])
    ap.add_argument("--no-pad", action="store_true", help="skip LLaVA's pad-to-square")
    ap.add_argument("--method", default="fopru", choices=["fopru", "visionzip", "none"])
    ap.add_argument("--keep", help="a ratio (0.5) or a token count (32); default: the method's")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()

    torch.manual_seed(0)
    model = LlavaForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(args.model)
    cfg = model.config
    prompt = prompt_text(args.template, args.prompt)
    ids = tok(prompt).input_ids
    s0 = ids.index(cfg.image_token_index)
    keep = parse_keep(args.keep)

    with torch.no_grad():
        pv = pixel_values(args.image, cfg.vision_config.image_size, not args.no_pad)
        hidden, attn, keys = vision_features(model, pv, args.method == "visionzip")
        rows, kept = select_rows(args.method, keep, hidden, attn, keys)
        embed = model.get_input_embeddings()
        image = model.model.multi_modal_projector(rows)
        seq = torch.cat([embed(torch.tensor(ids[:s0])), image, embed(torch.tensor(ids[s0 + 1:]))])[None]
        out = model.generate(inputs_embeds=seq, attention_mask=torch.ones(seq.shape[:2], dtype=torch.long),
                             max_new_tokens=args.max_new_tokens, do_sample=False, num_beams=1)
    answer_ids = out[0].tolist()[-args.max_new_tokens:] if out.shape[1] > args.max_new_tokens else out[0].tolist()
    result = {"method": args.method, "keep": args.keep, "prompt": prompt, "input_ids": ids, "kept": kept,
              "rows": int(rows.shape[0]), "sequence_length": int(seq.shape[1]), "answer_ids": answer_ids,
              "answer": tok.decode(answer_ids, skip_special_tokens=True)}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.method} keep {args.keep}: {len(kept)} of {hidden.shape[0] - 1} patches, {result['rows']} image rows")
        print(result["answer"])


if __name__ == "__main__":
    main()
