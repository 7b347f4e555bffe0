#!/usr/bin/env python3
"""tokensel-llamacpp against the bundled LLaVA runtime (examples/llava), on the tiny checkpoint
and its GGUF conversion (tests/data/llava-tiny-gguf, made by tools/llamacpp/make_gguf.py).

    test_llamacpp.py --tool build/examples/llamacpp/tokensel-llamacpp --llava build/examples/llava/llava

Checks (each failure is printed with both outputs; exit 1 if any failed):
  1. kept indices: every served method, on two images, equal examples/llava's, from the softmax
     (flash attention off) against its maps and from Q/K (flash attention on) against its --from-qk:
     all of them against the checkpoint with the weights llama.cpp stores in f16 (the patch
     convolution, the projector matrices) rounded to f16 the same way, so both runtimes hold the
     same weights; all but VisPruner against the fp32 checkpoint itself; all of them on the bf16
     checkpoint (llava-tiny-bf16) and its GGUF (tests/data/llava-tiny-bf16-gguf);
  2. Q/K and softmax capture select the same tokens;
  3. answers: the unpruned answer tokens, and those of every pruned run, equal examples/llava's on
     the same token sequence (llama.cpp tokenizes the text after the image as its own chunk, which
     starts with a space token: the runtime gets the same prompt with "<image> \\n"); on the fp32
     checkpoints; on bf16 counted, not required (see parity);
  4. llama.cpp's own path: with no method, the answer (16 tokens) of the example's prefill (its
     own llama_batch of the image rows) equals that of llama.cpp's mtmd_helper_eval_chunks, the
     prefill llama-mtmd-cli runs (--mtmd-prefill), on three images (non-square ones included);
  5. errors: missing model / mmproj / image, an mmproj of another architecture, a file that is not
     GGUF, unservable methods: one line on stderr naming the problem, non-zero exit.
Needs the llama.cpp build with tools/llamacpp/cls-first.patch (CLS first; the JSON says which).
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "tests", "data")
HF = os.path.join(DATA, "llava-tiny-fp32")
GGUF = os.path.join(DATA, "llava-tiny-gguf")
# (text model, mmproj) for the fp32 checkpoint and for llava-tiny-bf16 (bf16 text matrices, f16
# mmproj matrices: make_gguf.py --outtype bf16)
F32_GGUF = (os.path.join(GGUF, "model-f32.gguf"), os.path.join(GGUF, "mmproj-f32.gguf"))
BF16_HF = os.path.join(DATA, "llava-tiny-bf16")
BF16_GGUF = (os.path.join(DATA, "llava-tiny-bf16-gguf", "model-bf16.gguf"), os.path.join(DATA, "llava-tiny-bf16-gguf", "mmproj-f16.gguf"))
# Square images at CLIP's input size: neither runtime resizes or pads them, so both encoders see
# the same pixels (on other images mtmd's resize differs from the runtime's, see docs/llamacpp.md).
IMAGES = [os.path.join(DATA, "llava-images", f) for f in ("scene112.png", "shapes112.png")]
QUESTION = "What is in the image?"
# (method, keep): the served methods, adaptive and budgeted forms
CASES = [("none", None), ("fopru", "0.5"), ("fopru", "20"), ("freepruner", None), ("freepruner", "16"),
         ("visionzip", "6"), ("visionzip", "16"), ("visionzip", "0.5"), ("vispruner", "16"), ("vispruner", "0.25"), ("divprune", "16"),
         ("random", "0.3"), ("uniform", "16"), ("pool", None), ("pool", "16")]
ATTENTION = {"fopru", "freepruner", "visionzip", "vispruner"}
# Methods whose LLM input rows are the same in both runtimes (VisionZip's CLS and contextual rows
# and pool's averaged rows are projected by tokensel-llamacpp from the mmproj's weights with ggml).
SAME_ROWS = {"none", "fopru", "freepruner", "divprune", "random", "uniform", "vispruner", "visionzip", "pool"}
# VisPruner's duplicate removal compares patch features by cosine, which on the tiny random model
# lie close together: with the fp32 patch convolution its diverse tokens differ from llama.cpp's
# (f16 convolution); with the weights rounded as llama.cpp stores them they are equal.
NO_PARITY_FP32 = {"vispruner"}
F16_IN_GGUF = ("patch_embedding.weight", "multi_modal_projector.linear_1.weight", "multi_modal_projector.linear_2.weight")


def rounded_checkpoint(tmp, cls_last=False):
    """HF (fp32) with the tensors llama.cpp's converter stores in f16 rounded to f16 (round half to
    even, as numpy's astype), standard library only. cls_last: also the CLIP that llama.cpp's
    unpatched llava graph computes. That graph orders the tokens [patch 0 .. patch n-1, CLS] and
    adds position embeddings 0..n in that order, so patch p gets row p and CLS row n; CLIP is
    equivariant under token order, so it equals CLIP with CLS first and the table's rows moved:
    [row n, row 0, ..., row n-1]."""
    out = os.path.join(tmp, "llava-tiny-f16-rounded" + ("-cls-last" if cls_last else ""))
    os.makedirs(out)
    for f in os.listdir(HF):
        if f != "model.safetensors" and not f.startswith(("golden", "pruned")):
            shutil.copy(os.path.join(HF, f), out)
    blob = open(os.path.join(HF, "model.safetensors"), "rb").read()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    data = bytearray(blob[8 + n:])
    for name, t in header.items():
        if cls_last and name.endswith("vision_model.embeddings.position_embedding.weight"):
            b, e = t["data_offsets"]
            width = t["shape"][1] * 4
            rows = [data[b + i * width:b + (i + 1) * width] for i in range(t["shape"][0])]
            data[b:e] = b"".join(rows[-1:] + rows[:-1])
        if name == "__metadata__" or not name.endswith(F16_IN_GGUF):
            continue
        assert t["dtype"] == "F32", name
        b, e = t["data_offsets"]
        vals = struct.unpack(f"<{(e - b) // 4}f", data[b:e])
        halves = struct.unpack(f"<{len(vals)}e", struct.pack(f"<{len(vals)}e", *vals))
        data[b:e] = struct.pack(f"<{len(vals)}f", *halves)
    with open(os.path.join(out, "model.safetensors"), "wb") as f:
        f.write(blob[:8 + n] + bytes(data))
    return out

failures = []


def check(ok, what):
    if not ok:
        failures.append(what)
        print("FAIL", what)


def programs_built(*exes):
    """True when every program exists; else one FAIL line naming the target to build."""
    for exe in exes:
        if not os.access(exe, os.X_OK):
            print(f"FAIL {exe} is not built (cmake --build BUILD --target {os.path.basename(exe)})")
            return False
    return True


def run_json(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {p.returncode}: {p.stderr.strip()}")
    return json.loads(p.stdout)


def tool_run(a, image, method, keep, qk, gguf=F32_GGUF):
    cmd = [a.tool, "--model", gguf[0], "--mmproj", gguf[1],
           "--image", image, "--prompt", QUESTION, "--method", method, "--max-new-tokens", "8", "--json"]
    return run_json(cmd + (["--keep", keep] if keep else []) + (["--from-qk"] if qk else []))


def llava_run(a, hf, image, method, keep, qk):
    cmd = [a.llava, "--model", hf, "--image", image, "--template", "raw", "--prompt",
           f"USER: <image> \n{QUESTION} ASSISTANT:", "--method", method, "--max-new-tokens", "8", "--threads", "1", "--json"]
    return run_json(cmd + (["--keep", keep] if keep else []) + (["--from-qk"] if qk else []))


def parity(a, hf, no_parity, gguf=F32_GGUF, answers=True):
    """answers=False (the bf16 GGUF): answer tokens counted, not required. ggml's CPU matmul rounds
    the activations to the weights' type (vec_dot_type) first, so llama.cpp's bf16 text model
    computes on bf16-rounded activations where the runtime keeps fp32 ones, and greedy tokens
    part after a few steps on some runs."""
    for image in IMAGES:
        name = os.path.basename(image)
        before, same, runs = len(failures), 0, 0
        for method, keep in CASES:
            got = {}
            for qk in (False, True):
                if qk and method not in ATTENTION:
                    continue
                t, r = tool_run(a, image, method, keep, qk, gguf), llava_run(a, hf, image, method, keep, qk)
                case = f"{os.path.basename(hf)} {name} {method} keep={keep} {'qk' if qk else 'softmax'}"
                check(t["cls_layout"] == "first", f"{case}: CLS layout {t['cls_layout']} (build without cls-first.patch?)")
                check(method in no_parity or t["kept"] == r["kept"], f"{case}: kept\n  llama.cpp {t['kept']}\n  llava     {r['kept']}")
                check(t["input_ids"][:1] == r["input_ids"][:1] and len(t["input_ids"]) == len(r["input_ids"]),
                      f"{case}: prompt tokens\n  llama.cpp {t['input_ids']}\n  llava     {r['input_ids']}")
                compared = method in SAME_ROWS and method not in no_parity
                runs, same = runs + compared, same + (compared and t["answer_ids"] == r["answer_ids"])
                check(not answers or not compared or t["answer_ids"] == r["answer_ids"],
                      f"{case}: answer\n  llama.cpp {t['answer_ids']}\n  llava     {r['answer_ids']}")
                check(t["attention_maps"] == (0 if qk or method not in ATTENTION else t["attention_maps"]) and
                      (qk or method not in ATTENTION or t["attention_maps"] > 0), f"{case}: maps {t['attention_maps']}")
                got[qk] = t["kept"]
            if len(got) == 2:
                check(got[False] == got[True], f"{name} {method} keep={keep}: Q/K {got[True]} != softmax {got[False]}")
        if len(failures) == before:
            told = "equal" if answers else "not required"
            print(f"ok   {os.path.basename(hf)} {name}: {len(CASES)} cases: kept indices (all but {sorted(no_parity)}) equal "
                  f"examples/llava's, answers ({told}) in {same} of {runs} runs; Q/K and softmax capture agree")


def engine_reference(a):
    for image in IMAGES + [os.path.join(DATA, "llava-images", f) for f in ("scene.jpg", "shapes.png")]:
        cmd = [a.tool, "--model", os.path.join(GGUF, "model-f32.gguf"), "--mmproj", os.path.join(GGUF, "mmproj-f32.gguf"),
               "--image", image, "--prompt", QUESTION, "--max-new-tokens", "16", "--json"]
        ours, theirs = run_json(cmd), run_json(cmd + ["--mtmd-prefill"])
        ok = ours["answer_ids"] == theirs["answer_ids"] and len(ours["answer_ids"]) == 16
        check(ok, f"{os.path.basename(image)}: our prefill {ours['answer_ids']} != mtmd_helper_eval_chunks {theirs['answer_ids']}")
        if ok:
            print(f"ok   {os.path.basename(image)}: unpruned answer equals llama.cpp's own prefill (mtmd_helper_eval_chunks)")


def expect_error(a, args, code, words, what):
    p = subprocess.run([a.tool] + args, capture_output=True, text=True)
    lines = p.stderr.strip().splitlines()
    ok = p.returncode == code and len(lines) == 1 and all(w in lines[0] for w in words) and p.stdout == ""
    check(ok, f"{what}: exit {p.returncode}, stderr {p.stderr!r} (want exit {code}, one line with {words})")
    if ok:
        print(f"ok   {what}: {lines[0]}")


def errors(a):
    model, mmproj = os.path.join(GGUF, "model-f32.gguf"), os.path.join(GGUF, "mmproj-f32.gguf")
    image = IMAGES[0]
    base = lambda m, p, i: ["--model", m, "--mmproj", p, "--image", i, "--prompt", QUESTION]
    expect_error(a, base("/nonexistent/model.gguf", mmproj, image), 1, ["--model", "no such file"], "missing model")
    expect_error(a, base(model, "/nonexistent/mmproj.gguf", image), 1, ["--mmproj", "no such file"], "missing mmproj")
    expect_error(a, base(model, mmproj, "/nonexistent.png"), 1, ["--image", "no such file"], "missing image")
    expect_error(a, base(model, model, image), 1, ["--mmproj", "architecture 'llama'", "expected 'clip'"],
                 "mmproj of another architecture (the text model)")
    expect_error(a, base(model, image, image), 1, ["--mmproj", "not a GGUF file"], "mmproj not GGUF")
    expect_error(a, base(image, mmproj, image), 1, ["--model", "could not load"], "model not GGUF")
    for m, why in (("prumerge", "last layer"), ("prumerge+", "last layer"), ("fastv", "llama_decode"),
                   ("fitprune", "llama_decode"), ("dart", "llama_decode")):
        expect_error(a, base(model, mmproj, image) + ["--method", m], 2, ["--method " + m, "not servable", why],
                     f"unservable {m}")
    expect_error(a, base(model, mmproj, image) + ["--method", "nosuch"], 2, ["unknown method"], "unknown method")
    expect_error(a, base(model, mmproj, image) + ["--method", "fopru", "--mtmd-prefill"], 2, ["--mtmd-prefill", "--method none"],
                 "--mtmd-prefill with a method")
    expect_error(a, base(model, mmproj, image) + ["--method", "visionzip", "--keep", "100"], 2,
                 ["--method visionzip --keep 100", "exceeds the 64"], "keep above the patch count")
    expect_error(a, base(model, mmproj, image) + ["--method", "pool", "--keep", "7"], 2,
                 ["--method pool --keep 7", "9 or 4"], "pool count it cannot make")
    expect_error(a, base(DATA, mmproj, image), 1, ["--model", "not a regular file"], "directory as model")
    with tempfile.TemporaryDirectory() as tmp:
        cut, text = os.path.join(tmp, "cut.gguf"), os.path.join(tmp, "text.png")
        with open(cut, "wb") as f:
            f.write(open(mmproj, "rb").read()[:100000])
        with open(text, "w") as f:
            f.write("not an image\n")
        expect_error(a, base(model, cut, image), 1, ["--mmproj", "could not load"], "truncated mmproj")
        expect_error(a, base(model, mmproj, text), 1, ["--image", "cannot decode"], "text file as image")
    expect_error(a, base(model, mmproj, image) + ["--method", "fopru", "--keep", "0"], 2, ["--keep"], "bad keep")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tool", required=True)
    ap.add_argument("--llava", required=True)
    a = ap.parse_args()
    t0 = time.monotonic()
    errors(a)
    engine_reference(a)
    with tempfile.TemporaryDirectory() as tmp:
        parity(a, rounded_checkpoint(tmp), set())
    parity(a, HF, NO_PARITY_FP32)
    parity(a, BF16_HF, set(), BF16_GGUF, answers=False)
    print(f"{len(failures)} failure(s) in {time.monotonic() - t0:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
