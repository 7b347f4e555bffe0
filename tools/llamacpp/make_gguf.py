#!/usr/bin/env python3
"""GGUF versions of the tiny LLaVA checkpoint, made with llama.cpp's own converters.

    python3 tools/llamacpp/make_gguf.py [--src tests/data/llava-tiny-fp32]
                                        [--out tests/data/llava-tiny-gguf] [--llama-cpp DIR]

Writes OUT/model-f32.gguf (the Llama text model, convert_hf_to_gguf.py) and
OUT/mmproj-f32.gguf (CLIP up to the feature layer + the MLP projector, the legacy
tools/mtmd/legacy-models/convert_image_encoder_to_gguf.py, --use-f32: llama.cpp still stores the
patch convolution and the projector matrices in f16). llama.cpp's tree defaults to the one
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


def text_model(src, out, llama, env, tmp):
    d = os.path.join(tmp, "text")
    os.makedirs(d)
    cfg = json.load(open(os.path.join(src, "config.json")))
    cfg["architectures"] = ["LlavaForConditionalGeneration"]
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=2)
    for f in os.listdir(src):
        if f.startswith(("model", "tokenizer", "special_tokens")):
            os.symlink(os.path.join(os.path.abspath(src), f), os.path.join(d, f))
    run([sys.executable, os.path.join(llama, "convert_hf_to_gguf.py"), d, "--outtype", "f32",
         "--outfile", os.path.join(out, "model-f32.gguf")], env)


def mmproj(src, out, llama, env, tmp):
    import torch
    from safetensors.torch import load_file, save_file
    d = os.path.join(tmp, "vision")
    os.makedirs(d)
    cfg = json.load(open(os.path.join(src, "config.json")))
    vc = dict(cfg["vision_config"])
    vc["vision_feature_layer"] = cfg["vision_feature_layer"]
    vc["architectures"] = ["CLIPVisionModel"]
    json.dump(vc, open(os.path.join(d, "config.json"), "w"), indent=2)
    weights = {}
    for f in sorted(os.listdir(src)):
        if f.startswith("model") and f.endswith(".safetensors"):
            weights.update(load_file(os.path.join(src, f)))
    tower, proj = "model.vision_tower.", "model.multi_modal_projector."
    save_file({k[len(tower):]: v.float().contiguous() for k, v in weights.items() if k.startswith(tower)},
              os.path.join(d, "model.safetensors"))
    projector = {k[len("model."):]: v.float() for k, v in weights.items() if k.startswith(proj)}
    torch.save(projector, os.path.join(tmp, "llava.projector"))
    conv = os.path.join(llama, "tools", "mtmd", "legacy-models", "convert_image_encoder_to_gguf.py")
    run([sys.executable, "-c", SHIM, conv, "-m", d, "--clip-model-is-vision", "--llava-projector",
         os.path.join(tmp, "llava.projector"), "--projector-type", "mlp", "--use-f32", "-o", tmp], env)
    shutil.move(os.path.join(tmp, "mmproj-model-f32.gguf"), os.path.join(out, "mmproj-f32.gguf"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", default=os.path.join(ROOT, "tests/data/llava-tiny-fp32"))
    ap.add_argument("--out", default=os.path.join(ROOT, "tests/data/llava-tiny-gguf"))
    ap.add_argument("--llama-cpp", default=None, help="llama.cpp source tree (default: fetch.sh's)")
    ap.add_argument("--force", action="store_true", help="rewrite files that exist")
    a = ap.parse_args()
    llama = a.llama_cpp or subprocess.run(["bash", os.path.join(HERE, "fetch.sh")], check=True,
                                          stdout=subprocess.PIPE, text=True).stdout.strip()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(llama, "gguf-py") + os.pathsep + env.get("PYTHONPATH", "")
    os.makedirs(a.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if a.force or not os.path.exists(os.path.join(a.out, "model-f32.gguf")):
            text_model(a.src, a.out, llama, env, tmp)
        if a.force or not os.path.exists(os.path.join(a.out, "mmproj-f32.gguf")):
            mmproj(a.src, a.out, llama, env, tmp)
    for f in ("model-f32.gguf", "mmproj-f32.gguf"):
        p = os.path.join(a.out, f)
        print(f"{p}: {os.path.getsize(p)} bytes")


if __name__ == "__main__":
    main()
