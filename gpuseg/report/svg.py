"""Tiny inline-SVG charts: enough for evidence plots without a plotting dependency."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape


def small_multiples(panels: dict[str, tuple[Sequence[float], Sequence[float]]], *, title: str = "",
                    marker_x: float | None = None, columns: int = 3, width: int = 260,
                    height: int = 170, x_ticks: Sequence[float] | None = None,
                    max_width: int = 1100) -> str:
    """One line chart per panel (name -> (xs, ys)), laid out in a grid, as an SVG document.

    Parameters
    ----------
    panels : dict
        Panel title -> (x values, y values). Non-finite y values are skipped.
    title : str
        Caption above the grid.
    marker_x : float, optional
        Draws a vertical line at this x in every panel (e.g. the chosen k).
    x_ticks : sequence of float, optional
        Labels these x values under every panel (e.g. every candidate k); by default only the
        first and last x are labelled.
    max_width : int, default 1100
        Fewer columns when ``columns`` panels would be wider than this (a panel widens to fit its
        title, so a long title never runs past its panel or the chart's edge).
    """
    pad_l = max(46, max((_y_label_width(ys) for _xs, ys in panels.values()), default=0))
    width = max(width, pad_l + max((_text_width([name], 11) for name in panels), default=0))
    columns = max(1, min(columns, len(panels) or 1, max_width // width))
    rows = (len(panels) + columns - 1) // columns
    top = 28 if title else 4
    total_w, total_h = max(columns * width, _text_width([title], 14) if title else 0), rows * height + top
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{total_h}" '
             f'viewBox="0 0 {total_w} {total_h}" font-family="sans-serif" font-size="11">',
             '<rect width="100%" height="100%" fill="white"/>']
    if title:
        parts.append(f'<text x="8" y="18" font-size="14" font-weight="bold">{escape(title)}</text>')
    for n, (name, (xs, ys)) in enumerate(panels.items()):
        ox, oy = (n % columns) * width, top + (n // columns) * height
        parts.append(_panel(name, list(xs), list(ys), ox, oy, width, height, marker_x, x_ticks, pad_l))
    parts.append("</svg>")
    return "\n".join(parts)


def _finite_points(xs, ys) -> list[tuple[float, float]]:
    return [(x, y) for x, y in zip(xs, ys, strict=False) if y is not None and y == y and abs(y) != float("inf")]


def _y_label_width(ys) -> int:
    """Room left of a panel's plot for its y labels (the min and max, right-aligned)."""
    finite = [y for _, y in _finite_points(range(len(ys)), ys)]
    return _text_width([f"{min(finite):.3g}", f"{max(finite):.3g}"], 11) if finite else 0


def _panel(name, xs, ys, ox, oy, width, height, marker_x, x_ticks=None, pad_l=46) -> str:
    pad_r, pad_t, pad_b = 10, 20, 24
    points = _finite_points(xs, ys)
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
    for tick in ([x0, x1] if x_ticks is None else [t for t in x_ticks if x0 <= t <= x1]):
        out.append(f'<text x="{sx(tick)}" y="{height - 8}" text-anchor="middle">{tick:g}</text>')
    if marker_x is not None and x0 <= marker_x <= x1:
        out.append(f'<line x1="{sx(marker_x)}" x2="{sx(marker_x)}" y1="{pad_t}" y2="{height - pad_b}" '
                   'stroke="#d62728" stroke-dasharray="4 3"/>')
    path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
    out.append(f'<polyline points="{path}" fill="none" stroke="#1f77b4" stroke-width="2"/>')
    out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="#1f77b4"/>' for x, y in points]
    out.append("</g>")
    return "\n".join(out)


#: Categorical palette (Tableau 10) for segments; cycles beyond ten.
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#bab0ac")


def color(i: int) -> str:
    """Palette colour of segment ``i``."""
    return PALETTE[int(i) % len(PALETTE)]


def _text_width(texts, font_size: int) -> int:
    """Pixels that the longest of ``texts`` needs at ``font_size`` in a sans-serif font, with a margin.

    An upper estimate (0.62 em per character, wide enough for capitals and digits), so a label is
    never cut at the chart's edge.
    """
    longest = max((len(str(t)) for t in texts), default=4)
    return int(12 + 0.62 * font_size * longest)


def _fmt(v: float) -> str:
    return f"{v:.3g}" if v == v else "n/a"


def bar_chart(labels: Sequence[str], values: Sequence[float], *, title: str = "",
              value_format: str = "{:.3g}", colors: Sequence[str] | None = None,
              width: int = 560, bar_height: int = 20, reference: float | None = None,
              reference_label: str = "all customers") -> str:
    """Horizontal bar chart as an SVG document (one bar per label; NaN bars are drawn empty).

    Parameters
    ----------
    labels : sequence of str
    values : sequence of float
        Non-negative values are expected; negative values are drawn as zero-length bars.
    title : str
    value_format : str
        Format of the value printed after each bar.
    colors : sequence of str, optional
        Bar colours (default: the segment palette by position).
    reference : float, optional
        A base rate drawn as a dashed line across the bars, labelled under them with
        ``reference_label`` and its value (in ``value_format``); left out when NaN.
    reference_label : str, default "all customers"
    """
    labels, values = [str(x) for x in labels], [float(v) for v in values]
    ref = float(reference) if reference is not None else float("nan")
    top = 26 if title else 6
    # labels are right-aligned at label_w: room for the longest one, the chart widens instead of clipping
    label_w = _text_width(labels, 12)
    width = max(width, label_w + 300)
    bars_end = top + len(labels) * (bar_height + 6)
    height = bars_end + (24 if ref == ref else 6)
    finite = [v for v in values if v == v and v > 0] + ([ref] if ref == ref and ref > 0 else [])
    vmax = max(finite, default=1.0)
    span = width - label_w - 70
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12" role="img">']
    if title:
        parts.append(f'<text x="4" y="17" font-size="14" font-weight="bold">{escape(title)}</text>')
    for i, (lab, v) in enumerate(zip(labels, values, strict=True)):
        y = top + i * (bar_height + 6)
        w = span * max(v, 0.0) / vmax if v == v else 0.0
        fill = colors[i] if colors is not None else color(i)
        text = value_format.format(v) if v == v else "n/a"
        parts.append(f'<text x="{label_w - 6}" y="{y + bar_height * 0.7:.1f}" text-anchor="end">'
                     f'{escape(lab)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_height}" fill="{fill}">'
                     f'<title>{escape(lab)}: {escape(text)}</title></rect>')
        parts.append(f'<text x="{label_w + w + 4:.1f}" y="{y + bar_height * 0.7:.1f}">{escape(text)}</text>')
    if ref == ref:
        x = label_w + span * max(ref, 0.0) / vmax
        note = f"{reference_label}: {value_format.format(ref)}"
        # centred under the line, pulled in from the edges so the label stays inside the chart
        half = _text_width([note], 12) / 2
        tx = min(max(x, half), width - half)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top - 3}" y2="{bars_end + 2}" stroke="#222" '
                     'stroke-width="1.5" stroke-dasharray="5 3"/>')
        parts.append(f'<text x="{tx:.1f}" y="{bars_end + 16}" text-anchor="middle" font-style="italic">'
                     f'{escape(note)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


_RED, _BLUE = (178, 24, 43), (33, 102, 172)


def _from_white(rgb: tuple[int, int, int], t: float) -> str:
    """The colour a fraction ``t`` in [0, 1] of the way from white to ``rgb``."""
    return "#" + "".join(f"{int(round(255 + t * (c - 255))):02x}" for c in rgb)


def diverging_color(z: float, limit: float = 2.0) -> str:
    """Blue (below average) - white - red (above average) for a z-score clipped to ``limit``."""
    if z != z:
        return "#eeeeee"
    t = max(-1.0, min(1.0, z / limit))
    return _from_white(_RED, t) if t >= 0 else _from_white(_BLUE, -t)


def sequential_color(share: float) -> str:
    """White (0) to blue (1) for a share in [0, 1] (clipped); grey for NaN."""
    if share != share:
        return "#eeeeee"
    return _from_white(_BLUE, max(0.0, min(1.0, share)))


def heatmap(row_labels: Sequence[str], col_labels: Sequence[str], values: Sequence[Sequence[float]],
            *, title: str = "", limit: float = 2.0, cell_w: int = 46, cell_h: int = 24) -> str:
    """Diverging heatmap (rows x columns of z-scores) with the value printed in each cell.

    Parameters
    ----------
    row_labels, col_labels : sequence of str
    values : 2-D sequence of float, shape (rows, columns)
        NaN cells are grey.
    limit : float, default 2.0
        |z| at which the colour saturates.
    """
    rows, cols = [str(x) for x in row_labels], [str(x) for x in col_labels]
    # column labels end above their cell and run up and to the left at 55 degrees, over the row
    # labels' column: the chart grows above the cells by sin(55) of the longest label, and to the
    # left only where a label is longer than the room there (never to the right, past the cells)
    sin, cos = 0.82, 0.58
    label_w = max([_text_width(rows, 11)]
                  + [int(cos * _text_width([c], 11) - (j + 0.5) * cell_w) + 4 for j, c in enumerate(cols)])
    top = (26 if title else 4) + int(sin * _text_width(cols, 11)) + 12
    width, height = label_w + cell_w * len(cols) + 8, top + cell_h * len(rows) + 8
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11" role="img">']
    if title:
        parts.append(f'<text x="4" y="17" font-size="14" font-weight="bold">{escape(title)}</text>')
    for j, lab in enumerate(cols):
        x = label_w + j * cell_w + cell_w / 2
        parts.append(f'<text transform="translate({x:.1f},{top - 6}) rotate(55)" text-anchor="end">'
                     f'{escape(lab)}</text>')
    for i, lab in enumerate(rows):
        y = top + i * cell_h
        parts.append(f'<text x="{label_w - 6}" y="{y + cell_h * 0.68:.1f}" text-anchor="end">'
                     f'{escape(lab)}</text>')
        for j in range(len(cols)):
            z = float(values[i][j])
            x = label_w + j * cell_w
            ink = "white" if z == z and abs(z) > 0.6 * limit else "black"
            parts.append(f'<rect x="{x}" y="{y}" width="{cell_w - 1}" height="{cell_h - 1}" '
                         f'fill="{diverging_color(z, limit)}"><title>{escape(lab)} / {escape(cols[j])}: '
                         f'{_fmt(z)}</title></rect>')
            parts.append(f'<text x="{x + cell_w / 2:.1f}" y="{y + cell_h * 0.68:.1f}" text-anchor="middle" '
                         f'fill="{ink}">{"" if z != z else f"{z:+.1f}"}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def scatter(xy: Sequence[Sequence[float]], groups: Sequence[int], *, title: str = "",
            group_names: dict[int, str] | None = None, width: int = 760, height: int = 440,
            radius: float = 2.2) -> str:
    """Scatter plot of 2-D points coloured by group, with a legend, as an SVG document.

    Parameters
    ----------
    xy : 2-D sequence of float, shape (n, 2)
    groups : sequence of int, shape (n,)
        Group (segment) of each point; its palette colour.
    group_names : dict, optional
        Legend text per group (default ``"Segment g"``).
    """
    pts = [(float(p[0]), float(p[1]), int(g)) for p, g in zip(xy, groups, strict=True)
           if p[0] == p[0] and p[1] == p[1]]
    present = sorted({g for _, _, g in pts})
    names = {g: (group_names or {}).get(g, f"Segment {g}") for g in present}
    legend_w = 18 + _text_width(names.values(), 11)
    width = max(width, legend_w + 420)  # a long legend widens the chart, never runs off its edge
    top = 26 if title else 6
    height = max(height, top + 8 + 16 * len(present) + 10)  # and a long one makes it taller
    plot_w, plot_h = width - legend_w - 10, height - top - 10
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11" role="img">',
             '<rect width="100%" height="100%" fill="white"/>']
    if title:
        parts.append(f'<text x="4" y="17" font-size="14" font-weight="bold">{escape(title)}</text>')
    parts.append(f'<rect x="4" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#ccc"/>')
    if pts:
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
        x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
        for x, y, g in pts:
            cx = 10 + (x - x0) / (x1 - x0) * (plot_w - 12)
            cy = top + plot_h - 6 - (y - y0) / (y1 - y0) * (plot_h - 12)
            parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{radius}" fill="{color(g)}" '
                         'fill-opacity="0.7"/>')
    for i, g in enumerate(present):
        y = top + 8 + i * 16
        parts.append(f'<rect x="{plot_w + 14}" y="{y}" width="10" height="10" fill="{color(g)}"/>')
        parts.append(f'<text x="{plot_w + 28}" y="{y + 9}">{escape(names[g])}</text>')
    parts.append("</svg>")
    return "\n".join(parts)
