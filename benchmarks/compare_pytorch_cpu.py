#!/usr/bin/env python3
"""tokensel (CPU) against plain PyTorch eager code of the same methods, on the same tensors, in one
process, with the same thread count; checks that both keep the same tokens.

    python3 benchmarks/compare_pytorch_cpu.py [--threads 1,2] [--repeat 7] [--dtypes f32,f16,bf16]
        [--bench-dir build-bench/bench-results] [--json out.json] [--markdown out.md] [--plot out.png]

Why the Python package and not the benchmark binaries' JSON: identical inputs. The binaries draw
their own synthetic maps in C++ (bench_common.hpp); here one set of torch tensors goes to both
implementations (to tokensel through DLPack, read in place, no copy), so the kept tokens can be
compared index by index. The price is the binding's cost (argument checks, the output arrays it
allocates, and whatever path the binding takes through the library), which a Python user pays as
well. The goal column is judged on the C++ benchmark of the same method, shape, dtype and policy
(`--bench-dir`, run_all.sh's JSON, on the benchmark's own synthetic input of that shape) when one
exists: that is the library itself; the Python ratio is shown beside it. Note that the Python
package always runs the library's threaded code path (`threaded_policy{threads}`, also for
threads=1), so where a method's `par` path is slower than its `seq` path (see the floor table),
the Python column shows that.

The PyTorch versions are written here from the algorithms (official repositories of FastV,
LLaVA-PruMerge, VisionZip, FitPrune, DivPrune, DART and VisPruner; the FoPru and freePruner papers;
the project's spec) as the
fastest eager code a user would reasonably write: vectorised (no per-token Python loops, where the
official PruMerge code has one), reading only the rows a method needs (the CLS query row for
PruMerge, not the full Q K^T the official code forms), fp16/bf16 reduced with an fp32 accumulator
(`sum(..., dtype=torch.float32)`, no widened copy of the map). Ties go to torch.topk's order.

Threads: `--threads 1` runs torch.set_num_threads(1) against tokensel's sequential policy
(threads=1); any other count N runs torch.set_num_threads(N) against threads=0 (OpenMP over all
cores), so N should be the core count (OMP_NUM_THREADS is set to it before tokensel loads).

The tokensel package is imported from PYTHONPATH (benchmarks/report.sh builds it with -march=native
like the benchmark binaries). Exit status 1 when a selection differs without a near-tie to explain
it, so the command can gate a run.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

LLAVA_N, HEADS, D_CLIP, D_HEAD = 577, 16, 1024, 64
LLM_HEADS, PREFIX, TEXT = 32, 35, 40
DTYPES = ("f32", "f16", "bf16")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default=f"1,{os.cpu_count()}", help="comma-separated thread counts (1 and/or the core count)")
    ap.add_argument("--repeat", type=int, default=7, help="timed repetitions per case (median reported)")
    ap.add_argument("--min-time", type=float, default=0.02, help="seconds per repetition (short calls loop)")
    ap.add_argument("--dtypes", default="f32,f16,bf16")
    ap.add_argument("--only", default="", help="comma-separated method prefixes to run (e.g. fopru,fastv)")
    ap.add_argument("--no-next5-freepruner", action="store_true", help="skip freePruner at next5 (17 x 5 maps: 1.8 GB fp32)")
    ap.add_argument("--bench-dir", default=None, help="run_all.sh output (bench_*.json): C++ times and peak heap")
    ap.add_argument("--json", default=None, help="write every measured row here")
    ap.add_argument("--markdown", default=None, help="write the Markdown table here")
    ap.add_argument("--plot", default=None, help="write the PNG plot here (matplotlib)")
    return ap.parse_args()


# ---- inputs (one set of tensors for both implementations) ---------------------------------------

def encoder_attention(torch, batch, seed, heads=HEADS, n=LLAVA_N):
    """Softmax rows over random logits with the structure of CLIP maps: key salience shared by the
    heads of a view, a CLS column boost, a mild diagonal (as benchmarks/bench_common.hpp)."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(batch, heads, n, n)
    boost = 4.0 + 0.25 * (torch.arange(heads) % 8).float()
    for b in range(batch):
        logits = torch.randn(heads, n, n, generator=g).mul_(1.1)
        logits += torch.randn(1, 1, n, generator=g)
        logits[:, :, 0] += boost[:, None]
        logits.diagonal(dim1=1, dim2=2).add_(1.0)
        out[b] = torch.softmax(logits, dim=-1)
    return out


def llm_attention(torch, visual, seed):
    """One causal prefill layer [32, L, L]: BOS sink, recency, 16 salient visual tokens."""
    g = torch.Generator().manual_seed(seed)
    L = PREFIX + visual + TEXT
    salient = PREFIX + torch.randint(0, visual, (16,), generator=g)
    out = torch.empty(LLM_HEADS, L, L)
    mask = torch.ones(L, L, dtype=torch.bool).triu_(1)
    for h in range(LLM_HEADS):
        logits = torch.randn(L, L, generator=g).mul_(1.5)
        logits[:, 0] += 5.0
        logits[:, salient] += 2.5
        logits.diagonal().add_(1.0)
        logits.masked_fill_(mask, float("-inf"))
        out[h] = torch.softmax(logits, dim=-1)
    return out


