"""A line chart as a standalone SVG file, with no dependency (no plotting tool is installed on
the bench machines). Used by benches/memory for the hit rate against --memory-limit.

    line_chart(path, title, x_labels, series, y_label, y_max)

x_labels: category labels along the x axis, evenly spaced; series: [(name, [y or None, ...])],
one value per label; y from 0 to y_max.
"""

from xml.sax.saxutils import escape

WIDTH, HEIGHT = 640, 400
LEFT, RIGHT, TOP, BOTTOM = 70, 170, 40, 60
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]


def line_chart(path, title, x_labels, series, y_label, y_max, y_ticks=5):
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    step = plot_w / max(len(x_labels) - 1, 1)

    def x_at(i):
        return LEFT + i * step

    def y_at(v):
        return TOP + plot_h - plot_h * min(max(v / y_max, 0.0), 1.0)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{WIDTH / 2}" y="22" text-anchor="middle" font-size="14">{escape(title)}</text>',
    ]
    for t in range(y_ticks + 1):
        v = y_max * t / y_ticks
        y = y_at(v)
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{v:g}</text>')
    out.append(
        f'<text x="18" y="{TOP + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 18 {TOP + plot_h / 2})">{escape(y_label)}</text>'
    )
    for i, label in enumerate(x_labels):
        out.append(
            f'<text x="{x_at(i):.1f}" y="{TOP + plot_h + 18}" text-anchor="middle">{escape(label)}</text>'
        )
    out.append(
        f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 16}" text-anchor="middle">--memory-limit</text>'
    )
    out.append(
        f'<polyline points="{LEFT},{TOP} {LEFT},{TOP + plot_h} {LEFT + plot_w},{TOP + plot_h}" '
        f'fill="none" stroke="black"/>'
    )
    for n, (name, values) in enumerate(series):
        colour = COLOURS[n % len(COLOURS)]
        points = [(x_at(i), y_at(v)) for i, v in enumerate(values) if v is not None]
        out.append(
            '<polyline points="'
            + " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            + f'" fill="none" stroke="{colour}" stroke-width="2"/>'
        )
        for (x, y), v in zip(points, [v for v in values if v is not None]):
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour}"/>')
            out.append(f'<text x="{x + 6:.1f}" y="{y - 6:.1f}" fill="{colour}">{v:.1f}</text>')
        ly = TOP + 10 + 20 * n
        lx = LEFT + plot_w + 15
        out.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 20}" y2="{ly}" stroke="{colour}" stroke-width="2"/>')
        out.append(f'<text x="{lx + 26}" y="{ly + 4}">{escape(name)}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
