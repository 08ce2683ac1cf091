"""Make the small synthetic datasets bundled in ``data/demo/``.

Every demo config trains and evaluates on these, on a fresh machine with no
download. Scenes are simple shapes on textured backgrounds, so the metrics are
computed for real and a few epochs already learn something:

* ``classification/``: an image folder (mmpretrain ``CustomDataset``), one
  folder per class (circle, square, triangle, cross), ``train/`` and ``val/``.
* ``coco/``: COCO-format instance segmentation of the same shapes
  (``annotations/instances_{train,val}.json`` with polygon masks).
* ``ade/``: ADE20K-format semantic segmentation (``images/{training,validation}``
  JPEGs and ``annotations/...`` PNG label maps, 0 = background).

Usage: ``python tools/make_demo_data.py [--out data/demo] [--seed 0]``.
The output is deterministic for a given seed.
"""
import argparse
import json
import os
from typing import List, Tuple

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ('circle', 'square', 'triangle', 'cross')


def _background(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    """A smooth random gradient with noise, so images are not trivially flat."""
    base = rng.integers(0, 120, size=3)
    xx = np.mgrid[0:height, 0:width][1]
    grad = (xx / max(width - 1, 1))[..., None] * rng.integers(0, 80, size=3)
    noise = rng.normal(0, 8, size=(height, width, 3))
    img = np.clip(base + grad + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(img)


def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> List[Tuple[float, float]]:
    if shape == 'circle':
        angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        return [(cx + r * np.cos(a), cy + r * np.sin(a)) for a in angles]
    if shape == 'square':
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == 'triangle':
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    t = r / 3  # cross: a plus sign as one 12-gon
    return [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t),
            (cx + r, cy + t), (cx + t, cy + t), (cx + t, cy + r), (cx - t, cy + r),
            (cx - t, cy + t), (cx - r, cy + t), (cx - r, cy - t), (cx - t, cy - t)]


def _color(rng: np.random.Generator) -> Tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(140, 256, size=3))


def make_classification(out: str, rng: np.random.Generator, size: int = 64,
                        n_train: int = 24, n_val: int = 8) -> None:
    for split, count in (('train', n_train), ('val', n_val)):
        for label, shape in enumerate(SHAPES):
            folder = os.path.join(out, 'classification', split, shape)
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                img = _background(rng, size, size)
                r = rng.uniform(size * 0.15, size * 0.3)
                cx, cy = rng.uniform(r, size - r, size=2)
                ImageDraw.Draw(img).polygon(_shape_polygon(shape, cx, cy, r), fill=_color(rng))
                img.save(os.path.join(folder, f'{shape}_{i:03d}.jpg'), quality=90)


def _scene(rng: np.random.Generator, height: int, width: int, max_objects: int = 4):
    """An image with 1..max_objects shapes; returns the image, the per-object
    (class index, polygon) list, and a semantic label map (0 = background)."""
    img = _background(rng, height, width)
    label = Image.new('L', (width, height), 0)
    objects = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        cls = int(rng.integers(len(SHAPES)))
        r = rng.uniform(min(height, width) * 0.08, min(height, width) * 0.2)
        cx, cy = rng.uniform(r, width - r), rng.uniform(r, height - r)
        poly = _shape_polygon(SHAPES[cls], cx, cy, r)
        ImageDraw.Draw(img).polygon(poly, fill=_color(rng))
        ImageDraw.Draw(label).polygon(poly, fill=cls + 1)  # later shapes occlude earlier ones
        objects.append((cls, poly))
    return img, objects, label


def make_coco(out: str, rng: np.random.Generator, size: Tuple[int, int] = (96, 128),
              n_train: int = 16, n_val: int = 8) -> None:
    root = os.path.join(out, 'coco')
    os.makedirs(os.path.join(root, 'annotations'), exist_ok=True)
    categories = [dict(id=i + 1, name=s, supercategory='shape') for i, s in enumerate(SHAPES)]
    for split, count in (('train', n_train), ('val', n_val)):
        folder = os.path.join(root, f'{split}2017')
        os.makedirs(folder, exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            height, width = size
            img, objects, label = _scene(rng, height, width)
            name = f'{i:06d}.jpg'
            img.save(os.path.join(folder, name), quality=95)
            images.append(dict(id=i + 1, file_name=name, height=height, width=width))
            label_np = np.asarray(label)
            for cls, poly in objects:
                xs, ys = [p[0] for p in poly], [p[1] for p in poly]
                x0, y0 = max(min(xs), 0.0), max(min(ys), 0.0)
                x1, y1 = min(max(xs), width), min(max(ys), height)
                # Visible area of this class in the label map bounds the mask area.
                area = float(min((x1 - x0) * (y1 - y0), (label_np == cls + 1).sum()))
                annotations.append(dict(
                    id=len(annotations) + 1, image_id=i + 1, category_id=cls + 1, iscrowd=0,
                    bbox=[x0, y0, x1 - x0, y1 - y0], area=area,
                    segmentation=[[round(c, 2) for p in poly for c in p]]))
        with open(os.path.join(root, 'annotations', f'instances_{split}2017.json'), 'w') as f:
            json.dump(dict(images=images, annotations=annotations, categories=categories), f)


def make_ade(out: str, rng: np.random.Generator, size: Tuple[int, int] = (96, 128),
             n_train: int = 16, n_val: int = 8) -> None:
    root = os.path.join(out, 'ade')
    for split, count in (('training', n_train), ('validation', n_val)):
        img_dir = os.path.join(root, 'images', split)
        ann_dir = os.path.join(root, 'annotations', split)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        for i in range(count):
            img, _, label = _scene(rng, *size)
            img.save(os.path.join(img_dir, f'demo_{i:06d}.jpg'), quality=95)
            label.save(os.path.join(ann_dir, f'demo_{i:06d}.png'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='data/demo', help='output folder')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    make_classification(args.out, rng)
    make_coco(args.out, rng)
    make_ade(args.out, rng)
    print(f'wrote demo datasets to {args.out}')


if __name__ == '__main__':
    main()
