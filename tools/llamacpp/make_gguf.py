#!/usr/bin/env python3
"""GGUF versions of the tiny LLaVA checkpoint, made with llama.cpp's own converters.

    python3 tools/llamacpp/make_gguf.py [--src tests/data/llava-tiny-fp32]
                                        [--out tests/data/llava-tiny-gguf] [--llama-cpp DIR]
                                        [--outtype f32|bf16]

Writes OUT/model-f32.gguf (the Llama text model, convert_hf_to_gguf.py) and
OUT/mmproj-f32.gguf (CLIP up to the feature layer + the MLP projector, the legacy
tools/mtmd/legacy-models/convert_image_encoder_to_gguf.py, --use-f32: llama.cpp still stores the
patch convolution and the projector matrices in f16). --outtype bf16 (for a bf16 checkpoint such
as tests/data/llava-tiny-bf16): OUT/model-bf16.gguf (matrices in bf16, as stored) and
OUT/mmproj-f16.gguf (the legacy converter has no bf16: its default, matrices in f16). llama.cpp's tree defaults to the one
tools/llamacpp/fetch.sh prints. What each converter needs that the HF checkpoint lacks:
  text:   "architectures" in config.json (LlavaForConditionalGeneration);
  mmproj: a CLIPVisionModel folder whose config.json carries vision_feature_layer, and the
          projector as a torch file under its pre-transformers-4.52 names
          (multi_modal_projector.linear_{1,2}.*, without the "model." prefix).
Needs torch, transformers, safetensors, numpy, sentencepiece (the converters import them).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def run(cmd, env):
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)


# transformers >= 5 flattened CLIPVisionModel (no .vision_model, state-dict keys without the
# "vision_model." prefix) while the legacy converter still expects the old module tree: it runs
# with CLIPVisionModel wrapped back into that tree (same weights, the old key names).
SHIM = """
import runpy, sys, torch
from transformers.models.clip import modeling_clip
_load = modeling_clip.CLIPVisionModel.from_pretrained
class _OldTree(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.vision_model = inner
modeling_clip.CLIPVisionModel.from_pretrained = classmethod(lambda cls, path, *a, **k: _OldTree(_load(path, *a, **k)))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def names(outtype):
    """(text model, mmproj) file names for an --outtype."""
    return ("model-f32.gguf", "mmproj-f32.gguf") if outtype == "f32" else ("model-bf16.gguf", "mmproj-f16.gguf")


def text_model(src, out, llama, env, tmp, outtype):
    d = os.path.join(tmp, "text")
    os.makedirs(d)
    cfg = json.load(open(os.path.join(src, "config.json")))
    cfg["architectures"] = ["LlavaForConditionalGeneration"]
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=2)
    for f in os.listdir(src):
        if f.startswith(("model", "tokenizer", "special_tokens")):
            os.symlink(os.path.join(os.path.abspath(src), f), os.path.join(d, f))
    run([sys.executable, os.path.join(llama, "convert_hf_to_gguf.py"), d, "--outtype", outtype,
         "--outfile", os.path.join(out, names(outtype)[0])], env)


def mmproj(src, out, llama, env, tmp, outtype):
    import torch
    from safetensors.torch import load_file, save_file
    d = os.path.join(tmp, "vision")
    os.makedirs(d)
    cfg = json.load(open(os.path.join(src, "config.json")))
    # every key the converter reads, transformers' defaults where config.json leaves one out (not
    # the empty _name_or_path: the converter would name the model "" instead of the folder)
    from transformers import CLIPVisionConfig
    vc = {k: v for k, v in CLIPVisionConfig(**cfg["vision_config"]).to_dict().items() if k != "_name_or_path"}
    vc.update(cfg["vision_config"])
    vc["vision_feature_layer"] = cfg.get("vision_feature_layer", -2)  # LlavaConfig's default
    vc["architectures"] = ["CLIPVisionModel"]
    json.dump(vc, open(os.path.join(d, "config.json"), "w"), indent=2)
    weights = {}
    for f in sorted(os.listdir(src)):
        if f.startswith("model") and f.endswith(".safetensors"):
            weights.update(load_file(os.path.join(src, f)))
    # transformers >= 4.52 names ("model.vision_tower.*") or the older ones ("vision_tower.*")
    weights = {k[len("model."):] if k.startswith("model.") else k: v for k, v in weights.items()}
    tower, proj = "vision_tower.", "multi_modal_projector."
    save_file({k[len(tower):]: v.float().contiguous() for k, v in weights.items() if k.startswith(tower)},
              os.path.join(d, "model.safetensors"))
    projector = {k: v.float() for k, v in weights.items() if k.startswith(proj)}
    torch.save(projector, os.path.join(tmp, "llava.projector"))
    conv = os.path.join(llama, "tools", "mtmd", "legacy-models", "convert_image_encoder_to_gguf.py")
    run([sys.executable, "-c", SHIM, conv, "-m", d, "--clip-model-is-vision", "--llava-projector",
         os.path.join(tmp, "llava.projector"), "--projector-type", "mlp"] + (["--use-f32"] if outtype == "f32" else []) +
        ["-o", tmp], env)
    shutil.move(os.path.join(tmp, "mmproj-model-" + ("f32" if outtype == "f32" else "f16") + ".gguf"),
                os.path.join(out, names(outtype)[1]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", default=os.path.join(ROOT, "tests/data/llava-tiny-fp32"))
    ap.add_argument("--out", default=os.path.join(ROOT, "tests/data/llava-tiny-gguf"))
    ap.add_argument("--llama-cpp", default=None, help="llama.cpp source tree (default: fetch.sh's)")
    ap.add_argument("--force", action="store_true", help="rewrite files that exist")
    ap.add_argument("--outtype", choices=("f32", "bf16"), default="f32", help="f32 (default) or bf16 (a bf16 checkpoint)")
    a = ap.parse_args()
    llama = a.llama_cpp or subprocess.run(["bash", os.path.join(HERE, "fetch.sh")], check=True,
                                          stdout=subprocess.PIPE, text=True).stdout.strip()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(llama, "gguf-py") + os.pathsep + env.get("PYTHONPATH", "")
    os.makedirs(a.out, exist_ok=True)
    text, vision = names(a.outtype)
    with tempfile.TemporaryDirectory() as tmp:
        if a.force or not os.path.exists(os.path.join(a.out, text)):
            text_model(a.src, a.out, llama, env, tmp, a.outtype)
        if a.force or not os.path.exists(os.path.join(a.out, vision)):
            mmproj(a.src, a.out, llama, env, tmp, a.outtype)
    for f in (text, vision):
        p = os.path.join(a.out, f)
        print(f"{p}: {os.path.getsize(p)} bytes")


if __name__ == "__main__":
    main()
