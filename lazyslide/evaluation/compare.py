"""``lazyslide compare``: several evaluation reports as one table and one figure.

Rows are methods (each report's generator, then the real vs real noise floor once), columns the
paper's Table 1 (FID on level 0, pFID, improved precision and recall) and Table 3 (precision and
recall per level). Reports measured against other real images, counts, seeds of the sampling,
features or geometry are not comparable (FID moves with the count alone), so they are refused:
``protocol`` in each report.json must agree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LazySlideError
from .evaluate import (
    REAL_VS_REAL,
    SUMMARY_HEADER,
    consistency_table,
    fmt_interval,
    memorisation_table,
    pr_bars,
    summary_row,
)
from .kid import kid_difference

#: protocol fields that must agree, and what a difference means. Not the memorisation audit's
#: training data: each model is audited against what it learnt, and two models that learnt
#: different data (v9 and v10) are what a comparison is for; the audit's table names each row's
#: n train.
PROTOCOL = {
    "real": "real references (sources, regions, groups)",
    "extractor_digest": "feature extractor weights (digest)",
    "n": "real patches per level (--n)", "pfid_n": "pFID crops (--pfid-n)",
    "k": "k", "draws": "bootstrap draws (--draws)", "seed": "sampling seed",
    "extractor": "feature extractor", "tile": "tile size",
    "level_mpp": "levels' um/px (the model's geometry)",
    "real_features": "real images (their pixels or features)",
    "real_crop_features": "real pFID crops (their pixels or features)",
}
#: fields that only matter when both reports measured pFID
PFID_FIELDS = ("pfid_n", "real_crop_features")


def load(folder: str | Path) -> dict[str, Any]:
    path = Path(folder)
    path = path / "report.json" if path.is_dir() else path
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise LazySlideError(f"{folder}: no report.json (a `lazyslide evaluate -o` folder)") from None
    except (OSError, ValueError) as e:
        raise LazySlideError(f"{path}: not a readable report ({e})") from None
    if "protocol" not in report or "groups" not in report:
        raise LazySlideError(f"{path}: made by an older lazyslide evaluate (no held-out protocol or "
                             "KID): evaluate again")
    report["folder"] = str(path.parent)
    return report


def _what_counts(field: str, value: Any) -> Any:
    """The part of a protocol field that changes the metrics: for the references, each group's
    label and its images (source or file, region, box); descriptions (organ, licence) aside."""
    if field != "real" or not isinstance(value, list):
        return value
    return [(g.get("label"), [(s.get("source") or s.get("file"), s.get("region"), s.get("box"))
                              for s in g.get("sources", [])]) for g in value if isinstance(g, dict)]


def check(reports: list[dict[str, Any]], names: list[str]) -> None:
    """Refuse reports whose protocols differ, naming the field and the reports."""
    first = reports[0]["protocol"]
    for report, name in zip(reports[1:], names[1:], strict=True):
        no_pfid = not (reports[0].get("pfid_measured", True) and report.get("pfid_measured", True))
        for field, what in PROTOCOL.items():
            if field in PFID_FIELDS and no_pfid:  # a report without pFID (--no-pfid) has no crops
                continue
            a, b = (_what_counts(field, p.get(field)) for p in (first, report["protocol"]))
            if a != b:
                raise LazySlideError(
                    f"{names[0]} and {name} differ in {what} ({field}: {str(a)[:240]!s} vs "
                    f"{str(b)[:240]!s}): their metrics are not comparable; "
                    "evaluate both with the same --real, --n, --pfid-n, --draws, --features and "
                    "model geometry")


def compare(folders: list[str | Path], out: str | Path) -> str:
    """Write ``compare.md``, ``compare.json`` and ``compare.png`` to ``out``; returns the Markdown."""
    if len(folders) < 1:
        raise LazySlideError("give at least one report folder")
    reports = [load(f) for f in folders]
    names = [str(f) for f in folders]
    check(reports, names)
    rows = [(r["name"], r) for r in reports] + [(REAL_VS_REAL, reports[0]["real_vs_real"])]
    levels = list(reports[0]["levels"])
    seen: dict[str, int] = {}
    labels = []
    for name, _ in rows:  # two reports of one name: number them
        seen[name] = seen.get(name, 0) + 1
        labels.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    levels = list(reports[0]["levels"])
    p = reports[0]["protocol"]
    lines = [
        "# Comparison",
        "",
        f"{len(reports)} report(s), one protocol: {p['n']} real patches per level and group, "
        f"{p['pfid_n']} pFID crops, k = {p['k']}, {p['extractor']}; FID intervals +- 1.96 sd of "
        f"{p['draws']} bootstrap draws; KID 2.5-97.5 % over random halves. The real vs real row: "
        "more held-out real patches against the same references, at the first report's n (the floor). "
        f"Delta KID: each row minus {labels[0]}, on paired draws (the same real and generated "
        "indices for both): a difference whose interval leaves out 0 is one the noise does not explain.",
        "",
    ]
    for gi, grp in enumerate(reports[0]["groups"]):
        members = "; ".join(
            f"{s['source']}:{s['region']}" if "source" in s else s["file"] for s in p["real"][gi]["sources"])
        grows = [(label, r["groups"][gi]) for label, r in zip(labels, reports, strict=False)]
        grows.append((REAL_VS_REAL, grp[REAL_VS_REAL]))
        levels = list(grp["levels"])
        lines += [f"## Against {grp['label']} ({members})", "", "### Table 1: overall", "", *SUMMARY_HEADER,
                  *(summary_row(label, row["summary"]) for label, row in grows), "",
                  "### Table 3: per magnification level", "",
                  "| Method | " + " | ".join(f"level {lv} IP | level {lv} IR | level {lv} FID | "
                                           f"level {lv} KID x 1000" for lv in levels) + " |",
                  "|---|" + "---|---|---|---|" * len(levels)]
        for label, row in grows:
            cells = []
            for lv in levels:
                v = row["levels"][lv]
                cells += [_f(v.get("precision")), _f(v.get("recall")),
                          fmt_interval(v.get("fid"), v.get("fid_ci")),
                          fmt_interval(v.get("kid"), v.get("kid_ci"), 2)]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        deltas = _paired(reports, labels, gi, levels)
        if deltas:
            lines += ["", "### Delta KID x 1000 on paired draws (row minus the first)", "",
                      "| Method | " + " | ".join(f"level {lv}" for lv in levels) + " | pFID crops |",
                      "|---|" + "---|" * (len(levels) + 1), *deltas]
        lines.append("")
    lines += ["## Memorisation audit", "",
              *memorisation_table([(label, r.get("memorisation"))
                                   for label, r in zip(labels, reports, strict=False)])]
    consistency = [(label, r["consistency"]["generated"]) for label, r in zip(labels, reports, strict=False)]
    consistency.append(("real slides", reports[0]["consistency"]["real"]))
    lines += ["", "## Cross-scale consistency and tile grid", "", *consistency_table(consistency)]
    lines += ["", "Cross-scale: each level-k tile against the level k-1 pixels under it (1 / 0 / 0: "
              "the levels agree); grid: 1 = no visible tile grid. The real row reads the real "
              "slides at both levels' um/px."]
    lines += ["", "Sources: " + "; ".join(f"{label}: {r['source']}" for label, r
                                         in zip(labels, reports, strict=False)), ""]
    text = "\n".join(lines)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(text)
    (out / "compare.json").write_text(json.dumps(
        {"protocol": p, "rows": [{"name": label, "summary": row["summary"], "levels": row["levels"]}
                                 for label, (_, row) in zip(labels, rows, strict=True)],
         "reports": names}, indent=1) + "\n")
    _figure(labels, [row for _, row in rows], levels, out / "compare.png")
    return text


def _paired(reports: list[dict[str, Any]], labels: list[str], group: int, levels: list[str]) -> list[str]:
    """Rows of KID differences against the first report, from the reports' features.npz."""
    feats = []
    for r in reports:
        path = Path(r["folder"], "features.npz")
        if not path.is_file():
            return []
        with np.load(path) as z:
            feats.append(dict(z))
    real = feats[0]
    out = []
    for label, f in zip(labels[1:], feats[1:], strict=False):
        cells = []
        for key in [f"level{lv}" for lv in levels] + ["pfid"]:
            r, a, b = (real.get(f"real{group}_{key}"), feats[0].get(f"generated_{key}"),
                       f.get(f"generated_{key}"))
            if r is None or a is None or b is None or min(len(a), len(b)) < 4:
                cells.append("n/a")
                continue
            value, lo, hi = kid_difference(r, a, b)
            cells.append(fmt_interval(value, [lo, hi], 2))
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return out


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _figure(labels: list[str], rows: list[dict[str, Any]], levels: list[str], path: Path) -> None:
    """FID (level 0) and pFID with their intervals; precision and recall per level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), dpi=100)
    x = np.arange(len(labels))
    for ax, (key, title) in zip(axes[:2], (("fid_level0", "FID, level 0"), ("pfid", "pFID")), strict=True):
        vals = [r["summary"].get(key) for r in rows]
        cis = [r["summary"].get(f"{key}_ci") for r in rows]
        for i, (v, ci) in enumerate(zip(vals, cis, strict=True)):
            if v is None:
                ax.text(i, 0, "n/a", ha="center", va="bottom", fontsize=8)
                continue
            err = None if not ci else [[v - ci[0]], [ci[1] - v]]
            ax.bar(i, v, 0.6, yerr=err, capsize=4, color=f"C{i}")
        ax.set_xticks(x, labels, rotation=20, ha="right", fontsize=8)
        ax.set_title(f"{title} (lower is better)")
    pr_bars(axes[2], labels, rows, levels)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