# ---- PyTorch eager implementations ---------------------------------------------------------------
# Each returns (list of kept-index arrays per sample, list of ranking scores per sample or None,
# merged rows or None). Indices follow tokensel's conventions so they compare directly.

def t_fopru(torch, A, ratio=0.5, row=False):
    """FoPru (paper eq. 2-4): head mean over the patch submatrix, variance-axis significance."""
    M = A[:, :, 1:, 1:].sum(1, dtype=torch.float32) / A.shape[1]
    s1, s2 = M.mean(-1), M.mean(-2)
    rows = s1.double().var(-1, unbiased=False) > s2.double().var(-1, unbiased=False)
    sig = torch.where(rows[:, None], s1, s2)
    n = sig.shape[-1]
    if not row:
        k = max(1, int(n * ratio))
        return list(torch.topk(sig, k, dim=-1).indices.sort(-1).values), list(sig), None
    g = int(math.isqrt(n))
    score = sig.view(-1, g, g).sum(-1)
    kr = max(1, int(g * ratio))
    top = torch.topk(score, kr, dim=-1).indices.sort(-1).values
    idx = (top[:, :, None] * g + torch.arange(g)).flatten(1)
    return list(idx), list(score), None


def t_freepruner(torch, layers, k_pivotal=8, c=1.5):
    """freePruner adaptive (paper eq. 3 + IQR complement): layers [L, B, H, N, N], 6..22."""
    L, B = layers.shape[0], layers.shape[1]
    n = layers.shape[-1] - 1
    pivotal = torch.zeros(B, n, dtype=torch.bool)
    for l in range(L):
        M = layers[l, :, :, 1:, 1:].sum(1, dtype=torch.float32) / layers.shape[2]
        r = M.sum(1) - M.diagonal(dim1=1, dim2=2)
        pivotal.scatter_(1, torch.topk(r, k_pivotal, dim=-1).indices, True)
    out = []
    for b in range(B):  # |P| differs per image
        rows = M[b][pivotal[b]].double()
        q = torch.quantile(rows, torch.tensor([0.25, 0.75], dtype=torch.float64), dim=-1)
        fence = q[1] + c * (q[1] - q[0])
        comp = (rows > fence[:, None]).any(0)
        out.append(torch.nonzero(pivotal[b] | comp).flatten())
    return out, None, None


def t_fastv(torch, A, s0, n, ratio=0.5):
    """FastV: head mean of the last query row over the visual columns, keep round(n (1 - R))."""
    s = A[:, -1, s0:s0 + n].sum(0, dtype=torch.float32) / A.shape[0]
    k = round(n * (1 - ratio))
    return [torch.topk(s, k).indices.sort().values], [s], None


def t_fitprune(torch, A, s0, n, drop):
    """FitPrune runtime rule: max over heads; drop the `drop` smallest cross * self."""
    M = A[:, s0:, s0:s0 + n].amax(0).float()
    score = M[n:].sum(0) * (M[:n].sum(0) / n)
    dropped = torch.topk(score, drop, largest=False).indices
    keep = torch.ones(n, dtype=torch.bool)
    keep[dropped] = False
    return [torch.nonzero(keep).flatten()], [-score], None


