#!/usr/bin/env python3
"""tokensel hostile-input suite (issue 18): writes hostile files into a temporary folder and runs
the `tokensel` CLI and the `llava` runtime on them, each under `prlimit --as` and `timeout`.

Every case asserts:
  * the exit status (tokensel: 2 for any bad input, docs/cli.md; llava: 2 for a bad command line,
    1 for a failed run on a bad file, docs/llava.md; 0 for the cases that must succeed);
  * exactly one error line ("tokensel: error: ..." / "llava: error: ...", the last line of stderr,
    the CLI's being the only line) that matches a pattern naming the problem (file / field /
    expected), and no leaked implementation detail (std::bad_alloc, stoi, json.exception, ...);
  * bounded memory (the address-space limit: an allocation beyond it is std::bad_alloc, which the
    message check catches) and bounded time (the timeout, and a per-case wall bound);
  * no output file left behind (--out, --overlay), not even a temporary.

Python 3 standard library only. Usage:
  run_hostile.py --cli PATH --llava PATH --data DIR [--no-memory-limit] [--time-scale S] [-j N]
--no-memory-limit is for AddressSanitizer builds: ASan reserves terabytes of virtual memory, so an
address-space limit cannot be used there; every other assertion stays, time bounds scaled by S.
"""
import argparse
import concurrent.futures as futures
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib

# (nlohmann's parse_error text, with its line and column, is kept: it says where the JSON breaks.)
LEAKS = re.compile(r"std::|bad_alloc|stoi|stoll|json\.exception\.(type_error|out_of_range|invalid_iterator|other_error)|"
                   r"filesystem error|basic_string|vector::|"
                   r"internal error|max_size|terminate", re.I)

# Address-space bounds (bytes). The CLI's largest hostile input here needs a few MB; the runtime
# maps a 2 MB model plus OpenMP thread stacks and arenas.
CLI_AS = 1 << 30
LLAVA_AS = 2 << 30


class Case:
    def __init__(self, name, argv, rc, pattern, prog, no_outputs=(), max_seconds=10.0, stdin=None):
        self.name, self.argv, self.rc, self.pattern = name, argv, rc, pattern
        self.prog, self.no_outputs, self.max_seconds = prog, list(no_outputs), max_seconds


# ---- file builders --------------------------------------------------------------------------

def npy(shape, data=b"", descr="<f4"):
    shape_txt = "(" + "".join(f"{s}, " for s in shape) + ")" if len(shape) != 1 else f"({shape[0]},)"
    hdr = "{'descr': '%s', 'fortran_order': False, 'shape': %s, }" % (descr, shape_txt)
    pad = (64 - (10 + len(hdr) + 1) % 64) % 64
    hdr = hdr + " " * pad + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr.encode() + data


def npy_f32(shape, values):
    return npy(shape, struct.pack("<%df" % len(values), *values))


def safetensors_raw(header_text, data=b""):
    h = header_text.encode() if isinstance(header_text, str) else header_text
    return struct.pack("<Q", len(h)) + h + data


def png(width, height, rows=None, break_crc=False):
    def chunk(kind, body, bad=False):
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        if bad:
            crc ^= 0xDEADBEEF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    if rows is None:
        rows = b"".join(b"\x00" + bytes([(x * 7 + y * 3) % 256 for x in range(width * 3)]) for y in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr, break_crc) + chunk(b"IDAT", zlib.compress(rows)) +
            chunk(b"IEND", b""))


def jpeg_header_only(width, height):
    """SOI, SOF0 (3 components), SOS, a few bytes of scan data, EOI: a header declaring a size."""
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x00\x03\x11\x00"
    sos = b"\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00"
    return (b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", 2 + len(sof)) + sof +
            b"\xff\xda" + struct.pack(">H", 2 + len(sos)) + sos + b"\x12\x34\x56" + b"\xff\xd9")


def jpeg_cut_in_scan(jpeg):
    """A real JPEG cut in the middle of its entropy-coded data, then an EOI marker appended."""
    sos = jpeg.index(b"\xff\xda")
    start = sos + 2 + struct.unpack(">H", jpeg[sos + 2:sos + 4])[0]
    cut = start + (len(jpeg) - start) // 3
    return jpeg[:cut] + b"\xff\xd9"


