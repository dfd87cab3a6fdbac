"""Write photo.png (a 512x512 test picture) and mask.png (white disc = repaint) for the README's examples.

    python -m scripts.example_inputs [DIR]     # or: python scripts/example_inputs.py [DIR]
"""

import argparse
from pathlib import Path

from PIL import Image, ImageDraw


def write_examples(folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    photo = Image.new("RGB", (512, 512), "skyblue")
    draw = ImageDraw.Draw(photo)
    draw.rectangle((0, 360, 512, 512), fill="forestgreen")  # a lawn under the sky
    draw.ellipse((380, 40, 460, 120), fill="gold")  # a sun
    mask = Image.new("L", photo.size, 0)  # black = keep
    ImageDraw.Draw(mask).ellipse((156, 196, 356, 396), fill=255)  # white = repaint
    photo_path, mask_path = folder / "photo.png", folder / "mask.png"
    photo.save(photo_path)
    mask.save(mask_path)
    return photo_path, mask_path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", default=".", type=Path, help="where to write them (made if missing)")
    for path in write_examples(parser.parse_args().folder):
        print(f"wrote {path}")
