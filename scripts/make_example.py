"""Write the small synthetic example scene in examples/toy_scene (committed; our own content).

A textured floor and back wall with three spheres, ray-cast analytically from 8 cameras on an
arc, 252 x 182 px, plus ground-truth cameras in nerfstudio transforms.json (OpenCV -> OpenGL).
Usage: python scripts/make_example.py [--out examples/toy_scene]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

W, H, F = 252, 182, 200.0
SPHERES = [((-0.8, 0.6, 4.2), 0.6, (0.9, 0.3, 0.2)), ((0.7, 0.7, 5.0), 0.5, (0.2, 0.6, 0.9)),
           ((0.1, 0.85, 3.2), 0.35, (0.95, 0.8, 0.2))]
FLOOR_Y, WALL_Z = 1.2, 7.0  # OpenCV world: y down, floor at y = 1.2, wall at z = 7


def look_at(eye, target):
    fwd = np.asarray(target, float) - eye
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, [0.0, -1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([right, down, fwd], axis=1)
    c2w[:3, 3] = eye
    return c2w


def texture(p, kind):
    u, v = (p[..., 0], p[..., 2]) if kind == "floor" else (p[..., 0], p[..., 1])
    check = ((np.floor(u * 2) + np.floor(v * 2)) % 2).astype(float)
    stripes = 0.5 + 0.5 * np.sin(7 * u + 3 * np.sin(5 * v))
    base = np.array([0.75, 0.7, 0.6]) if kind == "floor" else np.array([0.55, 0.65, 0.75])
    return base * (0.55 + 0.3 * check[..., None] + 0.15 * stripes[..., None])


def render(c2w):
    v, u = np.mgrid[0:H, 0:W] + 0.5
    d = np.stack([(u - W / 2) / F, (v - H / 2) / F, np.ones_like(u)], -1) @ c2w[:3, :3].T
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    o = c2w[:3, 3]
    t_best = np.full((H, W), np.inf)
    color = np.zeros((H, W, 3))
    for plane, axis, val in (("floor", 1, FLOOR_Y), ("wall", 2, WALL_Z)):
        t = (val - o[axis]) / np.where(np.abs(d[..., axis]) > 1e-9, d[..., axis], 1e-9)
        hit = (t > 0) & (t < t_best)
        p = o + t[..., None] * d
        color[hit] = texture(p, plane)[hit]
        t_best[hit] = t[hit]
    light = np.array([0.4, -1.0, -0.5]) / np.linalg.norm([0.4, -1.0, -0.5])
    for c, r, rgb in SPHERES:
        oc = o - np.asarray(c)
        b = (d * oc).sum(-1)
        disc = b * b - (oc @ oc - r * r)
        t = -b - np.sqrt(np.maximum(disc, 0))
        hit = (disc > 0) & (t > 0) & (t < t_best)
        n = (o + t[..., None] * d - c) / r
        shade = 0.35 + 0.65 * np.clip((n * light).sum(-1), 0, 1)
        stripe = 0.85 + 0.15 * np.sign(np.sin(12 * n[..., 1]))
        color[hit] = (np.asarray(rgb) * (shade * stripe)[..., None])[hit]
        t_best[hit] = t[hit]
    return (np.clip(color, 0, 1) * 255).astype(np.uint8)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "examples/toy_scene"))
    out = Path(ap.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    frames = []
    for i, a in enumerate(np.linspace(-0.5, 0.5, 8)):
        eye = np.array([3.2 * np.sin(a), -0.3, 4.3 - 3.2 * np.cos(a)])
        c2w = look_at(eye, (0.0, 0.5, 4.4))
        name = f"view_{i:02d}.png"
        Image.fromarray(render(c2w)).save(out / name, optimize=True)
        gl = c2w @ np.diag([1.0, -1.0, -1.0, 1.0])
        frames.append({"file_path": name, "transform_matrix": gl.tolist()})
    meta = {"camera_model": "OPENCV", "fl_x": F, "fl_y": F, "cx": W / 2, "cy": H / 2, "w": W,
            "h": H, "frames": frames}
    (out / "transforms.json").write_text(json.dumps(meta, indent=1))
    print(f"wrote {len(frames)} views to {out}")


if __name__ == "__main__":
    main()
