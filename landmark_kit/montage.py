"""Image tiles for the figures people look at (run report, cleaning montage): a thumbnail of one image with an
optional coloured border and caption, and rows of them into one PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import ImageLoadError, image_path, load_image


def thumbnail(root: Path, split: str, image_id: str, tile: int, colour=None, caption: str = "") -> np.ndarray:
    """A ``tile`` x ``tile`` RGB thumbnail with an optional coloured border and caption (black if unreadable)."""
    import cv2

    try:
        img = np.asarray(load_image(image_path(root, split, image_id), image_id, tile * 2))
        scale = tile / max(img.shape[:2])
        img = cv2.resize(img, (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale))))
    except ImageLoadError:
        img = np.zeros((tile, tile, 3), np.uint8)
    canvas = np.full((tile, tile, 3), 255, np.uint8)
    y, x = (tile - img.shape[0]) // 2, (tile - img.shape[1]) // 2
    canvas[y: y + img.shape[0], x: x + img.shape[1]] = img
    if colour is not None:
        cv2.rectangle(canvas, (0, 0), (tile - 1, tile - 1), colour, 5)
    if caption:
        cv2.rectangle(canvas, (0, tile - 16), (tile - 1, tile - 1), (255, 255, 255), -1)
        cv2.putText(canvas, caption[:18], (4, tile - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1)
    return canvas


def grid(rows: list[list[np.ndarray]], tile: int, path: Path) -> Path:
    """Rows of thumbnails (ragged rows padded white) into one PNG."""
    import cv2

    width = max(len(r) for r in rows)
    blank = np.full((tile, tile, 3), 255, np.uint8)
    gap = np.full((tile, 6, 3), 255, np.uint8)
    lines = [np.hstack([x for t in r + [blank] * (width - len(r)) for x in (t, gap)]) for r in rows]
    sep = np.full((6, lines[0].shape[1], 3), 255, np.uint8)
    cv2.imwrite(str(path), cv2.cvtColor(np.vstack([x for line in lines for x in (line, sep)]), cv2.COLOR_RGB2BGR))
    return path
