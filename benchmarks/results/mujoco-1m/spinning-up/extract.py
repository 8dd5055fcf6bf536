#!/usr/bin/env python3
"""Read numbers off the Spinning Up benchmark SVG plots (matplotlib output).

For each SVG:
  * x/y pixel->data affine maps from the tick gridlines and their label comments
    (x labels carry the "1e6" offset text of the x axis);
  * per algorithm (legend label <-> stroke colour) the mean line2d path and the
    fill_between polygon (PolyCollection) of the same colour;
  * values at requested x (linear interpolation between path vertices), band
    half-width (= std, the plots were made with ci='sd'), x-range of each curve.

Standard library + numpy only.  Usage:  python3 extract.py [svg ...]
Writes a JSON dump (results.json) and prints a report.
"""

import json
import re
import sys
import xml.etree.ElementTree as ET
from itertools import combinations

import numpy as np

SVGNS = "{http://www.w3.org/2000/svg}"
TARGETS = (100_000.0, 300_000.0, 1_000_000.0)


# ---------------------------------------------------------------- parsing helpers
def parse_svg(path):
    parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True))
    with open(path, encoding="utf-8") as f:
        return ET.fromstring(f.read(), parser=parser)


def path_vertices(d):
    """Vertices of an M/L/z path (matplotlib writes absolute 'M x y L x y ... z')."""
    toks = d.replace("\n", " ").split()
    pts, i = [], 0
    while i < len(toks):
        t = toks[i]
        if t in ("M", "L"):
            pts.append((float(toks[i + 1]), float(toks[i + 2])))
            i += 3
        elif t in ("z", "Z"):
            i += 1
        else:
            raise ValueError("unexpected path token %r" % t)
    return np.array(pts)


def style_dict(el):
    out = {}
    for part in (el.get("style") or "").split(";"):
        if ":" in part:
            k, v = part.split(":", 1)
            out[k.strip()] = v.strip()
    return out


def first_comment(el):
    for sub in el.iter():
        if sub.tag is ET.Comment:
            return sub.text.strip()
    return None


def groups_by_prefix(root, prefix):
    return [g for g in root.iter(SVGNS + "g") if (g.get("id") or "").startswith(prefix)]


def group_by_id(root, gid):
    for g in root.iter(SVGNS + "g"):
        if g.get("id") == gid:
            return g
    return None


# ---------------------------------------------------------------- axes
def ticks(root, prefix):
    """[(pixel, label_string)] for xtick_*/ytick_* groups."""
    out = []
    for g in groups_by_prefix(root, prefix):
        p = g.find(".//" + SVGNS + "path")
        v = path_vertices(p.get("d"))
        label = first_comment(g)
        pix = v[0, 0] if prefix == "xtick_" else v[0, 1]
        out.append((pix, label))
    return out


def x_multiplier(root):
    """matplotlib puts the axis offset text ('1e6') in a text group of axis_1."""
    ax1 = group_by_id(root, "matplotlib.axis_1")
    for g in ax1.iter(SVGNS + "g"):
        gid = g.get("id") or ""
        if gid.startswith("text_"):
            c = first_comment(g)
            if c and re.fullmatch(r"1e[+-]?\d+", c):
                return float(c)
    return 1.0


def fit_map(pix, val):
    """least-squares val = a*pix + b."""
    a, b = np.polyfit(np.asarray(pix, float), np.asarray(val, float), 1)
    return a, b


def tick_maps(tk, mult=1.0):
    pix = np.array([p for p, _ in tk])
    val = np.array([float(label) * mult for _, label in tk])
    a, b = fit_map(pix, val)
    resid = val - (a * pix + b)
    pair_maps = []
    for i, j in combinations(range(len(pix)), 2):
        aa = (val[j] - val[i]) / (pix[j] - pix[i])
        pair_maps.append(((i, j), aa, val[i] - aa * pix[i]))
    return (a, b), float(np.max(np.abs(resid))), pair_maps


# ---------------------------------------------------------------- data series
def legend_entries(root):
    leg = group_by_id(root, "legend_1")
    entries, pending_colour = [], None
    for g in leg:
        gid = g.get("id") or ""
        if gid.startswith("line2d_"):
            p = g.find(SVGNS + "path")
            if p is not None:
                pending_colour = style_dict(p).get("stroke")
        elif gid.startswith("text_") and pending_colour:
            entries.append((first_comment(g), pending_colour))
            pending_colour = None
    return entries