def add_tensors(st_bytes, extra):
    n = struct.unpack("<Q", st_bytes[:8])[0]
    header = json.loads(st_bytes[8:8 + n])
    data = st_bytes[8 + n:]
    for i in range(extra):
        header[f"extra.zero_size_{i}"] = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
    text = json.dumps(header, separators=(",", ":"))
    text += " " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text.encode() + data


# ---- the cases ------------------------------------------------------------------------------

def build_cases(tmp, cli, llava, data):
    w = lambda name, content: (open(os.path.join(tmp, name), "wb").write(content), os.path.join(tmp, name))[1]
    p = lambda name: os.path.join(tmp, name)
    fifo = p("fifo")
    os.mkfifo(fifo)
    os.symlink("loop_b", p("loop_a"))
    os.symlink("loop_a", p("loop_b"))
    loop = p("loop_a")
    cases = []

    def T(name, args, rc, pattern, **kw):
        cases.append(Case("cli/" + name, [cli] + args, rc, pattern, "tokensel", **kw))

    def L(name, args, rc, pattern, **kw):
        cases.append(Case("llava/" + name, [llava] + args, rc, pattern, "llava", **kw))

    # A valid 3-head 9-token attention (softmax rows) and an 80-token LLM attention.
    def attn(h, n):
        vals = [1.0 / n] * (h * n * n)
        return npy_f32([h, n, n], vals)
    a9 = w("a9.npy", attn(2, 9))
    a80 = w("a80.npy", attn(1, 80))
    feats = w("feats.npy", npy_f32([16, 4], [float(i % 7) for i in range(64)]))
    recipe_ok = json.dumps({"format": "tokensel.fitprune.recipe", "version": 1, "model": "m", "source": "s",
                            "geometry": {"hidden": 64, "ffn": 128, "layers": 2, "visual_tokens": 40},
                            "reduction": 0.5, "alpha": None, "drops": [10, 10]})
    w("recipe.json", recipe_ok.encode())
    w("layers.txt", b"a9.npy\na9.npy\n")

    sel = ["select", "--method"]
    # Class 1: special files never block; a link loop says so.
    for flag, method in (("--attn", "fopru"), ("--layers-file", "freepruner")):
        T("fifo" + flag, sel + [method, flag, fifo], 2, r"fifo.*not a regular file|not a regular file.*fifo")
        T("devzero" + flag, sel + [method, flag, "/dev/zero"], 2, r"character device.*not a regular file")
        T("loop" + flag, sel + [method, flag, loop], 2, r"loop of symbolic links")
    T("fifo--features", sel + ["pool", "--features", fifo], 2, r"--features:.*FIFO")
    T("fifo--keys", sel + ["visionzip", "--attn", a9, "--keys", fifo], 2, r"--keys:.*FIFO")
    T("dir--attn", sel + ["fopru", "--attn", tmp], 2, r"directory, not a regular file")
    w("layers_fifo.txt", b"fifo\n")
    T("fifo-in-layer-list", sel + ["freepruner", "--layers-file", p("layers_fifo.txt")], 2, r"FIFO")
    fit = sel + ["fitprune", "--attn", a80, "--visual-start", "5", "--visual-count", "40", "--layer", "1"]
    T("fifo--recipe", fit + ["--recipe", fifo], 2, r"fitprune\.recipe\.path.*FIFO")
    T("devzero--recipe", fit + ["--recipe", "/dev/zero"], 2, r"fitprune\.recipe\.path.*character device")
    T("loop--recipe", fit + ["--recipe", loop], 2, r"fitprune\.recipe\.path.*loop of symbolic links")
    T("fifo-info", ["info", fifo], 2, r"FIFO")
    T("devzero-info", ["info", "/dev/zero"], 2, r"character device")
    T("loop-info", ["info", loop], 2, r"loop of symbolic links")
    T("missing-info", ["info", p("nope.npy")], 2, r"no such file")

    # Class 2: counts checked against the input before they size memory.
    for count in ("1000000000", str(2 ** 62), str(2 ** 63 - 1)):
        T("fastv-span-" + count, sel + ["fastv", "--attn", a80, "--visual-start", "1", "--visual-count", count],
          2, r"fastv\.visual = \[1, .*token range outside the 80 tokens")
        T("fitprune-span-" + count, sel + ["fitprune", "--attn", a80, "--visual-start", "1", "--visual-count", count,
                                           "--drop", "1"], 2, r"fitprune\.visual = \[1, .*token range outside the 80 tokens")
    T("fastv-start-huge", sel + ["fastv", "--attn", a80, "--visual-start", str(2 ** 62), "--visual-count", "4"],
      2, r"fastv\.visual.*token range outside the 80 tokens")
    empty_huge = w("empty_huge.npy", npy([0, 2 ** 40, 2 ** 40]))
    for method in ("fopru", "visionzip", "prumerge", "random"):
        extra = ["--ratio", "0.5"] if method == "random" else []
        T("empty-huge-extents-" + method, sel + [method, "--attn", empty_huge] + extra, 2, r"holds no values")
    T("empty-huge-features", sel + ["pool", "--features", w("empty_feats.npy", npy([2 ** 40, 0]))], 2,
      r"holds no values")
    T("random-3-of-2^31-1", sel + ["random", "--n", str(2 ** 31 - 1), "--count", "3"], 0, None)
    T("random-3-of-2^62", sel + ["random", "--n", str(2 ** 62), "--count", "3"], 2, r"random\.n = 4611686018427387904")
    T("npy-shape-beyond-data", sel + ["fopru", "--attn", w("short.npy", npy([4, 2 ** 20, 2 ** 20], b"\0" * 64))], 2,
      r"data too short")

    # Class 4/5: safetensors headers.
    T("st-duplicate-key-in-entry", ["info", w("dup.safetensors", safetensors_raw(
        '{"a":{"dtype":"F32","dtype":"F16","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4))], 2,
      r"duplicate key 'dtype' inside the entry of 'a'")
    T("st-duplicate-name", ["info", w("dupname.safetensors", safetensors_raw(
        '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
        b"\0" * 4))], 2, r"duplicate tensor name 'a'")
    T("st-nul-padding", ["info", w("nul.safetensors", safetensors_raw(
        '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}' + "\0" * 6, b"\0" * 4))], 2, r"NUL byte")
    T("st-header-beyond-file", ["info", w("hdr.safetensors", struct.pack("<Q", 2 ** 62) + b"{}")], 2,
      r"header length .* runs beyond the end of the file")
    T("st-bad-json", ["info", w("badjson.safetensors", safetensors_raw('{"a":'))], 2, r"invalid JSON header")
    # Class 7: parsing is linear in the header.
    many = "{" + ",".join(f'"t{i}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}' for i in range(200000)) + "}"
    many_path = w("many.safetensors", safetensors_raw(many))
    T("st-200000-zero-size-info", ["info", many_path], 0, None, max_seconds=15)
    T("st-200000-zero-size-select", sel + ["fopru", "--attn", many_path], 2, r"200000 float tensors", max_seconds=15)

    # Class 6: output that cannot be written is an error, and nothing is left behind.
    T("out-dev-full", sel + ["pool", "--features", feats, "--out", "/dev/full"], 2, r"--out:.*write failed")
    # The JSON on stdout is flushed and checked (stdout redirected to /dev/full by a shell).
    to_full = ["sh", "-c", 'exec "$0" "$@" >/dev/full', cli]
    cases.append(Case("cli/stdout-dev-full-info", to_full + ["info", a9], 2, r"cannot write the output", "tokensel"))
    cases.append(Case("cli/stdout-dev-full-select", to_full + sel + ["random", "--n", "10", "--count", "3"], 2,
                      r"cannot write the output", "tokensel"))
    T("out-missing-dir", sel + ["pool", "--features", feats, "--out", p("no_such_dir/out.npy")], 2,
      r"--out:.*cannot open for writing", no_outputs=[p("no_such_dir")])
    os.mkdir(p("outdir"))
    T("out-is-dir", sel + ["pool", "--features", feats, "--out", p("outdir")], 2, r"--out:.*is a directory")
    T("out-ok", sel + ["pool", "--features", feats, "--out", p("outdir/ok.npy")], 0, None)

    # ---- the runtime ----
    model = os.path.abspath(os.path.join(data, "llava-tiny-fp32"))
    image = os.path.join(data, "llava-images", "shapes.png")
    scene = open(os.path.join(data, "llava-images", "scene.jpg"), "rb").read()
    base = ["--prompt", "What is it?", "--max-new-tokens", "2"]
    run = lambda m, img, *extra: ["--model", m, "--image", img] + base + list(extra)

    def model_with(name, replace=None, remove=(), write=None):
        d = p("model_" + name)
        os.mkdir(d)
        for f in os.listdir(model):
            if f in remove or f.startswith("golden") or f.startswith("pruned"):
                continue
            os.symlink(os.path.join(model, f), os.path.join(d, f))
        for f, target in (replace or {}).items():
            os.remove(os.path.join(d, f)) if os.path.lexists(os.path.join(d, f)) else None
            if target == "fifo":
                os.mkfifo(os.path.join(d, f))
            elif target == "loop":
                os.symlink(f + ".loop", os.path.join(d, f + ".loop2"))
                os.symlink(f + ".loop2", os.path.join(d, f + ".loop"))
                os.symlink(f + ".loop", os.path.join(d, f))
            else:
                os.symlink(target, os.path.join(d, f))
        for f, content in (write or {}).items():
            if os.path.lexists(os.path.join(d, f)):
                os.remove(os.path.join(d, f))
            with open(os.path.join(d, f), "wb") as fh:
                fh.write(content)
        return d

    # Class 1 and 3: images and model files.
    L("image-fifo", run(model, fifo), 1, r"image .*FIFO")
    L("image-devzero", run(model, "/dev/zero"), 1, r"image /dev/zero: is a character device")
    L("image-loop", run(model, loop), 1, r"image .*loop of symbolic links")
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "model.safetensors",
              "preprocessor_config.json"):
        L("model-fifo-" + f, run(model_with("fifo_" + f, {f: "fifo"}), image), 1, re.escape(f) + r".*FIFO")
    for f in ("config.json", "tokenizer.json", "preprocessor_config.json"):
        L("model-devzero-" + f, run(model_with("zero_" + f, {f: "/dev/zero"}), image), 1,
          re.escape(f) + r".*character device")
        L("model-loop-" + f, run(model_with("loop_" + f, {f: "loop"}), image), 1,
          re.escape(f) + r".*loop of symbolic links")
    L("index-fifo", run(model_with("index_fifo", {"model.safetensors.index.json": "fifo"}), image), 1,
      r"model\.safetensors\.index\.json.*FIFO")
    L("png-1x100000-padded", run(model, w("tall.png", png(1, 100000, rows=b"\x00\x80\x80\x80" * 100000))), 1,
      r"padded to a 100000 x 100000 square exceeds the limit")
    L("jpeg-65000x2000-padded", run(model, w("wide.jpg", jpeg_header_only(65000, 2000))), 1,
      r"padded to a 65000 x 65000 square exceeds the limit")
    L("jpeg-20000x20000", run(model, w("huge.jpg", jpeg_header_only(20000, 20000)), "--no-pad"), 1,
      r"20000 x 20000 pixels exceeds the limit")
    L("jpeg-65000x2000-no-pad", run(model, w("wide2.jpg", jpeg_header_only(65000, 2000)), "--no-pad"), 1,
      r"cannot decode JPEG")
    L("png-bad-crc", run(model, w("badcrc.png", png(8, 8, break_crc=True))), 1, r"bad CRC in chunk 'IHDR'")
    L("jpeg-cut-in-scan-eoi", run(model, w("cut.jpg", jpeg_cut_in_scan(scene))), 1, r"truncated JPEG")
    # Cut without an EOI, but an FF D9 pair in a comment segment (as in an EXIF thumbnail).
    com = b"\xff\xfe" + struct.pack(">H", 6) + b"\xff\xd9\x00\x00"
    L("jpeg-cut-in-scan", run(model, w("cut2.jpg", scene[:2] + com + jpeg_cut_in_scan(scene)[2:-2])), 1,
      r"truncated JPEG")

    cfg = json.load(open(os.path.join(model, "config.json")))

    def cfg_with(**changes):
        c = json.loads(json.dumps(cfg))
        for path, value in changes.items():
            node = c
            keys = path.split("__")
            for k in keys[:-1]:
                node = node[k]
            node[keys[-1]] = value
        return json.dumps(c).encode()
    L("config-image-size-1e9", run(model_with("huge_image_size", write={
        "config.json": cfg_with(vision_config__image_size=10 ** 9, vision_config__patch_size=10 ** 6)}), image), 1,
      r"vision_config\.image_size: = 1000000000: an input square .* exceeds the limit")
    L("config-image-token-is-bos", run(model_with("img_bos", write={"config.json": cfg_with(image_token_index=1)}),
                                       image), 1, r"image_token_index: = 1 equals text_config\.bos_token_id")
    L("preprocessor-std-zero", run(model_with("std0", write={"preprocessor_config.json": json.dumps(
        {"image_std": [0.2, 0, 0.2]}).encode()}), image), 1, r"image_std\[1\]: must be a finite number > 0")
    L("preprocessor-mean-5", run(model_with("mean5", write={"preprocessor_config.json": json.dumps(
        {"image_mean": [0.1, 0.2, 0.3, 0.4, 0.5]}).encode()}), image), 1, r"image_mean: must be a list of 3 numbers")
    L("preprocessor-mean-strings", run(model_with("meanstr", write={"preprocessor_config.json": json.dumps(
        {"image_mean": ["a", "b", "c"]}).encode()}), image), 1, r"image_mean\[0\]: must be a finite number")
    L("tokenizer-config-bad-id", run(model_with("tokid", write={"tokenizer_config.json": json.dumps(
        {"added_tokens_decoder": {"x12": {"content": "<q>"}}}).encode()}), image), 1,
      r"added_tokens_decoder\['x12'\]: expected a token id")
    st = open(os.path.join(model, "model.safetensors"), "rb").read()
    n = struct.unpack("<Q", st[:8])[0]
    dup = st[8:8 + n].replace(b'"dtype":"F32"', b'"dtype":"F32","dtype":"F32"', 1)
    L("weights-duplicate-key", run(model_with("dupkey", write={"model.safetensors": struct.pack("<Q", len(dup)) + dup +
                                                               st[8 + n:]}), image), 1, r"duplicate key 'dtype'")
    L("weights-40000-extra-tensors", run(model_with("extra", write={"model.safetensors": add_tensors(st, 40000)}),
                                          image), 0, None, max_seconds=10)

    # Class 5: non-finite weights. Loading cannot tell which NaN/Inf matters; the forward passes check
    # each layer's output rows and fail naming the layer (never an answer).
    def weight_set(name, index, value):
        header = json.loads(st[8:8 + n])
        assert header[name]["dtype"] == "F32"
        at = 8 + n + header[name]["data_offsets"][0] + 4 * index
        return st[:at] + struct.pack("<f", value) + st[at + 4:]
    nan, inf = float("nan"), float("inf")
    clip_l = "model.vision_tower.vision_model.encoder.layers."
    bos_row = cfg["text_config"]["bos_token_id"] * cfg["text_config"]["hidden_size"]  # BOS opens every prompt
    for case, (tensor, index, value, extra, pattern) in {
        "nan-clip-layer-1": (clip_l + "1.mlp.fc1.weight", 5, nan, (),
                             r"non-finite activations after CLIP layer 1 \(vision_model\.encoder\.layers\.1\)"),
        "nan-clip-last-layer-prumerge": (clip_l + "3.self_attn.q_proj.weight", 0, nan, ("--method", "prumerge"),
                                         r"non-finite queries/keys in CLIP layer 3 \(vision_model\.encoder\.layers\.3\.self_attn\)"),
        "nan-projector": ("model.multi_modal_projector.linear_2.weight", 3, nan, (),
                          r"non-finite activations after the projector \(multi_modal_projector\)"),
        "inf-llm-layer-2": ("model.language_model.layers.2.mlp.up_proj.weight", 9, inf, (),
                            r"non-finite activations after LLM layer 2 \(language_model\.layers\.2\)"),
        "nan-lm-head": ("lm_head.weight", 7, nan, (), r"non-finite values in the LLM's final logits \(lm_head\)"),
        "inf-embedding-bos": ("model.language_model.embed_tokens.weight", bos_row, inf, (),
                              r"non-finite embedding of token id 1 \(language_model\.embed_tokens\.weight row 1\)"),
    }.items():
        L("weights-" + case, run(model_with(case, write={"model.safetensors": weight_set(tensor, index, value)}), image,
                                 *extra), 1, pattern + r".*NaN/Inf")
    # A NaN in a layer past the feature layer that no method reads changes nothing.
    L("weights-nan-clip-layer-3-unused", run(model_with("nan_unused", write={"model.safetensors": weight_set(
        clip_l + "3.self_attn.q_proj.weight", 0, nan)}), image), 0, None)

    # Class 6: the overlay.
    L("overlay-dev-full", run(model, image, "--overlay", "/dev/full"), 1, r"overlay /dev/full: write failed")
    L("overlay-missing-dir", run(model, image, "--overlay", p("no_dir/ov.png")), 1, r"overlay .*does not exist",
      no_outputs=[p("no_dir")])
    os.mkdir(p("ovdir"))
    L("overlay-ok", run(model, image, "--overlay", p("ovdir/ov.png")), 0, None)
    L("flag-bad-int", ["--model", model, "--image", image, "--prompt", "x", "--max-new-tokens", "12x"], 2,
      r"--max-new-tokens 12x: not an integer")
    return cases


def run_case(c, args):
    limit = CLI_AS if c.prog == "tokensel" else LLAVA_AS
    cmd = ["timeout", "-k", "2", str(int(30 * args.time_scale))]
    if not args.no_memory_limit:
        cmd += ["prlimit", f"--as={limit}", "--"]
    cmd += c.argv
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    t0 = time.monotonic()
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, env=env)
    elapsed = time.monotonic() - t0
    err = r.stderr.decode(errors="replace")
    lines = [l for l in err.splitlines() if l.strip()]
    problems = []
    if r.returncode in (124, 137):
        problems.append(f"timed out after {elapsed:.1f} s")
    elif r.returncode != c.rc:
        problems.append(f"exit status {r.returncode}, expected {c.rc}")
    if elapsed > c.max_seconds * args.time_scale:
        problems.append(f"took {elapsed:.1f} s, bound {c.max_seconds * args.time_scale:.0f} s")
    tag = c.prog + ": error: "
    errors = [l for l in lines if l.startswith(tag)]
    if c.rc == 0:
        if errors:
            problems.append("unexpected error: " + errors[0])
    else:
        if len(errors) != 1 or lines[-1] != errors[0] or (c.prog == "tokensel" and len(lines) != 1):
            problems.append(f"expected exactly one '{tag}...' line (the last), stderr was: {err[-600:]!r}")
        elif not re.search(c.pattern, errors[0], re.I):
            problems.append(f"error line does not match /{c.pattern}/: {errors[0]}")
        if errors and LEAKS.search(errors[0]):
            problems.append(f"error line leaks the implementation: {errors[0]}")
        if r.stdout:
            problems.append(f"stdout not empty on failure: {r.stdout[:200]!r}")
    for path in c.no_outputs:
        if os.path.lexists(path):
            problems.append(f"output left behind: {path}")
    return c, elapsed, problems, (errors[0] if errors else "")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--llava", default="")
    ap.add_argument("--data", required=True)
    ap.add_argument("--no-memory-limit", action="store_true")
    ap.add_argument("--time-scale", type=float, default=1.0)
    ap.add_argument("-j", type=int, default=2)
    ap.add_argument("-v", action="store_true")
    args = ap.parse_args()
    t0 = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="tokensel-hostile-")
    try:
        cases = build_cases(tmp, args.cli, args.llava or None, args.data)
        if not args.llava or not os.path.exists(args.llava):
            cases = [c for c in cases if c.prog != "llava"]
            print("llava runtime not built: its cases are skipped")
        failed = 0
        with futures.ThreadPoolExecutor(max_workers=args.j) as pool:
            for c, elapsed, problems, line in pool.map(lambda c: run_case(c, args), cases):
                if problems:
                    failed += 1
                    print(f"FAIL {c.name} ({elapsed:.2f} s): " + "; ".join(problems))
                elif args.v:
                    print(f"ok   {c.name} ({elapsed:.2f} s) {line}")
        # Nothing else may be left in the output folders (a temporary of a failed write).
        for d in ("outdir", "ovdir"):
            left = sorted(f for f in os.listdir(os.path.join(tmp, d)) if f not in ("ok.npy", "ov.png"))
            if left:
                failed += 1
                print(f"FAIL temporaries left in {d}: {left}")
        mode = "no memory limit (sanitizer build)" if args.no_memory_limit else \
            f"prlimit --as {CLI_AS >> 20} MiB (tokensel) / {LLAVA_AS >> 20} MiB (llava)"
        print(f"hostile suite: {len(cases) - failed if failed <= len(cases) else 0} of {len(cases)} cases passed, "
              f"{mode}, {time.monotonic() - t0:.1f} s")
        return 1 if failed else 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
