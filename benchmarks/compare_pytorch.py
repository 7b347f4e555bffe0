#!/usr/bin/env python3
"""Plain PyTorch (eager) versions of the methods the CUDA backend implements, timed on the same
synthetic fp16 shapes as benchmarks/bench_cuda_methods.cu, for a side-by-side table.

    python3 benchmarks/compare_pytorch.py [--repeat 50] [--cuda-json bench_cuda_methods.json]
                                          [--sdpa-out sdpa.json]

--cuda-json takes the output of
    bench_cuda_methods --benchmark_out=bench_cuda_methods.json --benchmark_out_format=json
and adds the tokensel column. Without PyTorch or without a CUDA device the script says so and
exits with status 0 (nothing to compare). The PyTorch versions follow the spec
(shared/spec/algorithms.md) but are not bit-exact references: they are the obvious eager code a
user would write (torch.topk ties, torch.quantile), timed for speed only.

It also times one attention forward with torch.nn.functional.scaled_dot_product_attention (the
flash-attention backend where PyTorch has it) over the Q/K/V shapes of benchmarks/bench_cuda_qk.cu
(fp16, batch 1): the yardstick of the target "Q/K statistics no slower than one flash-attention
forward" (benchmarks/cuda_targets.py). --sdpa-out writes those times as {layer: us}.
"""
import argparse
import json
import statistics
import sys

ENCODER = [("llava15_b1", 1, 16, 577, 1), ("llava15_b64", 64, 16, 577, 64), ("next5", 5, 16, 577, 1), ("video8", 8, 16, 257, 1)]
QK_LAYERS = [("clip_577", 16, 577, 64, False), ("vicuna7b_600", 32, 600, 128, True), ("vicuna7b_2900", 32, 2900, 128, True)]
LLM = [("llava15_b1", 1, 32, 35, 576, 40, 1), ("llava15_b64", 64, 32, 35, 576, 40, 64), ("next5", 1, 32, 35, 2880, 40, 1),
       ("video8", 1, 32, 35, 2048, 40, 1)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--cuda-json", default=None)
    ap.add_argument("--sdpa-out", default=None, help="write the SDPA forward times {layer: us} here")
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        print("PyTorch is not installed: nothing to compare.")
        return 0
    if not torch.cuda.is_available():
        print("PyTorch has no CUDA device: nothing to compare (GPU numbers still to be measured).")
        return 0
    dev = torch.device("cuda")
    torch.manual_seed(7)

    def attention(batch, heads, q, k):
        logits = torch.randn(1, heads, q, k, device=dev) * 1.5
        return torch.softmax(logits, dim=-1).half().expand(batch, heads, q, k).contiguous()

    def timed(fn):
        fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(args.repeat):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) * 1e3)  # us
        return statistics.median(times)

    def fopru(A, ratio=0.5):
        M = A[:, :, 1:, 1:].float().mean(1)
        s1, s2 = M.mean(-1), M.mean(-2)
        rows = (s1.double().var(-1, unbiased=False) > s2.double().var(-1, unbiased=False)).unsqueeze(-1)
        sig = torch.where(rows, s1, s2)
        k = max(1, int(sig.shape[-1] * ratio))
        return torch.sort(torch.topk(sig, k, dim=-1).indices, dim=-1).values

    def freepruner(layers, k=8, c=1.5):
        P = None
        for A in layers:
            M = A[:, :, 1:, 1:].float().mean(1)
            r = M.sum(1) - torch.diagonal(M, dim1=-2, dim2=-1)
            top = torch.zeros_like(r, dtype=torch.bool).scatter_(-1, torch.topk(r, k, dim=-1).indices, True)
            P = top if P is None else P | top
        q = torch.quantile(M.double(), torch.tensor([0.25, 0.75], device=dev, dtype=torch.double), dim=-1)
        fence = q[1] + c * (q[1] - q[0])
        C = ((M.double() > fence.unsqueeze(-1)) & P.unsqueeze(-1)).any(1)
        return P | C

    def fastv(A, s0, n, ratio=0.5):
        scores = A[:, :, -1, s0:s0 + n].float().mean(1)
        k = round(n * (1 - ratio))
        return torch.sort(torch.topk(scores, k, dim=-1).indices, dim=-1).values

    def fitprune(A, s0, n, drop):
        M = A[:, :, s0:, s0:s0 + n].float().amax(1)
        self_ = M[:, :n].sum(1) / n
        cross = M[:, n:].sum(1)
        dropped = torch.topk(cross * self_, drop, dim=-1, largest=False).indices
        keep = torch.ones_like(cross, dtype=torch.bool).scatter_(-1, dropped, False)
        return keep

    rows = []
    for name, batch, heads, tokens, images in ENCODER:
        A = attention(batch, heads, tokens, tokens)
        rows.append(("fopru", name, timed(lambda: fopru(A)) / images))
        rows.append(("freepruner", name, timed(lambda: freepruner([A] * 17)) / images))
        del A
    for name, batch, heads, prefix, visual, text, images in LLM:
        L = prefix + visual + text
        A = attention(batch, heads, L, L)
        rows.append(("fastv", name, timed(lambda: fastv(A, prefix, visual)) / images))
        rows.append(("fitprune", name, timed(lambda: fitprune(A, prefix, visual, visual // 4)) / images))
        del A
        torch.cuda.empty_cache()

    # One attention forward per bench_cuda_qk.cu layer: Q/K/V [1, heads, n, d] fp16.
    sdpa, backend = {}, "flash"
    F = torch.nn.functional
    for name, heads, n, d, causal in QK_LAYERS:
        q, k, v = (torch.randn(1, heads, n, d, device=dev, dtype=torch.half) for _ in range(3))
        def forward():
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                sdpa[name] = timed(forward)
        except (ImportError, RuntimeError):
            backend = "default"  # no flash kernel for this build or shape: PyTorch's choice
            sdpa[name] = timed(forward)
        del q, k, v
    if args.sdpa_out:
        with open(args.sdpa_out, "w") as f:
            json.dump(sdpa, f, indent=1)

    ours = {}
    if args.cuda_json:
        with open(args.cuda_json) as f:
            for b in json.load(f).get("benchmarks", []):
                parts = b["name"].split("/")
                if len(parts) >= 3 and parts[0].startswith("cuda_") and "us_per_image" in b:
                    ours[(parts[0][5:], parts[2])] = b["us_per_image"]
    print(f"| method | shape | PyTorch eager (us/image) | tokensel CUDA (us/image) |")
    print(f"|---|---|---|---|")
    for method, shape, us in rows:
        t = ours.get((method, shape))
        print(f"| {method} | {shape} | {us:.1f} | {'' if t is None else f'{t:.1f}'} |")
    print()
    print(f"| layer (Q/K/V fp16, batch 1) | SDPA forward, {backend} backend (us) |")
    print(f"|---|---|")
    for name, us in sdpa.items():
        print(f"| {name} | {us:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
