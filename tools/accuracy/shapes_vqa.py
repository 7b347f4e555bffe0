#!/usr/bin/env python3
"""Synthetic visual question answering: coloured shapes on a cluttered background.

Every answer depends on *which* patches are kept: a shape's colour or kind is visible only in the
2-3 patches it covers, a count needs every instance, a left/right or quadrant answer needs the
shapes' positions. One-word answers. Everything is generated from a seed (numpy + Pillow).

Question types (chance level in brackets):
  color     "What colour is the triangle?"              red|green|blue|yellow|purple     (1/5)
  count     "How many circles are there?"               0|1|2|3                          (1/4)
  relation  "Is the square left of the star?"           yes|no                           (1/2)
  position  "What shape is in the top left?"            circle|square|triangle|star      (1/4)

Each sample's scene is drawn for its question: the asked shape is unique for colour and relation
questions (so the answer is defined), the asked count is uniform in 0..3, a relation's two shapes
are at least MIN_DX pixels apart horizontally, a quadrant question's quadrant holds exactly one
shape, wholly inside it, and no other shape crosses into it.

    python3 tools/accuracy/shapes_vqa.py --out DIR --split test --count 1000
writes DIR/test/NNNNN.png and DIR/test.jsonl ({"id", "image", "question", "answer", "type"}).
"""
import argparse
import json
import math
import os

import numpy as np
from PIL import Image, ImageDraw

SIZE = 96
SHAPES = ("circle", "square", "triangle", "star")
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 230),
           "yellow": (235, 210, 40), "purple": (150, 50, 190)}
TYPES = ("color", "count", "relation", "position")
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
MIN_SIDE, MAX_SIDE = 14, 22
MIN_DX = 12
# Seeds of the splits: disjoint streams of numpy's SeedSequence.
SPLIT_SEEDS = {"train": 1, "val": 2, "test": 3, "slice": 4}


