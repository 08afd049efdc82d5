"""The README's gallery: generated chest radiographs beside the real one, at the same size.

A reader judging whether the phantoms could teach a detector anything about real films
needs to see them next to one: the classic style (what the bundled model was trained on),
cases of the radiograph style, and RG1_UNCR from ``pydicom-data`` (a test image only,
never training data), each shown as a radiologist would (the node's own display path:
modality and VOI LUT, percentile stretch, MONOCHROME1 inverted), fitted into
the same square tile, with the generated findings' boxes outlined and named.

    python benchmarks/gallery.py --out docs/images/phantom-gallery.jpg
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.phantom import synthesize_case  # noqa: E402
from model.preprocess import pixels_for_display  # noqa: E402

TILE = 384
CAPTION = 22
SEED = 5  # no training set's seed (1; the radiograph candidate's 21, 23, 100-159)
RADIOGRAPH_CASES = (0, 1, 3, 6)
SIZE_RANGE = (768, 1280)


def _tile(display: np.ndarray, boxes, caption: str) -> Image.Image:  # noqa: ANN001
    """``display`` (0..1, white bright) fitted into a TILE square, boxes outlined."""
    image = Image.fromarray((np.clip(display, 0, 1) * 255).astype(np.uint8)).convert("RGB")
    scale = TILE / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.Resampling.LANCZOS)
    tile = Image.new("RGB", (TILE, TILE + CAPTION), "black")
    left, top = (TILE - image.width) // 2, (TILE - image.height) // 2
    tile.paste(image, (left, top))
    draw = ImageDraw.Draw(tile)
    for box in boxes:
        corners = [left + box.x1 * scale, top + box.y1 * scale,
                   left + box.x2 * scale, top + box.y2 * scale]
        draw.rectangle(corners, outline=(255, 200, 0), width=2)
        draw.text((corners[0] + 2, max(0, corners[1] - 11)), box.label, fill=(255, 200, 0))
    draw.text((4, TILE + 5), caption, fill="white")
    return tile


def gallery(real: Path | None) -> Image.Image:
    tiles = []
    classic = synthesize_case(SEED, RADIOGRAPH_CASES[0], size_range=SIZE_RANGE)
    tiles.append(_tile(pixels_for_display(classic.dataset), classic.boxes,
                       f"classic style (seed {SEED})"))
    for index in RADIOGRAPH_CASES:
        case = synthesize_case(SEED, index, size_range=SIZE_RANGE, style="radiograph")
        tiles.append(_tile(pixels_for_display(case.dataset), case.boxes,
                           f"radiograph style, case {index}"))
    if real is not None:
        import pydicom

        tiles.append(_tile(pixels_for_display(pydicom.dcmread(real)), (),
                           f"real: {real.name} (test only)"))
    sheet = Image.new("RGB", (TILE * len(tiles), TILE + CAPTION), "black")
    for position, tile in enumerate(tiles):
        sheet.paste(tile, (position * TILE, 0))
    return sheet


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JPEG or PNG to write")
    parser.add_argument("--real", type=Path, help="real radiograph (default: pydicom-data's "
                        "RG1_UNCR.dcm, when installed)")
    args = parser.parse_args()
    real = args.real
    if real is None:
        try:
            from pydicom.data import get_testdata_file

            found = get_testdata_file("RG1_UNCR.dcm")
            real = Path(found) if found else None
        except (ImportError, ValueError):
            real = None
    if real is not None and not real.is_file():
        parser.error(f"--real {real}: no such file")
    sheet = gallery(real)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, quality=88)
    print(f"wrote {args.out} ({sheet.width} x {sheet.height})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
