#!/usr/bin/env python3
"""tokensel-llamacpp's unpruned answer against llama.cpp's own llama-mtmd-cli on the same input.

    test_mtmd_cli.py --tool build/examples/llamacpp/tokensel-llamacpp --mtmd-cli build/examples/llamacpp/llama-mtmd-cli

On the tiny checkpoint's fp32 and bf16 GGUFs. They have no chat template, so llama-mtmd-cli runs
with the one it suggests for LLaVA-1.5 (--chat-template vicuna: "USER: {prompt}\\nASSISTANT:") and
-p "<__media__>\\n{question}", and tokensel-llamacpp gets that formatted prompt verbatim (--template
raw). llama-mtmd-cli's debug log shows the prompt it formatted; the test checks it is that string.
Both run greedily (llama-mtmd-cli: --temp 0, a fixed seed; the example: argmax), one thread, on
square and non-square images, two questions, and two flash-attention settings: on (llama-mtmd-cli
-fa on, CLIP and LLM; the example --from-qk, CLIP on, its LLM context on llama.cpp's default, which
is on for the CPU) and off in CLIP (llama-mtmd-cli -fa off, LLM off too; the example's default,
which reads the softmax). The example's 16-token answer (16 tokens: no early end hides a difference)
must be the beginning of llama-mtmd-cli's 48-token one (why 48: mtmd_cli).
"""
import argparse
import json
import os
import subprocess
import sys
import time

import test_llamacpp as base

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "tests", "data")
# the tiny checkpoint's GGUFs: fp32 (llava-tiny-fp32) and bf16 (llava-tiny-bf16; f16 mmproj)
MODELS = [(os.path.join(DATA, "llava-tiny-gguf", "model-f32.gguf"), os.path.join(DATA, "llava-tiny-gguf", "mmproj-f32.gguf")),
          (os.path.join(DATA, "llava-tiny-bf16-gguf", "model-bf16.gguf"), os.path.join(DATA, "llava-tiny-bf16-gguf", "mmproj-f16.gguf"))]
IMAGES = [os.path.join(DATA, "llava-images", f) for f in ("scene112.png", "shapes112.png", "scene.jpg", "shapes.png")]
QUESTIONS = ["What is in the image?", "Describe the colours."]
N = 16
MARKER = "<tokensel-response>"
N_CLI = 48  # llama-mtmd-cli generates more (see mtmd_cli)
RERUNS = [0]  # llama-mtmd-cli runs repeated for a truncated output


# (llama-mtmd-cli -fa, the example's flag)
FLASH = [("on", ["--from-qk"]), ("off", [])]


def mtmd_cli(a, gguf, image, question, fa, formatted, mine):
    """llama-mtmd-cli's answer compared with ours (mine): None when equal, else what differs.

    llama-mtmd-cli prints through llama.cpp's asynchronous logger, which is never flushed at exit
    (common/log.cpp leaks it on purpose): on a busy machine the end of its output is often lost,
    as the logging thread gets no CPU before the process ends. So it generates N_CLI tokens (its
    first N are long printed when it exits), its answer must begin with our N-token answer, and a
    run whose output stops inside ours (a prefix of it) runs again (up to 8 times); any other
    output is a difference, however often it ran. Entries come out in order, so once the answer
    is out, the formatted prompt (logged before it, -v) is out too."""
    cmd = [a.mtmd_cli, "-m", gguf[0], "--mmproj", gguf[1],
           "--image", image, "-p", "<__media__>\n" + question, "--chat-template", "vicuna", "--temp", "0", "--seed", "1",
           "-n", str(N_CLI), "-t", "1", "-tb", "1", "-fa", fa, "-v"]
    for _ in range(8):
        p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, MTMD_TEST_RESPONSE_MARKER=MARKER))
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: exit {p.returncode}: {p.stderr[-2000:]}")
        _, sep, response = p.stdout.partition(MARKER + "\n\n")
        response = response.lstrip(" ")
        if sep and response.startswith(mine):
            if "formatted_chat.prompt: " + formatted not in p.stderr:
                return f"llama-mtmd-cli did not format the prompt as {formatted!r}"
            return None
        if sep and not mine.startswith(response.rstrip("\n")):
            return f"llama-mtmd-cli answered {response!r}"
        RERUNS[0] += 1
    return f"llama-mtmd-cli's output stopped inside the answer in 8 runs: {p.stdout!r}"


def ours(a, gguf, image, prompt, flags):
    cmd = [a.tool, "--model", gguf[0], "--mmproj", gguf[1],
           "--image", image, "--template", "raw", "--prompt", prompt, "--max-new-tokens", str(N), "--threads", "1",
           "--json"] + flags
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {p.returncode}: {p.stderr.strip()}")
    return json.loads(p.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tool", required=True)
    ap.add_argument("--mtmd-cli", required=True)
    a = ap.parse_args()
    if not base.programs_built(a.tool, a.mtmd_cli):
        return 1
    t0, failures = time.monotonic(), 0
    for gguf in MODELS:
        for image in IMAGES:
            for question in QUESTIONS:
                for fa, flags in FLASH:
                    formatted = f"USER: <__media__>\n{question}\nASSISTANT:"  # llama.cpp's vicuna template
                    mine = ours(a, gguf, image, formatted.replace("<__media__>", "<image>"), flags)
                    what = f"{os.path.basename(gguf[0])} {os.path.basename(image)} {question!r} flash attention {fa}"
                    diff = "no 16-token answer" if len(mine["answer_ids"]) != N else \
                        mtmd_cli(a, gguf, image, question, fa, formatted, mine["answer"])
                    if diff:
                        failures += 1
                        print(f"FAIL {what}:\n  tokensel-llamacpp {mine['answer']!r} {mine['answer_ids']}\n  {diff}")
                    else:
                        print(f"ok   {what}: llama-mtmd-cli's answer begins with our {N} tokens {mine['answer']!r}")
    print(f"{failures} failure(s) in {time.monotonic() - t0:.1f} s ({RERUNS[0]} llama-mtmd-cli rerun(s) for a truncated output)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
