"""Study reports: JSON (the numbers) and a self-contained HTML page (FROC plot and tables).

The FROC plot is drawn with matplotlib (Agg, SVG inlined) when it is installed, otherwise as
a small hand-written SVG, so the report never needs a network or a second file.
"""

from __future__ import annotations

import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hounsfield.evaluate.froc import CPM_FP_RATES


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{100 * v:.1f}%" if pct else f"{v:.3f}"
    return html.escape(str(v))


def _ci(ci: Sequence[float] | None, pct: bool = True) -> str:
    if not ci or any(c != c for c in ci):  # NaN
        return ""
    return f" ({_fmt(ci[0], pct)} – {_fmt(ci[1], pct)})"


def froc_svg(curves: Sequence[tuple[str, Sequence[float], Sequence[float]]]) -> str:
    """An SVG FROC plot (log FP/scan axis from 1/8 to 8) of one or more named curves."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _handmade_svg(curves)
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=100)
    for name, fps, sens in curves:
        # a log axis cannot show 0 FP/scan: draw those points at the axis' left edge
        ax.step([max(float(f), 0.1) for f in fps], sens, where="post", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlim(0.1, 8)
    ax.set_ylim(0, 1.02)
    ax.set_xticks(CPM_FP_RATES, ["1/8", "1/4", "1/2", "1", "2", "4", "8"])
    ax.set_xlabel("average false positives per scan")
    ax.set_ylabel("sensitivity")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("FROC")
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]


def _handmade_svg(curves: Sequence[tuple[str, Sequence[float], Sequence[float]]]) -> str:
    import math

    w, h, pad = 480, 320, 40
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]

    def px(fp: float) -> float:
        fp = min(max(fp, 0.125), 8.0)
        return pad + (math.log2(fp) + 3) / 6 * (w - 2 * pad)

    def py(s: float) -> float:
        return h - pad - s * (h - 2 * pad)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}">',
             f'<rect x="{pad}" y="{pad}" width="{w - 2 * pad}" height="{h - 2 * pad}" '
             'fill="none" stroke="#888"/>']
    for r, lab in zip(CPM_FP_RATES, ["1/8", "1/4", "1/2", "1", "2", "4", "8"]):
        parts.append(f'<text x="{px(r):.1f}" y="{h - pad + 14}" font-size="10" '
                     f'text-anchor="middle">{lab}</text>')
    for i, (name, fps, sens) in enumerate(curves):
        pts = " ".join(f"{px(f):.1f},{py(s):.1f}" for f, s in zip(fps, sens))
        c = colours[i % len(colours)]
        parts.append(f'<polyline fill="none" stroke="{c}" points="{pts}"/>')
        parts.append(f'<text x="{w - pad - 4}" y="{h - pad - 8 - 14 * i}" font-size="11" '
                     f'text-anchor="end" fill="{c}">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _table(rows: list[dict[str, Any]], cols: list[tuple[str, str, bool]]) -> str:
    head = "".join(f"<th>{html.escape(t)}</th>" for _k, t, _p in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{_fmt(r.get(k), p)}</td>" for k, _t, p in cols) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


_CSS = """body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}.pass{color:#080;font-weight:bold}
.fail{color:#b00;font-weight:bold}"""


def _summary_rows(r: dict[str, Any]) -> str:
    op = r["operating_point"]
    items = [
        ("scans / nodules / detections", f"{r['scans']} / {r['nodules']} / {r['detections']}"),
        ("CPM (mean sensitivity at 1/8…8 FP/scan)", _fmt(r["cpm"]) + _ci(r["cpm_ci95"], False)),
        ("sensitivity at 1 FP/scan", _fmt(r["sensitivity_at_1fp"], True)
         + _ci(r["sensitivity_at_1fp_ci95"])),
        (f"operating point (≤ {op['fp_per_scan_target']:g} FP/scan): threshold",
         _fmt(op["threshold"])),
        ("  detection rate", _fmt(op["sensitivity"], True) + _ci(op.get("sensitivity_ci95"))),
        ("  false negatives per 100 nodules", _fmt(op["fn_per_100"])),
        ("  FP per scan", _fmt(op["fp_per_scan"])),
        ("  per-scan sensitivity", _fmt(op["per_scan_sensitivity"], True)),
        ("  per-scan specificity", _fmt(op["per_scan_specificity"], True)),
    ]
    return "<table>" + "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>"
                               for k, v in items) + "</table>"


def _checks(r: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(c['name'])}</td><td>{html.escape(c['op'])} {c['target']:g}</td>"
        f"<td>{_fmt(c['value'])}</td><td class={'pass' if c['passed'] else 'fail'}>"
        f"{'PASS' if c['passed'] else 'FAIL'}</td></tr>" for c in r["checks"])
    verdict = "PASS" if r["passed"] else "FAIL"
    return (f"<p>Acceptance: <span class={verdict.lower()}>{verdict}</span></p>"
            f"<table><tr><th>target</th><th>required</th><th>value</th><th></th></tr>{rows}</table>")


