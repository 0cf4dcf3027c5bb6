"""A synthetic Google-Landmarks competition in the exact Kaggle layout, with its ground truth.

Each landmark is a piecewise-planar building (facades with procedural windows, ornaments and text, an
optional tower, an optional interior) rendered by true perspective from many viewpoints, so global
descriptors and local features + RANSAC both work and both fail on hard views (grazing angles, distance,
night, blur, occluders, crops). Train labels carry injected noise (wrong landmark, junk), some labels are
rare, some have an interior that looks nothing like the facade, and test/index hold non-landmark
distractors, many of them buildings. Everything is deterministic from ``--seed``.

    python -m landmark_kit.synthetic --out data/synthetic [--landmarks 40 --seed 0]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import string
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from tqdm import tqdm

from .artifacts import atomic_write_csv, write_bytes
from .data import image_path
from .recipes import add_recipe_flags, flag_overrides, load_recipe
from .submission import write_competition_files


@dataclass
class SyntheticConfig:
    """Size and difficulty of the generated competition; the defaults run every stage in minutes on 2 cores."""

    landmarks: int = 40
    seed: int = 0
    train_mean: float = 11.0  # mean train images of a common landmark (long-tailed)
    rare_fraction: float = 0.15  # landmarks with only 1-2 train images
    noise_rate: float = 0.15  # train images filed under a wrong label
    junk_share: float = 0.4  # of the noise: junk (non-landmark) rather than another landmark
    interior_fraction: float = 0.3  # landmarks that also have an interior ("same label, different look")
    interior_rate: float = 0.25  # share of such a landmark's images that show the interior
    test_per_landmark: float = 3.0
    test_distractor_ratio: float = 0.5  # non-landmark test queries per landmark query
    index_per_landmark: float = 4.0
    index_distractor_ratio: float = 1.0  # non-landmark index images per landmark index image
    public_fraction: float = 1 / 3
    min_side: int = 320  # long side of each image is drawn from [min_side, max_side]
    max_side: int = 448
    night_rate: float = 0.15
    workers: int = 2


# ---------------------------------------------------------------------------------------------- textures

FONTS = [cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX]


def _colour(rng: np.random.Generator, saturated: bool = False) -> tuple[int, int, int]:
    if saturated:
        hsv = np.uint8([[[rng.integers(0, 180), rng.integers(150, 256), rng.integers(120, 256)]]])
        return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])
    return tuple(int(c) for c in rng.integers(0, 256, 3))


def _blotches(rng: np.random.Generator, h: int, w: int, strength: float) -> np.ndarray:
    small = rng.normal(0, strength, (max(h // 32, 2), max(w // 32, 2), 1)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)[..., None]


def _ornaments(rng: np.random.Generator, img: np.ndarray, n: int) -> None:
    h, w = img.shape[:2]
    for _ in range(n):
        c = _colour(rng, saturated=rng.random() < 0.7)
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        s = int(rng.integers(max(h // 30, 3), max(h // 8, 5)))
        kind = rng.integers(0, 5)
        if kind == 0:
            cv2.circle(img, (x, y), s, c, -1 if rng.random() < 0.6 else 2, cv2.LINE_AA)
        elif kind == 1:
            pts = (rng.integers(-s, s, (int(rng.integers(3, 7)), 2)) + [x, y]).astype(np.int32)
            cv2.fillPoly(img, [pts], c, cv2.LINE_AA)
        elif kind == 2:
            cv2.rectangle(img, (x - s, y - s // 2), (x + s, y + s // 2), c, -1)
        elif kind == 3:
            for k in range(int(rng.integers(3, 8))):
                a = 2 * np.pi * k / 8 + rng.random()
                cv2.line(img, (x, y), (int(x + s * np.cos(a)), int(y + s * np.sin(a))), c, 2, cv2.LINE_AA)
        else:
            cv2.ellipse(img, (x, y), (s, max(s // 2, 1)), float(rng.integers(0, 180)), 0, 360, c, 2, cv2.LINE_AA)


def _text(rng: np.random.Generator, img: np.ndarray, y: int) -> None:
    h, w = img.shape[:2]
    word = "".join(rng.choice(list(string.ascii_uppercase), int(rng.integers(4, 10))))
    font = FONTS[int(rng.integers(0, len(FONTS)))]
    scale = float(rng.uniform(0.5, 1.1)) * w / 320
    (tw, th), _ = cv2.getTextSize(word, font, scale, 2)
    x = int(rng.integers(0, max(w - tw, 1)))
    cv2.rectangle(img, (x - 4, y - th - 6), (x + tw + 4, y + 6), _colour(rng), -1)
    cv2.putText(img, word, (x, y), font, scale, _colour(rng, True), 2, cv2.LINE_AA)


def _mural(rng: np.random.Generator, img: np.ndarray) -> None:
    """A large painted panel (stripes, rings, checks or a banner) that dominates the facade's look."""
    h, w = img.shape[:2]
    pw, ph = int(w * rng.uniform(0.25, 0.6)), int(h * rng.uniform(0.25, 0.6))
    x0, y0 = int(rng.integers(0, w - pw)), int(rng.integers(h // 8, max(h - ph, h // 8 + 1)))
    panel = img[y0 : y0 + ph, x0 : x0 + pw]
    c1, c2 = _colour(rng, True), _colour(rng, True)
    panel[:] = c1
    kind = rng.integers(0, 3)
    if kind == 0:
        step = int(rng.integers(6, 20))
        for k in range(0, pw + ph, 2 * step):
            cv2.line(panel, (k, 0), (k - ph, ph), c2, step)
    elif kind == 1:
        for r in range(max(pw, ph), 0, -int(rng.integers(6, 16))):
            cv2.circle(panel, (pw // 2, ph // 2), r, c2 if (r // 8) % 2 else c1, -1, cv2.LINE_AA)
    else:
        step = int(rng.integers(8, 24))
        for yy in range(0, ph, step):
            for xx in range((yy // step % 2) * step, pw, 2 * step):
                panel[yy : yy + step, xx : xx + step] = c2


def facade_texture(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A building facade (RGB uint8) and its window mask (for night rendering)."""
    hsv = np.uint8([[[rng.integers(0, 180), rng.integers(15, 130), rng.integers(110, 235)]]])
    base = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    img[:] = base
    img += _blotches(rng, h, w, 14) + rng.normal(0, 7, (h, w, 1))
    img = np.clip(img, 0, 255).astype(np.uint8)
    if rng.random() < 0.4:  # brick courses
        step = int(rng.integers(6, 12))
        for yy in range(0, h, step):
            cv2.line(img, (0, yy), (w, yy), tuple(int(c * 0.8) for c in base.clip(0, 255)), 1)
    mask = np.zeros((h, w), np.uint8)
    rows, cols = int(rng.integers(2, 6)), int(rng.integers(3, 8))
    top = int(h * rng.uniform(0.12, 0.25))
    cell_h, cell_w = (h - top - h // 10) / rows, w / cols
    ww, wh = rng.uniform(0.35, 0.65), rng.uniform(0.4, 0.7)
    arch = rng.random() < 0.5
    glass = np.array(_colour(rng)) * 0.3 + np.array([30, 40, 60])
    frame = tuple(int(c) for c in np.clip(base + 50, 0, 255))
    for r in range(rows):
        for c in range(cols):
            if rng.random() < 0.08:
                continue
            x0 = int(c * cell_w + cell_w * (1 - ww) / 2)
            y0 = int(top + r * cell_h + cell_h * (1 - wh) / 2)
            x1, y1 = int(x0 + cell_w * ww), int(y0 + cell_h * wh)
            cv2.rectangle(img, (x0 - 2, y0 - 2), (x1 + 2, y1 + 2), frame, -1)
            cv2.rectangle(img, (x0, y0), (x1, y1), tuple(int(v) for v in glass), -1)
            cv2.rectangle(mask, (x0, y0), (x1, y1), 255, -1)
            if arch:
                cv2.ellipse(img, ((x0 + x1) // 2, y0), ((x1 - x0) // 2, (x1 - x0) // 3), 0, 180, 360, frame, -1)
            cv2.line(img, ((x0 + x1) // 2, y0), ((x0 + x1) // 2, y1), frame, 1)
    cv2.rectangle(img, (0, 0), (w, top // 2), tuple(int(c) for c in np.clip(base - 40, 0, 255)), -1)
    zig = np.array([[x, top // 2 + (6 if (x // 12) % 2 else 0)] for x in range(0, w + 12, 12)], np.int32)
    cv2.polylines(img, [zig], False, _colour(rng, True), 2, cv2.LINE_AA)
    door_w = int(w * rng.uniform(0.08, 0.16))
    cv2.rectangle(img, (w // 2 - door_w // 2, h - int(h * 0.2)), (w // 2 + door_w // 2, h), (60, 40, 30), -1)
    if rng.random() < 0.6:
        _mural(rng, img)
    _ornaments(rng, img, int(rng.integers(8, 16)))
    _text(rng, img, int(top * 0.9) + 4)
    _text(rng, img, int(h * rng.uniform(0.55, 0.8)))
    return img, mask


def interior_texture(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """An indoor wall: plain paint, framed paintings and a frieze, nothing like any facade."""
    base = np.array(_colour(rng)) * 0.4 + 120
    img = np.clip(np.ones((h, w, 3), np.float32) * base + _blotches(rng, h, w, 6), 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        pw, ph = int(w * rng.uniform(0.15, 0.35)), int(h * rng.uniform(0.2, 0.45))
        x0, y0 = int(rng.integers(0, w - pw)), int(rng.integers(h // 10, h - ph - h // 10))
        cv2.rectangle(img, (x0 - 6, y0 - 6), (x0 + pw + 6, y0 + ph + 6), (150, 110, 40), -1)
        art = np.clip(rng.normal(128, 60, (4, 4, 3)), 0, 255).astype(np.uint8)
        img[y0 : y0 + ph, x0 : x0 + pw] = cv2.resize(art, (pw, ph), interpolation=cv2.INTER_CUBIC)
        _ornaments(rng, img[y0 : y0 + ph, x0 : x0 + pw], int(rng.integers(3, 8)))
    for x in range(0, w, 16):
        cv2.circle(img, (x, h // 12), 4, _colour(rng, True), -1)
    return img, np.zeros((h, w), np.uint8)


ROOFS = ("flat", "pediment", "dome", "stepped", "spire")


def add_roofline(rng: np.random.Generator, tex: np.ndarray, mask: np.ndarray, kind: str | None = None):
    """Extend a facade upward with a shaped top (pediment, dome, stepped gable, spire); returns rgb, mask, alpha.

    The silhouette is what makes a building recognisable from afar; alpha is 0 outside it.
    """
    h, w = tex.shape[:2]
    kind = kind or str(rng.choice(ROOFS))
    ext = 0 if kind == "flat" else int(h * rng.uniform(0.25, 0.7))
    rgb = np.zeros((h + ext, w, 3), np.uint8)
    rgb[ext:] = tex
    alpha = np.zeros((h + ext, w), np.uint8)
    alpha[ext:] = 255
    if ext:
        shape = np.zeros((ext, w), np.uint8)
        if kind == "pediment":
            cv2.fillPoly(shape, [np.array([[0, ext], [w // 2, 0], [w, ext]], np.int32)], 255)
        elif kind == "dome":
            cv2.ellipse(shape, (w // 2, ext), (int(w * rng.uniform(0.2, 0.45)), ext), 0, 180, 360, 255, -1)
        elif kind == "stepped":
            steps = int(rng.integers(3, 6))
            for k in range(steps):
                x0, x1 = int(w * k / (2 * steps)), int(w - w * k / (2 * steps))
                cv2.rectangle(shape, (x0, int(ext * k / steps)), (x1, ext), 255, -1)
        else:  # spire over a short drum
            cv2.rectangle(shape, (int(w * 0.3), int(ext * 0.6)), (int(w * 0.7), ext), 255, -1)
            cv2.fillPoly(shape, [np.array([[int(w * 0.3), int(ext * 0.6)], [w // 2, 0],
                                           [int(w * 0.7), int(ext * 0.6)]], np.int32)], 255)
        roof_colour = np.array(_colour(rng, saturated=rng.random() < 0.5), np.float32)
        top = np.clip(roof_colour + _blotches(rng, ext, w, 12), 0, 255).astype(np.uint8)
        _ornaments(rng, top, int(rng.integers(2, 6)))
        rgb[:ext] = top
        alpha[:ext] = shape
    return rgb, np.concatenate([np.zeros((ext, w), np.uint8), mask]), alpha


# ---------------------------------------------------------------------------------------------- scenes


@dataclass
class Plane:
    """A textured rectangle in the world: top-left corner, per-texture-pixel axes, outward normal."""

    texture: np.ndarray
    mask: np.ndarray
    alpha: np.ndarray
    origin: np.ndarray
    u_axis: np.ndarray
    v_axis: np.ndarray
    normal: np.ndarray

    @property
    def centre(self) -> np.ndarray:
        h, w = self.texture.shape[:2]
        return self.origin + self.u_axis * w / 2 + self.v_axis * h / 2


def _plane(tex, mask, top_left, u_dir, width, height, normal, alpha=None) -> Plane:
    """A plane whose texture spans ``width`` x ``height`` world units from ``top_left`` along ``u_dir``."""
    h, w = tex.shape[:2]
    alpha = np.full((h, w), 255, np.uint8) if alpha is None else alpha
    return Plane(tex, mask, alpha, np.asarray(top_left, float), np.asarray(u_dir, float) * width / w,
                 np.array([0.0, -height / h, 0.0]), np.asarray(normal, float))


@dataclass
class Scene:
    """A landmark (or distractor) building, or an interior (whose wall and floor colours are its own)."""

    planes: list[Plane]
    target: np.ndarray
    interior: bool
    sky: np.ndarray
    ground: np.ndarray


def make_building(seed: int) -> Scene:
    """A building with a front facade, 0-2 side wings and an optional tower, all textured."""
    rng = np.random.default_rng(seed)
    width, height, depth = rng.uniform(8, 14), rng.uniform(5, 10), rng.uniform(5, 10)
    tex_w = 384
    planes = []
    tex, mask = facade_texture(rng, int(tex_w * height / width), tex_w)
    body_rows = tex.shape[0]
    tex, mask, alpha = add_roofline(rng, tex, mask)
    top = height * tex.shape[0] / body_rows
    planes.append(_plane(tex, mask, [-width / 2, top, 0], [1, 0, 0], width, top, [0, 0, -1], alpha))
    for side in (-1, 1):
        if rng.random() < 0.7:
            t, m = facade_texture(rng, int(tex_w * height / depth * 0.6), int(tex_w * 0.6))
            x = side * width / 2
            start = [x, height, 0] if side > 0 else [x, height, depth]
            planes.append(_plane(t, m, start, [0, 0, side], depth, height, [side, 0, 0]))
    if rng.random() < 0.5:
        tw, th = rng.uniform(2.5, 4.5), height * rng.uniform(1.5, 2.2)
        t, m = facade_texture(rng, int(256 * th / tw), 256)
        cv2.circle(t, (128, int(256 * 0.5)), 80, (240, 240, 230), -1)
        cv2.circle(t, (128, int(256 * 0.5)), 80, (30, 30, 30), 4)
        ang = rng.uniform(0, 2 * np.pi, 2)
        for a, length in zip(ang, (60, 40)):
            cv2.line(t, (128, 128), (int(128 + length * np.sin(a)), int(128 - length * np.cos(a))), (20, 20, 20), 5)
        body_rows = t.shape[0]
        t, m, a = add_roofline(rng, t, m, str(rng.choice(["dome", "spire", "flat"])))
        top = th * t.shape[0] / body_rows
        x = rng.uniform(-width / 3, width / 3)
        planes.append(_plane(t, m, [x - tw / 2, top, depth / 2], [1, 0, 0], tw, top, [0, 0, -1], a))
    return Scene(planes, np.array([0.0, height * 0.55, depth * 0.2]), False, np.zeros(3), np.zeros(3))


def make_interior(seed: int) -> Scene:
    """A room seen from inside: back wall and two side walls with paintings."""
    rng = np.random.default_rng(seed)
    width, height, depth = rng.uniform(8, 12), rng.uniform(4, 6), rng.uniform(8, 14)
    planes = []
    tex, mask = interior_texture(rng, int(384 * height / width), 384)
    planes.append(_plane(tex, mask, [-width / 2, height, depth], [1, 0, 0], width, height, [0, 0, -1]))
    for side in (-1, 1):
        t, m = interior_texture(rng, int(384 * height / depth), 384)
        x = side * width / 2
        start = [x, height, 0] if side < 0 else [x, height, depth]
        planes.append(_plane(t, m, start, [0, 0, -side], depth, height, [-side, 0, 0]))
    floor = np.array(_colour(rng)) * 0.3 + 80
    return Scene(planes, np.array([0.0, height * 0.45, depth]), True, floor + 40, floor)


def _look_at(eye: np.ndarray, target: np.ndarray, roll: float) -> np.ndarray:
    f = target - eye
    f /= np.linalg.norm(f)
    r = np.cross([0.0, 1.0, 0.0], f)
    r /= np.linalg.norm(r)
    d = np.cross(r, f)
    c, s = np.cos(roll), np.sin(roll)
    return np.stack([c * r + s * d, -s * r + c * d, f])


@dataclass
class View:
    """Camera and photometric parameters of one rendered image."""

    azimuth: float
    elevation: float
    distance: float
    roll: float
    focal: float
    width: int
    height: int
    night: bool
    brightness: float
    blur: float
    occluders: int
    jpeg_quality: int
    crop: float

    @staticmethod
    def sample(rng: np.random.Generator, cfg: SyntheticConfig, interior: bool, hard: bool) -> "View":
        long_side = int(rng.integers(cfg.min_side, cfg.max_side + 1))
        aspect = float(rng.choice([4 / 3, 3 / 2, 16 / 9, 1.0, 3 / 4, 2 / 3]))
        w, h = (long_side, int(long_side / aspect)) if aspect >= 1 else (int(long_side * aspect), long_side)
        spread = 55 if hard else 30
        return View(
            azimuth=float(rng.uniform(-spread, spread)) * (0.5 if interior else 1.0),
            elevation=float(rng.uniform(-5, 20)),
            distance=float(rng.uniform(1.3, 3.0 if hard else 2.0)) * (0.5 if interior else 1.0),
            roll=float(rng.normal(0, 3)),
            focal=float(rng.uniform(0.8, 1.3)),
            width=w,
            height=h,
            night=bool(rng.random() < cfg.night_rate),
            brightness=float(rng.uniform(0.7, 1.2)),
            blur=float(rng.choice([0, 0, 0, 0.8, 1.5, 2.5 if hard else 1.0])),
            occluders=int(rng.poisson(2.0 if hard else 0.7)),
            jpeg_quality=int(rng.integers(55, 96)),
            crop=float(rng.uniform(0.6, 1.0) if rng.random() < 0.3 else 1.0),
        )


def render(scene: Scene, view: View, rng: np.random.Generator) -> np.ndarray:
    """Perspective rendering of a piecewise-planar scene (painter's algorithm), then photometric effects."""
    w, h = view.width, view.height
    az, el = np.radians(view.azimuth), np.radians(view.elevation)
    span = max(p.texture.shape[1] * np.linalg.norm(p.u_axis) for p in scene.planes)
    dist = view.distance * span
    if scene.interior:
        eye = scene.target + np.array([np.sin(az) * 0.3 * span, 0.0, -np.cos(az) * dist])
        eye[2] = max(eye[2], 0.5)
    else:
        eye = scene.target + dist * np.array([np.sin(az) * np.cos(el), np.sin(el), -np.cos(az) * np.cos(el)])
        eye[1] = max(eye[1], 0.5)
    rot = _look_at(eye, scene.target + rng.normal(0, 0.05 * span, 3), np.radians(view.roll))
    f = view.focal * max(w, h)
    k = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]])

    horizon = h / 2 - f * np.tan(np.arcsin(np.clip(rot[2, 1], -1, 1)))
    rows = np.arange(h, dtype=np.float32)[:, None, None]
    t = np.clip((rows - horizon) / max(h, 1), -1, 1)
    sky, ground = scene.sky, scene.ground
    if not scene.interior:  # outdoors the sky and the pavement change with weather and viewpoint, not landmark
        sky = np.array([rng.uniform(110, 210), rng.uniform(150, 220), rng.uniform(200, 250)])
        ground = np.array([rng.uniform(80, 160)] * 3) + rng.normal(0, 12, 3)
    canvas = np.where(rows < horizon, sky - 60 * t, ground * (1 - 0.3 * t)).astype(np.float32)
    canvas = np.broadcast_to(canvas, (h, w, 3)).copy() + rng.normal(0, 4, (h, w, 1)).astype(np.float32)
    if view.night:
        canvas *= np.array([0.12, 0.13, 0.22], np.float32)

    visible = [p for p in scene.planes if np.dot(p.normal, eye - p.centre) > 0]
    for plane in sorted(visible, key=lambda p: -np.linalg.norm(p.centre - eye)):
        cols = np.stack([rot @ plane.u_axis, rot @ plane.v_axis, rot @ (plane.origin - eye)], axis=1)
        hom = k @ cols
        th, tw = plane.texture.shape[:2]
        corners = np.array([[0, 0, 1], [tw, 0, 1], [tw, th, 1], [0, th, 1]], float) @ hom.T
        if np.any(corners[:, 2] <= 1e-3):
            continue  # plane crosses behind the camera: skip rather than render a folded image
        tex = plane.texture.astype(np.float32)
        if view.night:
            lit = plane.mask[..., None] > 0
            dark = tex * np.array([0.18, 0.2, 0.3], np.float32)
            tex = np.where(lit, np.array([255, 210, 120], np.float32), dark).astype(np.float32)
        rgb = cv2.warpPerspective(tex, hom, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        cover = cv2.warpPerspective(plane.alpha.astype(np.float32) / 255, hom, (w, h), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_CONSTANT)[..., None]
        canvas = canvas * (1 - cover) + rgb * cover
    _occlude(rng, canvas, view.occluders)
    img = canvas * view.brightness
    img += rng.normal(0, 6, 3).astype(np.float32)  # colour cast
    if view.blur > 0:
        img = cv2.GaussianBlur(img, (0, 0), view.blur)
    img = np.clip(img + rng.normal(0, 3, img.shape).astype(np.float32), 0, 255).astype(np.uint8)
    if view.crop < 1.0:
        ch, cw = int(h * view.crop), int(w * view.crop)
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        img = img[y0 : y0 + ch, x0 : x0 + cw]
    return img


def _occlude(rng: np.random.Generator, canvas: np.ndarray, n: int) -> None:
    h, w = canvas.shape[:2]
    for _ in range(n):
        x = int(rng.integers(0, w))
        if rng.random() < 0.5:  # a tree
            r = int(rng.integers(h // 10, h // 4))
            y = int(rng.integers(h // 3, h))
            green = (float(rng.uniform(30, 70)), float(rng.uniform(70, 120)), float(rng.uniform(30, 60)))
            cv2.rectangle(canvas, (x - r // 8, y), (x + r // 8, h), (70.0, 50.0, 30.0), -1)
            for _ in range(6):
                cx, cy = x + int(rng.integers(-r, r + 1)) // 2, y - int(rng.integers(0, r + 1))
                cv2.circle(canvas, (cx, cy), r // 2, green, -1, cv2.LINE_AA)
        else:  # a person
            s = int(rng.integers(h // 8, h // 3))
            c = tuple(float(v) for v in rng.integers(20, 200, 3))
            cv2.rectangle(canvas, (x - s // 6, h - s), (x + s // 6, h), c, -1)
            cv2.circle(canvas, (x, h - s - s // 8), max(s // 8, 2), (180.0, 140.0, 120.0), -1, cv2.LINE_AA)


def render_clutter(rng: np.random.Generator, cfg: SyntheticConfig) -> np.ndarray:
    """A non-landmark picture: nature-like scene or close-up of random things, no building."""
    view = View.sample(rng, cfg, False, False)
    h, w = view.height, view.width
    if rng.random() < 0.5:  # landscape: sky, hills, trees, water
        img = np.zeros((h, w, 3), np.float32)
        horizon = int(h * rng.uniform(0.3, 0.6))
        img[:horizon] = np.array([rng.uniform(120, 200), rng.uniform(160, 220), 240.0])
        img[horizon:] = np.array(_colour(rng)) * 0.3 + np.array([40, 90, 40])
        for _ in range(int(rng.integers(1, 4))):
            pts = [(x, int(horizon - rng.uniform(0, h * 0.25) * np.sin(np.pi * x / w + rng.random())))
                   for x in range(0, w + 20, 20)]
            poly = np.array(pts + [(w, horizon), (0, horizon)], np.int32)
            cv2.fillPoly(img, [poly], tuple(float(v) for v in rng.uniform(40, 140, 3)))
        img += _blotches(rng, h, w, 15)
        _occlude(rng, img, int(rng.integers(2, 7)))
    else:  # close-up clutter: objects on a table, a poster, a pet-like blob
        img = np.ones((h, w, 3), np.float32) * np.array(_colour(rng), np.float32)
        img += _blotches(rng, h, w, 25)
        u8 = np.clip(img, 0, 255).astype(np.uint8)
        _ornaments(rng, u8, int(rng.integers(5, 25)))
        if rng.random() < 0.5:
            _text(rng, u8, int(rng.integers(h // 4, h)))
        img = u8.astype(np.float32)
    img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.3, 1.5)))
    return np.clip(img * view.brightness + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- planning


def _image_id(seed: int, counter: int) -> str:
    return hashlib.sha1(f"landmark-kit-synthetic/{seed}/{counter}".encode()).hexdigest()[:16]


@dataclass
class Item:
    """One image to generate: where it goes, what it shows, what label it is filed under."""

    id: str
    split: str
    kind: str  # exterior | interior | wrong_landmark | junk | distractor_building | distractor_clutter
    scene: int  # landmark index, or distractor scene number (negative) or -1 for clutter
    landmark_id: int  # true landmark shown, -1 for none
    filed_landmark_id: int  # train label (may be wrong), -1 outside train
    seed: int
    hard: bool


def plan(cfg: SyntheticConfig) -> tuple[list[Item], np.ndarray]:
    """Decide every image of the competition (no pixels yet); returns items and landmark ids."""
    rng = np.random.default_rng(cfg.seed)
    num = cfg.landmarks
    label_ids = np.sort(rng.choice(200_000, num, replace=False)).astype(np.int64)
    has_interior = rng.random(num) < cfg.interior_fraction
    rare = rng.random(num) < cfg.rare_fraction
    items: list[Item] = []
    counter = 0
    next_distractor = [0]

    def add(split: str, kind: str, scene: int, true_label: int, filed: int, hard: bool = False) -> None:
        nonlocal counter
        items.append(Item(_image_id(cfg.seed, counter), split, kind, scene, true_label, filed,
                          int(rng.integers(0, 2**31)), hard))
        counter += 1

    def look(i: int) -> str:
        return "interior" if has_interior[i] and rng.random() < cfg.interior_rate else "exterior"

    def distractor(split: str) -> None:
        if rng.random() < 0.6:
            next_distractor[0] += 1
            add(split, "distractor_building", -next_distractor[0], -1, -1, bool(rng.random() < 0.3))
        else:
            add(split, "distractor_clutter", -1, -1, -1)

    for i in range(num):
        n_train = int(rng.integers(1, 3)) if rare[i] else int(np.clip(rng.lognormal(np.log(cfg.train_mean), 0.5), 4, 40))
        for _ in range(n_train):
            if not rare[i] and rng.random() < cfg.noise_rate:
                if rng.random() < cfg.junk_share:
                    kind = "junk"
                    scene = -1 if rng.random() < 0.5 else -(10_000 + counter)
                    add("train", kind, scene, -1, int(label_ids[i]))
                else:
                    other = int(rng.choice([j for j in range(num) if j != i]))
                    add("train", "wrong_landmark", other, int(label_ids[other]), int(label_ids[i]))
            else:
                add("train", look(i), i, int(label_ids[i]), int(label_ids[i]), bool(rng.random() < 0.3))
    n_test_lm = 0
    for i in range(num):
        for _ in range(int(rng.poisson(cfg.test_per_landmark))):
            add("test", look(i), i, int(label_ids[i]), -1, bool(rng.random() < 0.25))
            n_test_lm += 1
    for _ in range(int(round(n_test_lm * cfg.test_distractor_ratio))):
        distractor("test")
    n_index_lm = 0
    for i in range(num):
        for _ in range(max(1, int(rng.poisson(cfg.index_per_landmark)))):
            add("index", look(i), i, int(label_ids[i]), -1, bool(rng.random() < 0.3))
            n_index_lm += 1
    for _ in range(int(round(n_index_lm * cfg.index_distractor_ratio))):
        distractor("index")
    ids = [it.id for it in items]
    assert len(set(ids)) == len(ids), "id collision"
    return items, label_ids


# ---------------------------------------------------------------------------------------------- writing

_SCENE_SALT = 7919


def _scene_for(item: Item, cfg: SyntheticConfig) -> Scene | None:
    if item.kind in ("distractor_clutter",) or (item.kind == "junk" and item.scene == -1):
        return None
    if item.scene < 0:  # a building that is no landmark of the competition
        return make_building(cfg.seed * _SCENE_SALT + 1_000_000 - item.scene)
    if item.kind == "interior":
        return make_interior(cfg.seed * _SCENE_SALT + 2_000_000 + item.scene)
    return make_building(cfg.seed * _SCENE_SALT + item.scene)


def _render_group(items: list[Item], cfg: SyntheticConfig, root: str) -> None:
    cache: dict[tuple, Scene | None] = {}
    for item in items:
        key = (item.kind == "interior", item.scene, item.kind)
        if key not in cache:
            cache[key] = _scene_for(item, cfg)
        scene = cache[key]
        rng = np.random.default_rng(item.seed)
        if scene is None:
            img = render_clutter(rng, cfg)
        else:
            img = render(scene, View.sample(rng, cfg, scene.interior, item.hard), rng)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(55, 96))])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for {item.id}")
        write_bytes(image_path(root, item.split, item.id), buf.tobytes())


def generate(out: str | os.PathLike, cfg: SyntheticConfig | None = None, progress: bool = True) -> dict:
    """Write the whole competition under ``out``; returns a summary (counts, seconds).

    Args:
        out: the folder that receives the Kaggle layout (train/ test/ index/, train.csv, solutions).
        cfg: sizes, noise and seed; default :class:`SyntheticConfig`.
        progress: show a progress bar.
    """
    cfg = cfg or SyntheticConfig()
    start = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    items, label_ids = plan(cfg)
    groups: dict[tuple, list[Item]] = {}
    for it in items:
        groups.setdefault((it.kind == "interior", it.scene if it.scene >= 0 else it.id), []).append(it)
    batches = [[] for _ in range(max(cfg.workers, 1) * 8)]
    for group in sorted(groups.values(), key=len, reverse=True):
        min(batches, key=len).extend(group)
    batches = [b for b in batches if b]
    jobs = (delayed(_render_group)(b, cfg, str(out)) for b in batches)
    runner = Parallel(n_jobs=cfg.workers, return_as="generator")
    for _ in tqdm(runner(jobs), total=len(batches), desc="rendering", unit="batch", disable=not progress):
        pass
    _write_tables(out, cfg, items, label_ids)
    summary = {
        "seconds": round(time.time() - start, 1),
        "images": {s: sum(1 for it in items if it.split == s) for s in ("train", "test", "index")},
        "landmarks": len(label_ids),
        "noisy_train": sum(1 for it in items if it.kind in ("wrong_landmark", "junk")),
    }
    (out / "synthetic.json").write_text(json.dumps({"config": asdict(cfg), "summary": summary}, indent=2))
    return summary


def _write_tables(out: Path, cfg: SyntheticConfig, items: list[Item], label_ids: np.ndarray) -> None:
    gt = pd.DataFrame([asdict(it) for it in items]).drop(columns=["seed"])
    gt["noise"] = gt["kind"].isin(["wrong_landmark", "junk"])
    gt["distractor"] = gt["kind"].str.startswith("distractor")
    atomic_write_csv(gt, out / "ground_truth.csv")
    train = gt[gt.split == "train"]
    atomic_write_csv(train[["id", "filed_landmark_id"]].rename(columns={"filed_landmark_id": "landmark_id"}),
                     out / "train.csv")
    test = gt[gt.split == "test"].sort_values("id")
    rng = np.random.default_rng(cfg.seed + 1)
    usage = np.where(rng.random(len(test)) < cfg.public_fraction, "Public", "Private").tolist()
    write_competition_files(out, test, gt[gt.split == "index"], usage)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder (Kaggle layout)")
    ap.add_argument("--recipe", help="YAML with SyntheticConfig fields (flags override it)")
    add_recipe_flags(ap, SyntheticConfig)
    args = ap.parse_args(argv)
    cfg = load_recipe(SyntheticConfig, args.recipe, flag_overrides(args, SyntheticConfig))
    print(json.dumps(generate(args.out, cfg)))


if __name__ == "__main__":
    main()