def data_lines(root):
    """line2d paths drawn in the axes (clip-path set, stroked, not tick lines)."""
    axes = group_by_id(root, "axes_1")
    out = {}
    for g in axes:  # direct children only: ticks live under matplotlib.axis_*
        gid = g.get("id") or ""
        if not gid.startswith("line2d_"):
            continue
        p = g.find(SVGNS + "path")
        if p is None or p.get("clip-path") is None:
            continue
        col = style_dict(p).get("stroke")
        out.setdefault(col, []).append((gid, path_vertices(p.get("d"))))
    return out


def fill_polys(root):
    out = {}
    for g in groups_by_prefix(root, "PolyCollection_"):
        p = g.find(SVGNS + "path")
        st = style_dict(p)
        out.setdefault(st.get("fill"), []).append(
            (g.get("id"), path_vertices(p.get("d")))
        )
    return out


def split_band(v):
    """fill_between polygon -> (edge1, edge2), each with increasing x.

    matplotlib's polygon: start (x0, y2[0]); (x_i, y1_i) forward; (xN, y2[N]);
    (x_i, y2_i) backward; closing point == start.
    """
    x = v[:, 0]
    # forward run: from index 1 while x is non-decreasing
    k = 1
    while (
        k + 1 < len(x) and x[k + 1] >= x[k] - 1e-9 and not (x[k + 1] == x[k] and k > 1)
    ):
        k += 1
    e1 = v[1 : k + 1]
    e2 = v[k + 1 :][::-1]
    return dedupe(e1), dedupe(e2)


def dedupe(e):
    """drop vertices repeating the previous x (keep first), ensure increasing x."""
    keep = [0]
    for i in range(1, len(e)):
        if e[i, 0] > e[keep[-1], 0] + 1e-9:
            keep.append(i)
    return e[keep]


def interp(e, xq):
    if xq < e[0, 0] - 1e-9 or xq > e[-1, 0] + 1e-9:
        return float("nan")
    return float(np.interp(xq, e[:, 0], e[:, 1]))


# ---------------------------------------------------------------- main analysis
def analyse(path):
    root = parse_svg(path)
    xt, yt = ticks(root, "xtick_"), ticks(root, "ytick_")
    mult = x_multiplier(root)
    (ax, bx), xres, xpairs = tick_maps(xt, mult)
    (ay, by), yres, ypairs = tick_maps(yt, 1.0)

    bg = path_vertices(group_by_id(root, "patch_2").find(SVGNS + "path").get("d"))
    xlim_px = (bg[:, 0].min(), bg[:, 0].max())
    ylim_px = (bg[:, 1].min(), bg[:, 1].max())
    ylim = sorted([ay * ylim_px[0] + by, ay * ylim_px[1] + by])
    xlim = sorted([ax * xlim_px[0] + bx, ax * xlim_px[1] + bx])

    lines, fills = data_lines(root), fill_polys(root)
    res = {
        "file": path,
        "x_multiplier": mult,
        "x_ticks": xt,
        "y_ticks": yt,
        "x_map": (ax, bx),
        "y_map": (ay, by),
        "x_tick_fit_max_resid": xres,
        "y_tick_fit_max_resid": yres,
        "xlim": xlim,
        "ylim": ylim,
        "algos": {},
    }

    for name, col in legend_entries(root):
        assert len(lines.get(col, [])) == 1, (name, col, lines.get(col))
        lid, lv = lines[col][0]
        lv = dedupe(lv)
        xpx_t = [(t - bx) / ax for t in TARGETS]
        a = {
            "colour": col,
            "line_id": lid,
            "n_line_vertices": int(len(lv)),
            "x_first": ax * lv[0, 0] + bx,
            "x_last": ax * lv[-1, 0] + bx,
            "y_min": float(min(ay * lv[:, 1] + by)),
            "y_max": float(max(ay * lv[:, 1] + by)),
        }
        # mean from the (simplified) line path
        a["mean"] = {int(t): ay * interp(lv, xp) + by for t, xp in zip(TARGETS, xpx_t)}
        # second-method cross-check: every pair of ticks as alternative maps
        alt = []
        for (_, axp, bxp), (_, ayp, byp) in [(p, q) for p in xpairs for q in ypairs]:
            alt.append([ayp * interp(lv, (t - bxp) / axp) + byp for t in TARGETS])
        alt = np.array(alt)
        a["mean_tickpair_spread"] = {
            int(t): float(np.nanmax(alt[:, i]) - np.nanmin(alt[:, i]))
            for i, t in enumerate(TARGETS)
        }
        # band
        fl = fills.get(col, [])
        if len(fl) == 1:
            fid, fv = fl[0]
            e1, e2 = split_band(fv)
            a["fill_id"] = fid
            a["n_band_points"] = (int(len(e1)), int(len(e2)))
            mid, half = {}, {}
            for t, xp in zip(TARGETS, xpx_t):
                y1, y2 = interp(e1, xp), interp(e2, xp)
                mid[int(t)] = ay * 0.5 * (y1 + y2) + by
                half[int(t)] = abs(ay) * 0.5 * abs(y1 - y2)
            a["band_mid"] = mid
            a["std"] = half
            # consistency: every kept line vertex should sit on the band's midpoint
            m1 = np.interp(lv[:, 0], e1[:, 0], e1[:, 1])
            m2 = np.interp(lv[:, 0], e2[:, 0], e2[:, 1])
            a["line_vs_bandmid_max_px"] = float(
                np.max(np.abs(lv[:, 1] - 0.5 * (m1 + m2)))
            )
            a["band_x_first"] = ax * min(e1[0, 0], e2[0, 0]) + bx
            a["band_x_last"] = ax * max(e1[-1, 0], e2[-1, 0]) + bx
            dx = np.diff(e1[:, 0]) * ax
            a["band_x_step"] = (float(dx.min()), float(dx.max()))
        res["algos"][name] = a
    return res