def render_html(report: dict[str, Any], *, title: str, context: dict[str, Any] | None = None) -> str:
    """A self-contained HTML study report."""
    ctx = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                  for k, v in (context or {}).items())
    fr = report["froc"]
    site_cols = [("group", "site", False), ("scans", "scans", False), ("nodules", "nodules", False),
                 ("detected", "detected", False), ("sensitivity", "detection rate", True),
                 ("cpm", "CPM", False), ("sensitivity_at_1fp", "sens. @1 FP/scan", True),
                 ("fp_per_scan", "FP/scan", False),
                 ("per_scan_specificity", "per-scan specificity", True)]
    grp_cols = [("group", "group", False), ("nodules", "nodules", False),
                ("detected", "detected", False), ("sensitivity", "detection rate", True)]
    if "stage1_recall" in report:  # two-stage: where a nodule was lost, stage 1 or stage 2
        s1 = ("stage1_hits", "stage-1 candidate on it", False)
        grp_cols = [*grp_cols[:2], s1, *grp_cols[2:]]
        site_cols = [*site_cols[:3], s1, *site_cols[3:]]
    sens_rows = [{"group": k, "sensitivity": v} for k, v in report["sensitivity_at"].items()]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>
{f'<table>{ctx}</table>' if ctx else ''}
{_checks(report)}
<h2>Summary</h2>{_summary_rows(report)}
<h2>FROC</h2>{froc_svg([("model", fr["fp_per_scan"], fr["sensitivity"])])}
{_table(sens_rows, [("group", "FP/scan", False), ("sensitivity", "sensitivity", True)])}
<h2>Per site</h2>{_table(report["by_site"], site_cols)}
<h2>Per nodule size</h2>{_table(report["by_size"], grp_cols)}
<h2>Per nodule type</h2>{_table(report["by_type"], grp_cols)}
<p>Lesion matching as in LUNA16 (a detection hits a nodule when its centre lies within the
nodule's radius); CPM and FROC computed as monai.metrics; 95% CIs from
{report["bootstrap"]["resamples"]} bootstrap resamples of scans (seed {report["bootstrap"]["seed"]}).
Detection rate and per-site/size/type figures are at the operating point.{_stage1_note(report)}</p>
</body></html>"""


def _stage1_note(report: dict[str, Any]) -> str:
    if "stage1_recall" not in report:
        return ""
    return (f" Stage 1 (candidates) put a candidate on {_fmt(report['stage1_recall'], True)} "
            "of the nodules: a nodule counted there but not detected was ranked below the "
            "operating point by stage 2 (the classifier); one not counted was never proposed.")


def render_comparison_html(base: dict[str, Any], tuned: dict[str, Any], *, title: str,
                           context: dict[str, Any] | None = None) -> str:
    """Side-by-side report: base model versus fine-tuned model on the same split."""
    ctx = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                  for k, v in (context or {}).items())

    def row(name: str, key: str, pct: bool, ci: str | None = None) -> str:
        cells = []
        for r in (base, tuned):
            v = _dig(r, key)
            cells.append(_fmt(v, pct) + (_ci(_dig(r, ci), pct) if ci else ""))
        b, t = _dig(base, key), _dig(tuned, key)
        delta = "–" if b is None or t is None else (f"{100 * (t - b):+.1f} pt" if pct
                                                    else f"{t - b:+.3f}")
        return f"<tr><td>{name}</td><td>{cells[0]}</td><td>{cells[1]}</td><td>{delta}</td></tr>"

    rows = "".join([
        row("CPM", "cpm", False, "cpm_ci95"),
        row("sensitivity at 1 FP/scan", "sensitivity_at_1fp", True, "sensitivity_at_1fp_ci95"),
        row("detection rate at operating point", "operating_point.sensitivity", True),
        row("FN per 100 nodules", "operating_point.fn_per_100", False),
        row("FP per scan at operating point", "operating_point.fp_per_scan", False),
        row("per-scan sensitivity", "operating_point.per_scan_sensitivity", True),
        row("per-scan specificity", "operating_point.per_scan_specificity", True),
    ])
    verdicts = "".join(
        f"<tr><td>{n}</td><td class={'pass' if r['passed'] else 'fail'}>"
        f"{'PASS' if r['passed'] else 'FAIL'}</td></tr>"
        for n, r in (("base", base), ("fine-tuned", tuned)))
    curves = [("base", base["froc"]["fp_per_scan"], base["froc"]["sensitivity"]),
              ("fine-tuned", tuned["froc"]["fp_per_scan"], tuned["froc"]["sensitivity"])]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>
{f'<table>{ctx}</table>' if ctx else ''}
<table><tr><th>model</th><th>acceptance</th></tr>{verdicts}</table>
<table><tr><th>metric</th><th>base</th><th>fine-tuned</th><th>change</th></tr>{rows}</table>
{froc_svg(curves)}</body></html>"""


def _dig(d: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(part)  # type: ignore[assignment]
    return d


def write_report(report: dict[str, Any], out_dir: Path | str, *, title: str,
                 context: dict[str, Any] | None = None, stem: str = "report") -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.html`` into ``out_dir``; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jp, hp = out / f"{stem}.json", out / f"{stem}.html"
    jp.write_text(json.dumps({"title": title, "context": context or {}, **report}, indent=2,
                             default=str))
    hp.write_text(render_html(report, title=title, context=context))
    return jp, hp
