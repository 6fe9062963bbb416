"""Tiny inline-SVG charts: enough for evidence plots without a plotting dependency."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape


def small_multiples(panels: dict[str, tuple[Sequence[float], Sequence[float]]], *, title: str = "",
                    marker_x: float | None = None, columns: int = 3, width: int = 260,
                    height: int = 170) -> str:
    """One line chart per panel (name -> (xs, ys)), laid out in a grid, as an SVG document.

    Parameters
    ----------
    panels : dict
        Panel title -> (x values, y values). Non-finite y values are skipped.
    title : str
        Caption above the grid.
    marker_x : float, optional
        Draws a vertical line at this x in every panel (e.g. the chosen k).
    """
    rows = (len(panels) + columns - 1) // columns
    top = 28 if title else 4
    total_w, total_h = columns * width, rows * height + top
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{total_h}" '
             f'viewBox="0 0 {total_w} {total_h}" font-family="sans-serif" font-size="11">',
             '<rect width="100%" height="100%" fill="white"/>']
    if title:
        parts.append(f'<text x="8" y="18" font-size="14" font-weight="bold">{escape(title)}</text>')
    for n, (name, (xs, ys)) in enumerate(panels.items()):
        ox, oy = (n % columns) * width, top + (n // columns) * height
        parts.append(_panel(name, list(xs), list(ys), ox, oy, width, height, marker_x))
    parts.append("</svg>")
    return "\n".join(parts)


def _panel(name, xs, ys, ox, oy, width, height, marker_x) -> str:
    pad_l, pad_r, pad_t, pad_b = 46, 10, 20, 24
    points = [(x, y) for x, y in zip(xs, ys, strict=False) if y is not None and y == y and abs(y) != float("inf")]
    out = [f'<g transform="translate({ox},{oy})">',
           f'<text x="{pad_l}" y="13" font-weight="bold">{escape(name)}</text>']
    if not points:
        out.append(f'<text x="{pad_l}" y="{height / 2}">no data</text></g>')
        return "\n".join(out)
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    x1 = x1 if x1 > x0 else x0 + 1
    y1 = y1 if y1 > y0 else y0 + 1

    def sx(x):
        return pad_l + (x - x0) / (x1 - x0) * (width - pad_l - pad_r)

    def sy(y):
        return height - pad_b - (y - y0) / (y1 - y0) * (height - pad_t - pad_b)

    out.append(f'<rect x="{pad_l}" y="{pad_t}" width="{width - pad_l - pad_r}" '
               f'height="{height - pad_t - pad_b}" fill="none" stroke="#ccc"/>')
    out.append(f'<text x="{pad_l - 4}" y="{sy(y1) + 4}" text-anchor="end">{y1:.3g}</text>')
    out.append(f'<text x="{pad_l - 4}" y="{sy(y0)}" text-anchor="end">{y0:.3g}</text>')
    out.append(f'<text x="{sx(x0)}" y="{height - 8}" text-anchor="middle">{x0:g}</text>')
    out.append(f'<text x="{sx(x1)}" y="{height - 8}" text-anchor="middle">{x1:g}</text>')
    if marker_x is not None and x0 <= marker_x <= x1:
        out.append(f'<line x1="{sx(marker_x)}" x2="{sx(marker_x)}" y1="{pad_t}" y2="{height - pad_b}" '
                   'stroke="#d62728" stroke-dasharray="4 3"/>')
    path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
    out.append(f'<polyline points="{path}" fill="none" stroke="#1f77b4" stroke-width="2"/>')
    out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="#1f77b4"/>' for x, y in points]
    out.append("</g>")
    return "\n".join(out)
