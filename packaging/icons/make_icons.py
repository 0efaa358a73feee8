"""Draw the CellPol Studio icon and write it in the formats each platform needs.

    python packaging/icons/make_icons.py        # writes cellpol.png (256 px), cellpol.ico, cellpol.icns here

The project had no icon; this one is drawn, not copied: a nucleus (blue) and its Golgi (green) with the
polarity vector between them. The three files are committed, so a build never needs to run this.
"""

from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent


def draw(size: int = 1024) -> Image.Image:
    s = size / 256  # design on a 256 grid, drawn large and scaled down for smooth edges
    im = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    d.rounded_rectangle([8 * s, 8 * s, 248 * s, 248 * s], radius=44 * s, fill=(22, 28, 45, 255))
    # the cell outline
    d.ellipse([34 * s, 40 * s, 222 * s, 220 * s], outline=(90, 100, 130, 255), width=int(5 * s))
    # nucleus
    d.ellipse([62 * s, 96 * s, 142 * s, 176 * s], fill=(70, 130, 255, 255))
    # Golgi: a few stacked crescents
    for i, (x0, y0) in enumerate([(150, 62), (160, 76), (170, 90)]):
        d.arc([x0 * s, y0 * s, (x0 + 40) * s, (y0 + 40) * s], 200, 340, fill=(80, 220, 120, 255),
              width=int(8 * s))
    # polarity vector, nucleus centre -> Golgi
    x0, y0, x1, y1 = 102 * s, 136 * s, 178 * s, 86 * s
    d.line([x0, y0, x1, y1], fill=(255, 255, 255, 255), width=int(9 * s))
    d.polygon([(x1 + 10 * s, y1 - 7 * s), (x1 - 16 * s, y1 - 6 * s), (x1 - 2 * s, y1 + 16 * s)],
              fill=(255, 255, 255, 255))
    d.ellipse([x0 - 9 * s, y0 - 9 * s, x0 + 9 * s, y0 + 9 * s], fill=(255, 255, 255, 255))
    return im


def main() -> None:
    big = draw()
    big.resize((256, 256), Image.LANCZOS).save(HERE / "cellpol.png", optimize=True)
    big.resize((256, 256), Image.LANCZOS).save(
        HERE / "cellpol.ico", sizes=[(16, 16), (24, 24), (32, 32), (48, 48), (64, 64), (128, 128), (256, 256)])
    big.resize((512, 512), Image.LANCZOS).save(HERE / "cellpol.icns")


if __name__ == "__main__":
    main()