def _background(rng):
    """Grey clutter: a noisy base level, grey blobs and lines (never saturated, so no shape colour)."""
    base = rng.uniform(90, 170)
    img = np.clip(base + rng.normal(0, 12, (SIZE, SIZE)), 0, 255)
    pil = Image.fromarray(np.repeat(img[:, :, None], 3, 2).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(pil)
    for _ in range(rng.integers(4, 9)):
        g = int(rng.uniform(40, 220))
        x0, y0 = rng.integers(0, SIZE, 2)
        w, h = rng.integers(4, 16, 2)
        if rng.random() < 0.5:
            d.ellipse([x0, y0, x0 + w, y0 + h], fill=(g, g, g))
        else:
            d.rectangle([x0, y0, x0 + w, y0 + h], fill=(g, g, g))
    for _ in range(rng.integers(3, 7)):
        g = int(rng.uniform(30, 230))
        p = [tuple(int(v) for v in rng.integers(0, SIZE, 2)) for _ in range(2)]
        d.line(p, fill=(g, g, g), width=int(rng.integers(1, 3)))
    return pil, d


def _draw(d, kind, box, fill):
    x0, y0, s = box
    x1, y1 = x0 + s - 1, y0 + s - 1
    if kind == "circle":
        d.ellipse([x0, y0, x1, y1], fill=fill)
    elif kind == "square":
        d.rectangle([x0, y0, x1, y1], fill=fill)
    elif kind == "triangle":
        d.polygon([(x0, y1), ((x0 + x1) / 2, y0), (x1, y1)], fill=fill)
    else:  # five-pointed star
        cx, cy, r_out = (x0 + x1) / 2, (y0 + y1) / 2, s / 2
        pts = []
        for i in range(10):
            r = r_out if i % 2 == 0 else r_out * 0.45
            a = -math.pi / 2 + i * math.pi / 5
            pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
        d.polygon(pts, fill=fill)


def _place(rng, n, boxes_out, region=None, avoid=None):
    """Places n non-overlapping squares (2 px apart), inside `region` (x0, y0, x1, y1) when given and
    outside `avoid` when given. Returns False when it cannot (the caller redraws the scene)."""
    rx0, ry0, rx1, ry1 = region or (1, 1, SIZE - 1, SIZE - 1)
    for _ in range(n):
        for _try in range(200):
            s = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
            if rx1 - rx0 < s:
                return False
            x = int(rng.integers(rx0, rx1 - s + 1))
            y = int(rng.integers(ry0, ry1 - s + 1))
            b = (x, y, s)
            if any(_overlap(b, o, 2) for o in boxes_out):
                continue
            if avoid and _overlap(b, (avoid[0], avoid[1], avoid[2] - avoid[0]), 0, h=avoid[3] - avoid[1]):
                continue
            boxes_out.append(b)
            break
        else:
            return False
    return True


def _overlap(a, b, margin, h=None):
    ax, ay, as_ = a
    bx, by, bs = b
    bh = bs if h is None else h
    return not (ax + as_ + margin <= bx or bx + bs + margin <= ax or ay + as_ + margin <= by or by + bh + margin <= ay)


def _scene(rng, qtype):
    """One (question, answer, [(kind, colour, box)]) for qtype, or None to retry."""
    kinds, boxes = [], []
    if qtype == "color":
        target = SHAPES[rng.integers(4)]
        others = [k for k in SHAPES if k != target]
        extra = [others[i] for i in rng.integers(0, 3, rng.integers(1, 5))]
        kinds = [target] + extra
        if not _place(rng, len(kinds), boxes):
            return None
        colours = [list(COLOURS)[i] for i in rng.integers(0, 5, len(kinds))]
        return f"What colour is the {target}?", colours[0], list(zip(kinds, colours, boxes))
    if qtype == "count":
        target = SHAPES[rng.integers(4)]
        c = int(rng.integers(0, 4))
        others = [k for k in SHAPES if k != target]
        extra = [others[i] for i in rng.integers(0, 3, rng.integers(1, 4))]
        kinds = [target] * c + extra
        if not _place(rng, len(kinds), boxes):
            return None
        colours = [list(COLOURS)[i] for i in rng.integers(0, 5, len(kinds))]
        return f"How many {target}s are there?", str(c), list(zip(kinds, colours, boxes))
    if qtype == "relation":
        a, b = (SHAPES[i] for i in rng.choice(4, 2, replace=False))
        rest = [k for k in SHAPES if k not in (a, b)]
        extra = [rest[i] for i in rng.integers(0, 2, rng.integers(0, 3))]
        kinds = [a, b] + extra
        if not _place(rng, len(kinds), boxes):
            return None
        dx = (boxes[1][0] + boxes[1][2] / 2) - (boxes[0][0] + boxes[0][2] / 2)
        if abs(dx) < MIN_DX:
            return None
        colours = [list(COLOURS)[i] for i in rng.integers(0, 5, len(kinds))]
        return f"Is the {a} left of the {b}?", "yes" if dx > 0 else "no", list(zip(kinds, colours, boxes))
    # position: one shape wholly inside the quadrant, every other shape wholly outside it
    q = int(rng.integers(4))
    h = SIZE // 2
    qx0, qy0 = (q % 2) * h, (q // 2) * h
    region = (qx0 + 1, qy0 + 1, qx0 + h - 1, qy0 + h - 1)
    target = SHAPES[rng.integers(4)]
    if not _place(rng, 1, boxes, region=region):
        return None
    extra = [SHAPES[i] for i in rng.integers(0, 4, rng.integers(1, 4))]
    if not _place(rng, len(extra), boxes, avoid=(qx0, qy0, qx0 + h, qy0 + h)):
        return None
    kinds = [target] + extra
    colours = [list(COLOURS)[i] for i in rng.integers(0, 5, len(kinds))]
    return f"What shape is in the {QUADRANTS[q]}?", target, list(zip(kinds, colours, boxes))


def sample(rng, qtype, labels=False):
    """(PIL image, question, answer) for one question of qtype, drawn from rng; with labels=True also
    two uint8 label maps [SIZE, SIZE]: the shape kind (1 + index in SHAPES, 0 = background) and the
    colour (1 + index in COLOURS) under each pixel (the training's auxiliary targets)."""
    while True:
        s = _scene(rng, qtype)
        if s is None:
            continue
        question, answer, shapes = s
        img, d = _background(rng)
        kind_map = Image.new("L", (SIZE, SIZE), 0) if labels else None
        colour_map = Image.new("L", (SIZE, SIZE), 0) if labels else None
        order = rng.permutation(len(shapes))  # drawing order carries no information
        for i in order:
            kind, colour, box = shapes[i]
            jitter = rng.integers(-20, 21, 3)
            fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[colour], jitter))
            _draw(d, kind, box, fill)
            if labels:
                _draw(ImageDraw.Draw(kind_map), kind, box, 1 + SHAPES.index(kind))
                _draw(ImageDraw.Draw(colour_map), kind, box, 1 + list(COLOURS).index(colour))
        if labels:
            return img, question, answer, np.asarray(kind_map), np.asarray(colour_map)
        return img, question, answer


def split_rng(split, worker=0):
    return np.random.default_rng(np.random.SeedSequence([SPLIT_SEEDS[split], worker]))


def generate(split, count):
    """count samples of split, question types in turn (color, count, relation, position, ...)."""
    rng = split_rng(split)
    for i in range(count):
        qtype = TYPES[i % len(TYPES)]
        img, q, a = sample(rng, qtype)
        yield i, qtype, img, q, a


def write_split(out, split, count):
    os.makedirs(os.path.join(out, split), exist_ok=True)
    with open(os.path.join(out, f"{split}.jsonl"), "w") as f:
        for i, qtype, img, q, a in generate(split, count):
            rel = f"{split}/{i:05d}.png"
            img.save(os.path.join(out, rel), optimize=False)
            f.write(json.dumps({"id": i, "image": rel, "question": q, "answer": a, "type": qtype}) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--split", choices=sorted(SPLIT_SEEDS), required=True)
    ap.add_argument("--count", type=int, required=True)
    a = ap.parse_args()
    if a.count < 1:
        ap.error("--count must be >= 1")
    write_split(a.out, a.split, a.count)


if __name__ == "__main__":
    main()
