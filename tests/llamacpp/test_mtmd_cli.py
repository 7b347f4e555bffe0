#!/usr/bin/env python3
"""tokensel-llamacpp's unpruned answer against llama.cpp's own llama-mtmd-cli on the same input.

    test_mtmd_cli.py --tool build/examples/llamacpp/tokensel-llamacpp --mtmd-cli build/examples/llamacpp/llama-mtmd-cli

The tiny GGUF has no chat template, so llama-mtmd-cli runs with the one it suggests for LLaVA-1.5
(--chat-template vicuna: "USER: {prompt}\\nASSISTANT:") and -p "<__media__>\\n{question}", and
tokensel-llamacpp gets that formatted prompt verbatim (--template raw). llama-mtmd-cli's debug log
shows the prompt it formatted; the test checks it is that string. Both run greedily (llama-mtmd-cli:
--temp 0, a fixed seed; the example: argmax), one thread, for 16 new tokens, on square and
non-square images, two questions, and two flash-attention settings: on (llama-mtmd-cli -fa on, CLIP
and LLM; the example --from-qk, CLIP on, its LLM context on llama.cpp's default, which is on for the
CPU) and off in CLIP (llama-mtmd-cli -fa off, LLM off too; the example's default, which reads the
softmax). The generated text must be equal (and 16 tokens long on the example's side, so no early
end hides a difference).
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "tests", "data")
GGUF = os.path.join(DATA, "llava-tiny-gguf")
IMAGES = [os.path.join(DATA, "llava-images", f) for f in ("scene112.png", "shapes112.png", "scene.jpg", "shapes.png")]
QUESTIONS = ["What is in the image?", "Describe the colours."]
N = 16
MARKER = "<tokensel-response>"
RERUNS = [0]  # llama-mtmd-cli runs repeated for an incomplete output


# (llama-mtmd-cli -fa, the example's flag)
FLASH = [("on", ["--from-qk"]), ("off", [])]


def mtmd_cli(a, image, question, fa):
    cmd = [a.mtmd_cli, "-m", os.path.join(GGUF, "model-f32.gguf"), "--mmproj", os.path.join(GGUF, "mmproj-f32.gguf"),
           "--image", image, "-p", "<__media__>\n" + question, "--chat-template", "vicuna", "--temp", "0", "--seed", "1",
           "-n", str(N), "-t", "1", "-tb", "1", "-fa", fa, "-v"]
    # llama-mtmd-cli prints through llama.cpp's asynchronous logger, which is not flushed at exit
    # (common/log.cpp leaks it on purpose): now and then the end of its output is lost. A complete
    # stdout is: the marker, a newline after the prefill, the generated pieces, and the closing
    # "\n\n" printed after them (no end-of-generation newline: N tokens, the tiny model never ends
    # early here). A truncated one is run again; a wrong answer stays wrong however often it runs.
    for attempt in range(8):
        p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, MTMD_TEST_RESPONSE_MARKER=MARKER))
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: exit {p.returncode}: {p.stderr[-2000:]}")
        _, sep, response = p.stdout.partition(MARKER + "\n\n")
        if sep and response.endswith("\n\n"):
            return response[:-2].lstrip(" "), p.stderr
        RERUNS[0] += 1
    raise RuntimeError(f"llama-mtmd-cli's output was incomplete in 8 runs: {p.stdout!r}")


def ours(a, image, prompt, flags):
    cmd = [a.tool, "--model", os.path.join(GGUF, "model-f32.gguf"), "--mmproj", os.path.join(GGUF, "mmproj-f32.gguf"),
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
    for exe in (a.tool, a.mtmd_cli):
        if not os.access(exe, os.X_OK):
            print(f"FAIL {exe} is not built (cmake --build BUILD --target {os.path.basename(exe)})")
            return 1
    t0, failures = time.monotonic(), 0
    for image in IMAGES:
        for question in QUESTIONS:
            for fa, flags in FLASH:
                formatted = f"USER: <__media__>\n{question}\nASSISTANT:"  # llama.cpp's vicuna template
                theirs, log = mtmd_cli(a, image, question, fa)
                mine = ours(a, image, formatted.replace("<__media__>", "<image>"), flags)
                what = f"{os.path.basename(image)} {question!r} flash attention {fa}"
                if "formatted_chat.prompt: " + formatted not in log:
                    failures += 1
                    print(f"FAIL {what}: llama-mtmd-cli did not format the prompt as {formatted!r}")
                elif mine["answer"] != theirs or len(mine["answer_ids"]) != N:
                    failures += 1
                    print(f"FAIL {what}:\n  tokensel-llamacpp {mine['answer']!r} {mine['answer_ids']}\n  llama-mtmd-cli    {theirs!r}")
                else:
                    print(f"ok   {what}: {N} tokens equal llama-mtmd-cli's: {theirs!r}")
    print(f"{failures} failure(s) in {time.monotonic() - t0:.1f} s ({RERUNS[0]} llama-mtmd-cli rerun(s) for a truncated output)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