def t_prumerge(torch, q, k, x, plus=False, merge=True, neighbours=32, c=1.5):
    """PruMerge(+) on one view: CLS attention from Q K^T (one 1024-wide head), IQR count, top-Kc,
    optional stride grid, cosine 32-NN merge over normalised keys, extra token. Fixed mode (ascending)."""
    n = k.shape[0] - 1
    kf = k.float()
    a = torch.softmax((kf @ q[0].float()) * k.shape[1] ** -0.5, dim=0)[1:]
    q1, q3 = torch.quantile(a.double(), torch.tensor([0.25, 0.75], dtype=torch.float64))
    kc = int((a.double() > q3 + c * (q3 - q1)).sum())
    idx = torch.topk(a, kc).indices
    if plus and kc > 0:
        grid = torch.arange(0, n - 1, max(1, (n // kc) // 3))
        idx = torch.cat([idx, grid[~torch.isin(grid, idx)]])
    idx = idx.sort().values
    if not merge:
        return [idx], [a], x[idx].float()
    u = torch.nn.functional.normalize(kf[1:], dim=-1)
    sim = u[idx] @ u.T
    sim[torch.arange(idx.numel()), idx] = float("-inf")
    nn_idx = torch.topk(sim, neighbours, dim=-1).indices
    xf = x.float()
    rows = xf[idx] + torch.einsum("kj,kjd->kd", a[nn_idx], xf[nn_idx])
    rest = torch.ones(n, dtype=torch.bool)
    rest[idx] = False
    extra = (a * rest) @ xf
    return [idx], [a], torch.cat([rows, extra[None]])


def t_visionzip(torch, A, keys, hidden, dominant=54, contextual=10):
    """VisionZip (official algorithm): CLS row summed over heads -> dominant; key mean over heads,
    L2-normalised, strided targets, argmax assignment, mean merge. A [B,H,N,N], keys [B,H,N,dh]."""
    B, N = A.shape[0], A.shape[-1]
    cls = A[:, :, 0, 1:].sum(1, dtype=torch.float32)
    top = torch.topk(cls, dominant - 1, dim=-1).indices + 1
    dom = torch.cat([torch.zeros(B, 1, dtype=torch.long), top], 1).sort(-1).values
    keep = torch.zeros(B, N, dtype=torch.bool)
    keep.scatter_(1, dom, True)
    R = N - dominant
    rest = torch.nonzero(~keep)[:, 1].view(B, R)
    metric = keys.sum(1, dtype=torch.float32) / keys.shape[1]
    m = torch.nn.functional.normalize(torch.gather(metric, 1, rest[:, :, None].expand(-1, -1, metric.shape[-1])), dim=-1)
    targets = torch.arange(0, R, max(1, R // contextual))[:contextual]
    others = torch.ones(R, dtype=torch.bool)
    others[targets] = False
    hf = hidden.float()
    hr = torch.gather(hf, 1, rest[:, :, None].expand(-1, -1, hf.shape[-1]))
    assign = (m[:, others] @ m[:, targets].transpose(1, 2)).argmax(-1)
    onehot = torch.nn.functional.one_hot(assign, contextual).float()
    # The official merge: target + the mean of the tokens assigned to it (not a mean over both).
    ctx = hr[:, targets] + (onehot.transpose(1, 2) @ hr[:, others]) / onehot.sum(1).clamp(min=1)[:, :, None]
    rows = torch.cat([torch.gather(hf, 1, dom[:, :, None].expand(-1, -1, hf.shape[-1])), ctx], 1)
    idx = torch.cat([dom, rest[:, targets]], 1)
    return list(idx), [cls[b] for b in range(B)], rows


def t_pool(torch, x, g):
    """2 x 2 average pooling on the g x g patch grid: [n, d] -> [(g/2)^2, d]."""
    d = x.shape[-1]
    y = torch.nn.functional.avg_pool2d(x.float().view(g, g, d).permute(2, 0, 1)[None], 2)
    return None, None, y[0].permute(1, 2, 0).reshape(-1, d)


def t_divprune(torch, x, k):
    """DivPrune (official vbdi/divprune): cosine distance 1 - cos over the features, the first token
    the one whose nearest other token is farthest, then greedily the token farthest from the kept
    set (max-min). The official loop recomputes the min over every kept row each step; a running
    minimum is the same values, O(n) per step."""
    u = torch.nn.functional.normalize(x.float(), dim=-1)
    dist = 1.0 - u @ u.T
    dist.fill_diagonal_(float("inf"))
    first = int(dist.min(0).values.argmax())
    kept = torch.zeros(x.shape[0], dtype=torch.bool)
    kept[first] = True
    running = dist[first].clone()
    for _ in range(k - 1):
        j = int(running.masked_fill(kept, float("-inf")).argmax())
        kept[j] = True
        running = torch.minimum(running, dist[j])
    return [torch.nonzero(kept).flatten()], None, None


def t_dart(torch, keys, hidden, s0, n, k, image_pivots=4, text_pivots=4):
    """DART (official ZichenWen1/DART): pivots = the visual and the text tokens with the largest L1
    norm of their layer-(K-1) keys; each pivot (ascending position) takes its quota of the
    remaining visual tokens with the lowest cosine similarity of the hidden states to it. Quota:
    the k - image_pivots tokens split evenly, the first pivots one more (the library's exact-k
    rule; k = 4 + 8 t is the official TOKEN_TOPK = t)."""
    a = keys.float().abs().sum((0, 2))
    ip = torch.topk(a[s0:s0 + n], image_pivots).indices
    tp = torch.topk(a[s0 + n:], min(text_pivots, a.shape[0] - s0 - n)).indices + s0 + n
    pivots = torch.cat([ip + s0, tp]).sort().values
    u = torch.nn.functional.normalize(hidden.float(), dim=-1)
    sim = u[pivots] @ u[s0:s0 + n].T
    pool = torch.ones(n, dtype=torch.bool)
    pool[ip] = False
    rest, P = k - image_pivots, pivots.numel()
    taken = [ip]
    for i in range(P):
        q = rest // P + (1 if i < rest % P else 0)
        t = torch.topk(sim[i].masked_fill(~pool, float("inf")), q, largest=False).indices
        pool[t] = False
        taken.append(t)
    return [torch.cat(taken).sort().values], None, None


def t_vispruner(torch, A, x, count=64, important_ratio=0.5, drop=8):
    """VisPruner (official Theia-4869/VisPruner): CLS attention (head mean) ranks the patches; the
    first T_imp are important; the rest lose duplicates round by round (even positions a scored by
    their highest cosine to the odd positions b; the r highest dropped; a by descending score,
    then b) until T - T_imp remain."""
    s = A[:, 0, 1:].sum(0, dtype=torch.float32) / A.shape[0]
    order = torch.sort(s, descending=True, stable=True).indices
    t_imp = int(count * important_ratio)
    t_div = count - t_imp
    u = torch.nn.functional.normalize(x.float(), dim=-1)
    rest = order[t_imp:]
    while rest.numel() > t_div:
        r = min(drop, rest.numel() - t_div)
        a, b = rest[0::2], rest[1::2]
        score = (u[a] @ u[b].T).max(-1).values
        keep_a = a[torch.sort(score, descending=True, stable=True).indices[r:]]
        rest = torch.cat([keep_a, b])
    return [torch.cat([order[:t_imp], rest]).sort().values], [s], None


def t_uniform(torch, n, k):
    """Evenly spaced: token floor((2i + 1) n / (2k)) (the library's 1-D rule)."""
    return [(2 * torch.arange(k) + 1) * n // (2 * k)], None, None


def t_random(torch, n, k):
    return [torch.randperm(n)[:k].sort().values], None, None


# ---- tokensel calls, normalised to the same shape of result ---------------------------------------

def as_list(idx):
    if isinstance(idx, list):
        return [i for i in idx]
    return [idx] if idx.ndim == 1 else list(idx)


# ---- timing and checking -------------------------------------------------------------------------

def time_pair(fa, fb, repeat, min_time):
    """Median seconds per call of fa and fb, their repetitions interleaved (same conditions)."""
    fa(), fb()
    inner = []
    for f in (fa, fb):
        t0 = time.perf_counter()
        f()
        one = time.perf_counter() - t0
        inner.append(max(1, int(min_time / max(one, 1e-7))))
    ta, tb = [], []
    for _ in range(repeat):
        for f, k, acc in ((fa, inner[0], ta), (fb, inner[1], tb)):
            t0 = time.perf_counter()
            for _ in range(k):
                f()
            acc.append((time.perf_counter() - t0) / k)
    return statistics.median(ta), statistics.median(tb)


def compare(np, torch, ours, theirs, scores, rows_ours, rows_theirs):
    """'same', or what differs and whether a near-tie explains it."""
    notes, explained = [], True
    if ours is not None:
        diff_total = 0
        for b, (a, t) in enumerate(zip(ours, theirs)):
            a = np.asarray(a, dtype=np.int64)
            t = t.numpy().astype(np.int64)
            if a.shape == t.shape and np.array_equal(a, t):
                continue
            sa, st = set(a.tolist()), set(t.tolist())
            only = sorted(sa ^ st)
            diff_total += len(only)
            if scores is None or not only:
                explained = False
                notes.append(f"sample {b}: {len(only)} tokens differ" if only else f"sample {b}: same set, other order")
                continue
            s = scores[b].double()
            vals = s[torch.tensor(only)]
            spread = float((vals.max() - vals.min()) / max(float(vals.abs().max()), 1e-30))
            if spread > 1e-5:
                explained = False
            notes.append(f"sample {b}: {len(only)} tokens differ, their scores within {spread:.1e} (relative)")
        if diff_total == 0:
            notes.append("same tokens")
    if rows_ours is not None and rows_theirs is not None:
        ro = np.concatenate([np.asarray(x, dtype=np.float64).reshape(-1) for x in
                             (rows_ours if isinstance(rows_ours, list) else [rows_ours])])
        rt = torch.cat([x.double().reshape(-1) for x in
                        (rows_theirs if isinstance(rows_theirs, list) else [rows_theirs])]).numpy()
        if ro.shape != rt.shape:
            notes.append(f"rows: {ro.size} vs {rt.size} values")
            explained = explained and ours is not None and "same tokens" not in notes
        else:
            err = float(np.max(np.abs(ro - rt)) / max(float(np.max(np.abs(rt))), 1e-30))
            notes.append(f"rows max rel. diff {err:.1e}")
            if err > 1e-2:
                explained = False
    return "; ".join(notes), explained


def load_cpp(bench_dir):
    """{benchmark name without /real_time: {"us": median (or only) time, "heap": peak heap bytes}}.
    The peak comes from the repetition Google Benchmark ran with the memory manager (the last one;
    the field of the other repetitions is uninitialised, hence the range check)."""
    out = {}
    if not bench_dir or not os.path.isdir(bench_dir):
        return out
    for fn in sorted(os.listdir(bench_dir)):
        if not (fn.startswith("bench_") and fn.endswith(".json")):
            continue
        try:
            with open(os.path.join(bench_dir, fn)) as f:
                rows = json.load(f).get("benchmarks", [])
        except ValueError as e:  # an executable that failed part-way leaves cut JSON
            print(f"{fn}: unreadable ({e}); its rows are missing", file=sys.stderr)
            continue
        has_median = any(r.get("aggregate_name") == "median" for r in rows)
        for r in rows:
            name = r.get("run_name", r["name"]).removesuffix("/threads:2").removesuffix("/real_time")
            e = out.setdefault(name, {})
            if r.get("run_type") != "aggregate" and 0 <= r.get("max_bytes_used", -1) < 1 << 40:
                e["heap"] = r["max_bytes_used"]
            if r.get("error_occurred") or (has_median and r.get("aggregate_name") != "median"):
                continue
            unit = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}[r.get("time_unit", "ns")]
            e["us"] = r["real_time"] * unit
            e["bytes_per_call"] = r.get("bytes_per_second", 0) * r["real_time"] * unit * 1e-6
            e["label"] = r.get("label", "")
            e["kept"] = r.get("kept")
        cvs = {r.get("run_name", "").removesuffix("/threads:2").removesuffix("/real_time"): r["real_time"]
               for r in rows if r.get("aggregate_name") == "cv"}
        for name, cv in cvs.items():
            out.setdefault(name, {})["cv"] = cv
    return out


def attach_cpp(r, cpp):
    """Adds the matching C++ benchmark to a row: its time, peak heap, and its floor's time (the
    benchmark's `floor=` label). `cpp_name` has no policy suffix; seq answers 1 thread, par more."""
    name = r.get("cpp_name")
    e = {}
    if name:
        e = cpp.get(f"{name}/{'seq' if r['threads'] == 1 else 'par'}") or (cpp.get(name, {}) if r["threads"] == 1 else {})
    us = e.get("us")
    label = e.get("label", "")
    floor = cpp.get(label[len("floor="):], {}).get("us") if label.startswith("floor=") else None
    r.update(cpp_us=us, cpp_ratio=None if us is None else us * 1e-6 / r["torch_s"], heap=e.get("heap"),
             floor_us=floor)
    return r


# ---- the cases -----------------------------------------------------------------------------------

def build_cases(torch, ts, dtypes, args):
    """Yields (method, dtype, shape, images, cpp_name_or_None, tokensel fn(threads), torch fn, input bytes)."""
    tdt = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
    want = [w for w in args.only.split(",") if w]
    on = lambda m: not want or any(m.startswith(w) for w in want)
    nbytes = lambda *xs: sum(x.numel() * x.element_size() for x in xs)

    if on("fopru") or on("visionzip"):
        base = encoder_attention(torch, 16, 1)
        g = torch.Generator().manual_seed(2)
        keys_f = torch.randn(16, HEADS, LLAVA_N, D_HEAD, generator=g)
        hid_f = torch.randn(16, LLAVA_N, D_CLIP, generator=g)
        for dt in dtypes:
            A16 = base.to(tdt[dt])
            K16, H16 = keys_f.to(tdt[dt]), hid_f.to(tdt[dt])
            for shape, A, K, H, imgs in (("llava15", A16[:1], K16[:1], H16[:1], 1), ("llava15_b16", A16, K16, H16, 16),
                                         ("next5", A16[:5], K16[:5], H16[:5], 1)):
                cpp_shape = shape if shape != "llava15_b16" else None
                for strat in ("rank", "row"):
                    if not on("fopru"):
                        break
                    cfg = ts.fopru.config(ratio=0.5, strategy=getattr(ts.fopru.strategy, strat))
                    A1 = A[0] if imgs == 1 and shape == "llava15" else A
                    yield (f"fopru/{strat}", dt, shape, A.shape[0] if shape == "llava15_b16" else 1,
                           cpp_shape and f"fopru/{strat}/{dt}/{cpp_shape}",
                           (lambda A1=A1, cfg=cfg: lambda th: (as_list(ts.fopru.select(A1, cfg, threads=th)), None)),
                           (lambda A=A, strat=strat: lambda: t_fopru(torch, A, row=(strat == "row"))), nbytes(A))
                if on("visionzip"):
                    def vz(th, A=A, K=K, H=H):
                        if A.shape[0] == 1:
                            i, r = ts.visionzip.select(A[0], K[0], H[0], threads=th)
                            return [i], r
                        i, r = ts.visionzip.select(A, K, H, threads=th)
                        return as_list(i), r
                    yield ("visionzip/54+10", dt, shape, A.shape[0] if shape == "llava15_b16" else 1,
                           cpp_shape and f"visionzip/54+10/{dt}/{cpp_shape}", (lambda vz=vz: vz),
                           (lambda A=A, K=K, H=H: lambda: t_visionzip(torch, A, K, H)),
                           nbytes(A[:, :, 0], K, H))
            del A16, K16, H16
        del base, keys_f, hid_f

    if on("freepruner"):
        shapes = [("llava15", 1)] + ([] if args.no_next5_freepruner else [("next5", 5)])
        for shape, views in shapes:
            base = torch.stack([encoder_attention(torch, views, 100 + l) for l in range(17)])  # layers 6..22
            for dt in dtypes:
                Ls = base.to(tdt[dt])
                X = Ls[:, 0] if views == 1 else Ls
                cfg = ts.freepruner.config(heads=ts.head_reduction.mean)
                yield ("freepruner/adaptive", dt, shape, 1, f"freepruner/oneshot/adaptive/{dt}/{shape}",
                       (lambda X=X, cfg=cfg: lambda th: (as_list(ts.freepruner.select(X, cfg, layer_offset=6, threads=th)), None)),
                       (lambda Ls=Ls: lambda: t_freepruner(torch, Ls)), nbytes(Ls))
                del Ls, X
            del base

    if on("prumerge"):
        g = torch.Generator().manual_seed(3)
        qf = torch.randn(16, LLAVA_N, D_CLIP, generator=g)
        kf = torch.randn(16, LLAVA_N, D_CLIP, generator=g)
        xf = torch.randn(16, LLAVA_N - 1, D_CLIP, generator=g)
        for dt in dtypes:
            Q, K, X = qf.to(tdt[dt]), kf.to(tdt[dt]), xf.to(tdt[dt])
            for variant, plus, merge in (("select", False, False), ("merge", False, True), ("plus_merge", True, True)):
                cfg = ts.prumerge.config(plus=plus, merge=merge)
                for shape, views, imgs in (("llava15", 1, 1), ("llava15_b16", 16, 16), ("next5", 5, 1)):
                    def pm(th, views=views, cfg=cfg, merge=merge):
                        idx, rows = [], []
                        for v in range(views):
                            if merge:
                                i, r = ts.prumerge.select(Q[v], K[v], cfg, features=X[v], threads=th)
                                rows.append(r)
                            else:
                                i = ts.prumerge.select(Q[v], K[v], cfg, threads=th)
                            idx.append(i)
                        return idx, (rows if merge else None)

                    def tp(views=views, plus=plus, merge=merge):
                        idx, sc, rows = [], [], []
                        for v in range(views):
                            i, s, r = t_prumerge(torch, Q[v], K[v], X[v], plus=plus, merge=merge)
                            idx += i
                            sc += s
                            rows.append(r)
                        return idx, sc, (rows if merge else None)
                    yield (f"prumerge/{variant}", dt, shape, imgs, None if shape == "llava15_b16" else f"prumerge/{variant}/{dt}/{shape}",
                           (lambda pm=pm: pm), (lambda tp=tp: tp),
                           nbytes(Q[:views, 0], K[:views]) + (nbytes(X[:views]) if merge else 0))
            del Q, K, X

    if on("fastv") or on("fitprune"):
        for shape, visual in (("llava15", 576), ("next5", 2880)):
            base = llm_attention(torch, visual, 4)
            for dt in dtypes:
                A = base.to(tdt[dt])
                if on("fastv"):
                    yield ("fastv/K2_R0.5", dt, shape, 1, f"fastv/K2_R0.5/{dt}/{shape}",
                           (lambda A=A, v=visual: lambda th: (as_list(ts.fastv.select(A, (PREFIX, v), threads=th)), None)),
                           (lambda A=A, v=visual: lambda: t_fastv(torch, A, PREFIX, v)), nbytes(A[:, -1, PREFIX:PREFIX + visual]))
                if on("fitprune"):
                    drop = visual // 4
                    yield ("fitprune/prune_layer/drop25%", dt, shape, 1, f"fitprune/prune_layer/drop25%/{dt}/{shape}",
                           (lambda A=A, v=visual, d=drop: lambda th: (as_list(ts.fitprune.prune_layer(A, (PREFIX, v), d, threads=th)), None)),
                           (lambda A=A, v=visual, d=drop: lambda: t_fitprune(torch, A, PREFIX, v, d)),
                           nbytes(A[:, PREFIX:, PREFIX:PREFIX + visual]))
                del A
            del base

    if on("divprune") or on("dart") or on("vispruner"):
        g = torch.Generator().manual_seed(6)
        feat_f = torch.randn(LLAVA_N - 1, 4096, generator=g)  # DivPrune: projected features (Vicuna width)
        clip_f = torch.randn(LLAVA_N - 1, D_CLIP, generator=g)  # VisPruner: patch features
        L = PREFIX + LLAVA_N - 1 + TEXT
        keys_f = torch.randn(LLM_HEADS, L, 128, generator=g)  # DART: layer-1 keys, hidden states
        hid_f = torch.randn(L, 4096, generator=g)
        cls_f = encoder_attention(torch, 1, 7)[0, :, :1]  # VisPruner: the CLS query rows [16, 1, 577]
        for dt in dtypes:
            F, C, Kd, Hd, Ac = (t.to(tdt[dt]) for t in (feat_f, clip_f, keys_f, hid_f, cls_f))
            if on("divprune"):
                cfg = ts.divprune.config(count=144)
                yield ("divprune/keep144", dt, "llava15", 1, f"divprune/keep144/{dt}/llava15",
                       (lambda F=F, cfg=cfg: lambda th: (as_list(ts.divprune.select(F, cfg, threads=th)), None)),
                       (lambda F=F: lambda: t_divprune(torch, F, 144)), nbytes(F))
            if on("vispruner"):
                cfg = ts.vispruner.config(count=64)
                yield ("vispruner/keep64", dt, "llava15", 1, f"vispruner/keep64/{dt}/llava15",
                       (lambda Ac=Ac, C=C, cfg=cfg: lambda th: (as_list(ts.vispruner.select(Ac, C, cfg, threads=th)), None)),
                       (lambda Ac=Ac, C=C: lambda: t_vispruner(torch, Ac, C)), nbytes(Ac, C))
            if on("dart"):
                cfg = ts.dart.config(count=144)
                span = (PREFIX, LLAVA_N - 1)
                yield ("dart/keep144", dt, "llava15", 1, f"dart/keep144/{dt}/llava15",
                       (lambda Kd=Kd, Hd=Hd, cfg=cfg: lambda th: (as_list(ts.dart.select(Kd, Hd, span, cfg, threads=th)), None)),
                       (lambda Kd=Kd, Hd=Hd: lambda: t_dart(torch, Kd, Hd, PREFIX, LLAVA_N - 1, 144)), nbytes(Kd, Hd))
            del F, C, Kd, Hd, Ac

    if on("pool"):
        g = torch.Generator().manual_seed(5)
        xf = torch.randn(LLAVA_N - 1, D_CLIP, generator=g)
        for dt in dtypes:
            X = xf.to(tdt[dt])
            yield ("pool/2x2", dt, "llava15", 1, f"pool/2x2/{dt}/llava15",
                   (lambda X=X: lambda th: (None, ts.baselines.pool.apply(X, ts.token_grid(24, 24), threads=th))),
                   (lambda X=X: lambda: t_pool(torch, X, 24)), nbytes(X))
    if on("uniform"):
        cfg = ts.baselines.uniform.config(ratio=0.5)
        yield ("uniform/r0.5", "-", "n576", 1, None,  # the C++ benchmark uses the 24 x 24 grid rule
               lambda: lambda th: ([ts.baselines.uniform.select(576, cfg)], None), lambda: lambda: t_uniform(torch, 576, 288), 0)
    if on("random"):
        cfg = ts.baselines.random.config(ratio=0.5)
        yield ("random/r0.5", "-", "n576", 1, "random/r0.5/n576",  # no policy variants
               lambda: lambda th: ([ts.baselines.random.select(576, cfg)], None), lambda: lambda: t_random(torch, 576, 288), 0)


def fmt_us(s):
    us = s * 1e6
    return f"{us:.0f}" if us >= 100 else f"{us:.1f}"


def fmt_bytes(b):
    if b is None:
        return ""
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= div:
            return f"{b / div:.1f} {unit}"
    return f"{b} B"


def goal_ratio(r):
    """The ratio the goal is judged on: the C++ benchmark's time when there is one (the library
    itself, as the issue asks), else the time through the Python package."""
    return r["cpp_ratio"] if r["cpp_ratio"] is not None else r["ratio"]


def markdown(rows, threads_list):
    lines = ["| method | dtype | shape | threads | PyTorch eager (us/image) | tokensel C++ (us/image) | C++ / PyTorch | "
             "tokensel via Python (us/image) | Python / PyTorch | input / image | tokensel peak heap | same tokens? | "
             "goal: >= 10x faster at batch 1 |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(row_markdown(r))
    return "\n".join(lines) + "\n"


# Methods whose time is arithmetic, not bytes (no byte floor): why PyTorch keeps up with them.
COMPUTE_BOUND = {
    m: f"compute-bound ({what}): PyTorch runs it as BLAS matrix products with FMA; tokensel "
       "computes every dot in the canonical order without FMA, the order that makes CPU and CUDA "
       "bit-identical, so this row trades speed for exactness by design"
    for m, what in (("divprune/keep144", "the n x n cosine table, n^2 D / 2 multiply-adds"),
                    ("vispruner/keep64", "the cosine table of the remaining patches"),
                    ("dart/keep144", "pivot x token cosines over D = 4096"))
}


def goal_text(r):
    """'met', or the measured shortfall; when PyTorch eager itself runs within 10x of the floor
    (one read of the input), 10x is out of reach and the row says so with that bound."""
    if r["shape"] not in ("llava15", "next5", "n576"):
        return "(batch 16: no goal)"
    g = goal_ratio(r)
    if g <= 0.1:
        return "met"
    text = f"no: {1 / g:.1f}x faster" if g < 1 else f"no: {g:.1f}x slower"
    if r.get("cpp_ratio") is None:
        text += " (through Python: no C++ benchmark of this row)"
    if r["method"] in COMPUTE_BOUND and not r.get("floor_us"):
        text += "; " + COMPUTE_BOUND[r["method"]]
    if r.get("floor_us"):
        bound = r["torch_s"] / (r["floor_us"] * 1e-6)
        if bound < 10:
            text += f"; PyTorch is {bound:.1f}x the floor, so 10x is out of reach"
        else:
            text += f" (the floor allows {bound:.0f}x)"
    return text


def row_markdown(r):
    cpp = "" if r["cpp_us"] is None else (f"{r['cpp_us']:.0f}" if r["cpp_us"] >= 100 else f"{r['cpp_us']:.1f}")
    cr = "" if r["cpp_ratio"] is None else f"{r['cpp_ratio']:.3f}"
    return (f"| {r['method']} | {r['dtype']} | {r['shape']} | {r['threads']} | {fmt_us(r['torch_s'])} | {cpp} | {cr} | "
            f"{fmt_us(r['ours_s'])} | {r['ratio']:.3f} | {fmt_bytes(r['input_bytes'] or None)} | {fmt_bytes(r['heap'])} | "
            f"{r['check']} | {goal_text(r)} |")


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    one = [r for r in rows if r["threads"] == 1 and r["shape"] in ("llava15", "n576")]
    labels = sorted({r["method"] for r in one})
    dts = [d for d in ("f32", "f16", "bf16", "-") if any(r["dtype"] == d for r in one)]
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(labels) + 1.2), dpi=80)
    h = 0.8 / max(1, len(dts))
    for j, d in enumerate(dts):
        ys, xs = [], []
        for i, m in enumerate(labels):
            for r in one:
                if r["method"] == m and r["dtype"] == d:
                    ys.append(i + (j - (len(dts) - 1) / 2) * h)
                    xs.append(1 / goal_ratio(r))
        ax.barh(ys, xs, height=h, label={"f32": "f32 (C++ bench)", "f16": "f16 (C++ bench)", "bf16": "bf16 (C++ bench)",
                                          "-": "index only"}[d])
    ax.axvline(10, color="k", ls="--", lw=1, label="goal 10x")
    ax.axvline(1, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("speed-up: PyTorch eager time / tokensel time (1 thread, llava15, batch 1)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)


def main():
    args = parse_args()
    threads_list = [int(t) for t in args.threads.split(",") if t]
    os.environ.setdefault("OMP_NUM_THREADS", str(max(threads_list)))
    import numpy as np
    import torch
    import tokensel as ts
    dtypes = [d for d in args.dtypes.split(",") if d]
    cpp = load_cpp(args.bench_dir)
    rows, unexplained = [], 0
    print(f"tokensel from {os.path.dirname(ts.__file__)}; torch {torch.__version__}; threads {threads_list}", file=sys.stderr)
    torch.set_grad_enabled(False)
    for method, dt, shape, imgs, cpp_name, make_ours, make_theirs, in_bytes in build_cases(torch, ts, dtypes, args):
        ours_fn, theirs_fn = make_ours(), make_theirs()
        for th in threads_list:
            torch.set_num_threads(th)
            ts_threads = 1 if th == 1 else 0
            t_ours, t_theirs = time_pair(lambda: ours_fn(ts_threads), theirs_fn, args.repeat, args.min_time)
            o_idx, o_rows = ours_fn(ts_threads)
            t_idx, t_scores, t_rows = theirs_fn()
            if method.startswith("random"):
                check, ok = "not compared (different generators by design)", True
            else:
                check, ok = compare(np, torch, o_idx, t_idx, t_scores, o_rows, t_rows)
            if not ok:
                unexplained += 1
                check = "**MISMATCH** " + check
            r = {"method": method, "dtype": dt, "shape": shape, "threads": th, "ours_s": t_ours / imgs, "torch_s": t_theirs / imgs,
                 "ratio": t_ours / t_theirs, "cpp_name": cpp_name, "input_bytes": in_bytes // imgs, "check": check}
            attach_cpp(r, cpp)
            rows.append(r)
            print(f"{method:30s} {dt:4s} {shape:12s} t{th}  tokensel {fmt_us(r['ours_s']):>8s} us  torch {fmt_us(r['torch_s']):>8s} us"
                  f"  ratio {r['ratio']:.3f}  {check}", file=sys.stderr, flush=True)
    table = markdown(rows, threads_list)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": threads_list, "rows": rows}, f, indent=1)
    if args.plot:
        plot(rows, args.plot)
    if unexplained:
        print(f"{unexplained} rows with a selection difference that no near-tie explains", file=sys.stderr)
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