def fmt(v, nd=0):
    return "nan" if v != v else ("%.*f" % (nd, v))


def report(r):
    print("=" * 100)
    print(r["file"])
    print(
        "  x ticks:",
        [(round(p, 3), label) for p, label in r["x_ticks"]],
        "multiplier",
        r["x_multiplier"],
    )
    print("  y ticks:", [(round(p, 3), label) for p, label in r["y_ticks"]])
    print(
        "  x map: data = %.6f * px + %.3f   (max tick residual %.3g)"
        % (*r["x_map"], r["x_tick_fit_max_resid"])
    )
    print(
        "  y map: data = %.6f * px + %.3f   (max tick residual %.3g)"
        % (*r["y_map"], r["y_tick_fit_max_resid"])
    )
    print("  axes xlim = [%.0f, %.0f]  ylim = [%.1f, %.1f]" % (*r["xlim"], *r["ylim"]))
    for name, a in r["algos"].items():
        print(
            "  %-5s %s %s nverts=%d  x:[%.0f .. %.0f]  y:[%.1f .. %.1f]"
            % (
                name,
                a["colour"],
                a["line_id"],
                a["n_line_vertices"],
                a["x_first"],
                a["x_last"],
                a["y_min"],
                a["y_max"],
            )
        )
        for t in map(int, TARGETS):
            s = "      @%7d  mean(line)=%8.1f  tick-pair spread=%.2g" % (
                t,
                a["mean"][t],
                a["mean_tickpair_spread"][t],
            )
            if "std" in a:
                s += "  band-mid=%8.1f  std=%7.1f" % (a["band_mid"][t], a["std"][t])
            print(s)
        if "std" in a:
            band = "      band %s pts=%s x:[%.0f .. %.0f] step=[%.0f, %.0f]"
            band += "  max|line - bandmid|=%.2g px"
            values = (
                a["fill_id"],
                a["n_band_points"],
                a["band_x_first"],
                a["band_x_last"],
                *a["band_x_step"],
                a["line_vs_bandmid_max_px"],
            )
            print(band % values)


def main(argv):
    files = argv[1:] or [
        "pytorch_halfcheetah_performance.svg",
        "pytorch_hopper_performance.svg",
        "pytorch_walker2d_performance.svg",
        "tensorflow_halfcheetah_performance.svg",
        "tensorflow_hopper_performance.svg",
        "tensorflow_walker2d_performance.svg",
    ]
    out = []
    for f in files:
        try:
            r = analyse(f)
        except FileNotFoundError:
            print("missing", f)
            continue
        report(r)
        out.append(r)
    with open("results.json", "w") as fh:
        json.dump(out, fh, indent=1, default=float)


if __name__ == "__main__":
    main(sys.argv)
