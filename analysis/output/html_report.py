"""One static, offline HTML report of an analysis folder: ``OUT/report/index.html``.

:func:`write_report` scans ``OUT`` for what the analysis modules wrote and lays it out in a single
self-contained file (no CDN, no scripts, no external fonts; images are embedded as ``data:`` URIs),
so the report can be mailed, attached to a ticket or opened from a cluster's scratch space:

* a table of contents, then the ROC curves (``plots/roc*.png`` with ``roc/roc.csv``, from
  :mod:`analysis.output.roc`) first: the attacks' headline result;
* a header with the store's spec (from the store's root attrs, found through ``analysis.json``'s
  ``store`` entry) and its spec hash, and the run's headline facts from ``analysis.json``;
* every table ``tables/<stem>.md`` (rendered from its Markdown table; the text above the table is
  the module's own caption) or, when there is no ``.md``, ``tables/<stem>.csv``; links to the
  ``.csv`` / ``.md`` / ``.tex`` files next to it;
* every figure ``plots/**/*.png`` (and ``figures/**/*.png``), with a link to a ``.pdf`` of the same
  stem if there is one.

Each table and figure gets a short caption saying what to look for, from :data:`CAPTIONS` (keyed by
file stem; an exact key or the longest key that prefixes the stem wins); stems nobody registered get
a generic caption, so tables and figures added by new modules appear without touching this file.
Other modules may register theirs with :func:`register_caption`.

Wide tables get a smaller font and break their column names at ``_ / = @`` so that they fit a
laptop-width window (checked in Chromium by tests/test_html_report.py); in a narrower window they
scroll inside their own box (a visible scrollbar), never past the page's edge.

The file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path

from analysis.store_io.atomic import write_text
from analysis.store_io.numfmt import fmt, is_p_column
from typing import Any, Iterable

__all__ = ["write_report", "render_report", "register_caption", "caption_for", "incomplete_line", "CAPTIONS"]

#: What to look for in each table / figure, keyed by file stem. A ``"figure:STEM"`` / ``"table:STEM"``
#: key is for that kind only (a table and a figure may share a stem: ``complexity``); then the exact
#: stem, then the longest key that the stem starts with. Order here is the order in the report.
CAPTIONS: dict[str, str] = {
    # analysis.output.roc: first in the report
    "roc": "Every attack's ROC curve, pooled over (target, sample) pairs as in the tables, one row per "
           "column (All, Under-represented, each challenge set): log-log axes on the left (the LiRA "
           "paper's view), linear on the right; the dotted diagonal is guessing. Look at the left end of "
           "the log-log panels: a curve far above the diagonal at FPR 0.1% and below identifies members "
           "with almost no false alarms, which the AUROC (in the legend) hides. Expect the under-represented "
           "and singleton rows far above All.",
    # tables written by analysis.output.report
    "attacks": "Attack strength, pooled over (target, sample) pairs. Look at TPR at the lowest FPR, "
               "not only AUROC: a strong attack identifies some members with almost no false alarms. "
               "Expect higher numbers in the Under column than in All (under-represented samples are "
               "memorized more).",
    "attacks_per_target": "The same metrics per target model, mean ± std across targets. A large std means "
                          "the pooled number depends on which model is attacked; at an FPR below 2/N a "
                          "single target cannot resolve the TPR (see the pooled table).",
    "accuracy": "Shadow-model accuracy per subset (paper Table 1): the train/test gap is the generalization "
                "gap; expect the under-represented group to have the larger gap, and narrow 95% ranges "
                "(shadows trained alike).",
    "memorization": "Feldman-Zhang memorization per group: the under-represented group should have the "
                    "higher mean, more samples above the singleton threshold, and a higher mean privacy "
                    "score.",
    # figures written by analysis.output.report
    "privacy_score_hist": "Privacy score by group (paper Fig. 1a): the under-represented histogram should sit "
                          "to the right, with a tail of highly vulnerable samples.",
    "mem_vs_privacy": "Memorization vs privacy score (paper Fig. 2a): a rising trend (positive Spearman ρ) "
                      "means memorized samples are the ones membership inference exposes.",
    # written by the other analysis modules (tables, tables/theory/complexity/sweep/ood)
    "paper_accuracy": "Paper Table 1/4: train vs test accuracy per group (D_O over-, D_U under-represented); "
                      "the D_U train/test gap should be the larger one.",
    "paper_attacks": "Paper Tables 2/3/5: every attack on random, subpopulation and singleton challenge sets, "
                     "with 95% bootstrap intervals. Look at TPR@0.1% FPR: singletons/subpopulation should be far "
                     "more exposed than random samples; intervals at 0.1% FPR are wide, so compare only "
                     "non-overlapping ones.",
    "sample_sets": "Every set of samples the tables and figures name, one name per set (analysis.studies.groups): its "
                   "size and definition; where two sets look alike (singletons and highly memorized) the "
                   "relation column says how they differ.",
    "theory": "Memorization theory (§5): squared Hellinger distances next to mem per challenge set. The Eq. 8 "
              "check H²(Bernoulli) ≤ mem should show no violations beyond those expected by chance.",
    "table:complexity": "Sample complexity (Corollary 1): shadows needed to reach the target AUROC/TPR per set, "
                        "next to the predictions 1/mem and 1/H². Highly memorized sets should need only a few "
                        "shadows; measured needs should be ordered like the predictions.",
    "figure:complexity": "Measured reference shadows LiRA needs to reach the absolute AUROC target (y) against "
                         "each prediction 1/mem, 1/H² (x), log-log, one colour per set and one marker per "
                         "prediction; open triangles never reached the target (drawn at the largest count: a "
                         "lower bound). Points along the dashed y = x line, in the predictions' order, support "
                         "Corollary 1.",
    "complexity_relative": "The same axes as the sample-complexity figure, but measured against a relative "
                           "target: the shadows needed to reach 95% of the set's own full-shadow AUROC advantage "
                           "over 0.5. Sets that never reach the absolute AUROC target get a value here; highly "
                           "memorized sets should still need the fewest shadows.",
    "ood_correlations": "Spearman ρ (with p-values) of the OOD scores (MSP, Energy) with the privacy score and "
                        "with mem: weak or negative correlations mean OOD detectors miss the vulnerable samples "
                        "(paper Figs. 1b, 5, 9, 10).",
    "ood_msp_vs_privacy": "Maximum softmax probability (OOD score, x) against the privacy score (y) per train "
                          "sample, by group, singletons circled (paper Fig. 1b): a weak Spearman ρ (title) means "
                          "the OOD detector does not find the samples membership inference exposes.",
    "ood_energy_vs_privacy": "Energy OOD score (x) against the privacy score (y) per train sample, by group, "
                             "singletons circled (paper Fig. 5): a weak Spearman ρ (title) means the OOD "
                             "detector does not find the samples membership inference exposes.",
    "mem_vs_ood": "An OOD score (x: MSP or Energy, in the file name) against memorization (y) per train sample, "
                  "by group, singletons circled (paper Figs. 9, 10): no clear trend means the OOD detector does "
                  "not find the memorized samples.",
    "table:sweep": "The shadow-count sweep's summary: LiRA's AUROC and TPR per challenge set and number of "
                   "reference shadows m, mean and 2.5-97.5% range over repeats. Highly memorized sets should "
                   "reach their full-shadow values at a small m; random samples keep improving with m.",
    "sweep_auroc": "LiRA AUROC against the number of reference shadows (log scale), one panel per LiRA variant, "
                   "one line per challenge set (mean over repeats, band 2.5-97.5%): highly memorized sets "
                   "should reach a high AUROC with few shadows (the paper's point), random samples need many.",
    "sweep_tpr": "LiRA TPR at the low FPR named in the title against the number of reference shadows (log "
                 "scale), one panel per LiRA variant, one line per challenge set (mean over repeats, band "
                 "2.5-97.5%): highly memorized sets should reach a high TPR with few shadows; at 0.1% FPR the "
                 "bands are wide.",
    "sweep_raw": "Every (set, attack, m, repeat) point of the shadow-count sweep; the summary is the sweep table.",
}

GENERIC_TABLE = ("A table written by an analysis module; no specific guidance is registered for it. "
                 "Compare rows within each column; the CSV next to it has full precision.")
GENERIC_FIGURE = ("A figure written by an analysis module; no specific guidance is registered for it. "
                  "Read the axis labels and legend first.")

_MAX_ROWS = 300  # longer tables are cut in the page (the CSV link has them all)
_WIDE_COLUMNS = 9  # tables with more columns get a smaller font and padding, to fit the page
_OPEN_ROWS = 40  # longer tables (and *_raw ones) are folded (<details>), so they do not bury the rest


def register_caption(stem: str, text: str) -> None:
    """Register (or replace) the "what to look for" caption of the table/figure ``stem``."""
    CAPTIONS[str(stem)] = str(text)


def caption_for(stem: str, kind: str = "table") -> str:
    """The caption for the ``kind`` ("table" or "figure") ``stem``: the ``"kind:stem"`` key, the exact
    stem, the longest registered key that prefixes it (``"kind:"`` keys of the kind only), else generic."""
    for key in (f"{kind}:{stem}", stem):
        if key in CAPTIONS:
            return CAPTIONS[key]
    plain = (k.split(":", 1)[-1] for k in CAPTIONS if ":" not in k or k.startswith(f"{kind}:"))
    best = max((k for k in plain if stem.startswith(k)), key=len, default=None)
    if best is not None:
        return caption_for(best, kind)
    return GENERIC_FIGURE if kind == "figure" else GENERIC_TABLE


def _order(stems: Iterable[str]) -> list[str]:
    """Stems in the registry order of their caption's key (exact or prefix), then the rest alphabetically."""
    keys = list(dict.fromkeys(k.split(":", 1)[-1] for k in CAPTIONS))

    def rank(stem: str) -> tuple[int, str]:  # the key its caption comes from: exact, else longest prefix
        key = stem if stem in keys else max((k for k in keys if stem.startswith(k)), key=len, default=None)
        return (keys.index(key), stem) if key is not None else (len(keys), stem)

    return sorted(set(stems), key=rank)


# --- reading what the analysis wrote ------------------------------------------------------------

def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _store_attrs(store: Path | None) -> dict[str, Any]:
    """Root attributes of a Zarr v3 store, read from its ``zarr.json`` (no zarr import needed)."""
    if store is None:
        return {}
    meta = _read_json(Path(store) / "zarr.json")
    attrs = meta.get("attributes", {}) if isinstance(meta, dict) else {}
    return attrs if isinstance(attrs, dict) else {}


_PIPE = re.compile(r"(?<!\\)\|")  # a cell separator: a pipe not escaped as \|


def _split_md(text: str) -> tuple[str, list[list[str]]]:
    """(text before the first table, rows of the first pipe table with the separator row dropped)."""
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("|")), None)
    if start is None:
        return text.strip(), []
    rows = []
    for ln in lines[start:]:
        s = ln.strip()
        if not s.startswith("|"):
            break
        inner = s[1:-1] if s.endswith("|") and not s.endswith("\\|") else s[1:]
        cells = [c.strip().replace("\\|", "|") for c in _PIPE.split(inner)]
        if all(c and set(c) <= set(":- ") for c in cells):
            continue  # the |---|---:| row
        rows.append(cells)
    return "\n".join(lines[:start]).strip(), rows


def _csv_rows(path: Path) -> list[list[str]]:
    """A CSV's rows, its non-integer numbers in the report's one format (the file keeps full precision)."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = [row for row in csv.reader(f)]
    if not rows:
        return rows
    p_cols = [is_p_column(c) for c in rows[0]]
    return [rows[0]] + [[_csv_cell(c, p_cols[j] if j < len(p_cols) else False) for j, c in enumerate(r)]
                        for r in rows[1:]]


def _csv_cell(c: str, p_value: bool) -> str:
    if not re.fullmatch(r"\s*[-+]?(\d+\.\d*|\.\d+|\d+(?=[eE]))([eE][-+]?\d+)?\s*", c):
        return c  # integers (counts) and text stay as written
    return fmt(float(c), p_value=p_value)


def _fact(v: Any) -> str:
    """A header fact as text: numbers in the report's one format, lists comma-separated."""
    if isinstance(v, str):
        return v
    if isinstance(v, (list, tuple)):
        return ", ".join(_fact(x) for x in v)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return fmt(v)
    return json.dumps(v)


def incomplete_line(summary: dict[str, Any]) -> str | None:
    """"k of M shadows done: ..." when the analysed store has shadows not done, else None."""
    done, total = summary.get("n_shadows_done"), summary.get("n_shadows_total")
    if not isinstance(done, int) or not isinstance(total, int) or done >= total:
        return None
    return (f"{done} of {total} shadows done: this analysis uses only the {done} done shadows "
            f"(re-run the same 'mia-hpc run' or 'submit' to train the other {total - done}, then analyse again)")


def _is_number(s: str) -> bool:
    try:
        float(s.replace("±", " ").split()[0])
        return True
    except (ValueError, IndexError):
        return s in ("N/A", "nan", "NaN", "")


_BREAK_AFTER = re.compile(r"([_/=@]+)")


def _breakable(text: str) -> str:
    """``text`` escaped, with a line-break opportunity after ``_ / = @``: long column names such as
    ``n_shadows_needed auroc>=0.9`` wrap at their parts, so a wide table fits the page."""
    return "".join(html.escape(part) + ("<wbr>" if _BREAK_AFTER.fullmatch(part) else "")
                   for part in _BREAK_AFTER.split(text))


def _table_html(rows: list[list[str]]) -> str:
    if not rows:
        return "<p class=empty>(empty table)</p>"
    head, body = rows[0], rows[1:]
    cut = len(body) - _MAX_ROWS
    body = body[:_MAX_ROWS]
    wide = " class=wide" if len(head) > _WIDE_COLUMNS else ""
    h = [f"<div class=scroll><table{wide}>", "<thead><tr>" + "".join(f"<th>{_breakable(c)}</th>" for c in head)
         + "</tr></thead><tbody>"]
    for r in body:
        cells = []
        for j, c in enumerate(r):
            cls = " class=num" if j > 0 and _is_number(c) else ""
            tag = "th scope=row" if j == 0 else "td"
            cells.append(f"<{tag}{cls}>{html.escape(c)}</{tag.split()[0]}>")
        h.append("<tr>" + "".join(cells) + "</tr>")
    h.append("</tbody></table></div>")
    if cut > 0:
        h.append(f"<p class=note>… {cut} more rows in the CSV.</p>")
    return "\n".join(h)


def _links(out: Path, report_dir: Path, paths: Iterable[Path]) -> str:
    items = []
    for p in paths:
        if p.is_file():
            rel = os.path.relpath(p, report_dir).replace(os.sep, "/")
            items.append(f'<a href="{html.escape(rel)}">{html.escape(p.suffix.lstrip("."))}</a>')
    return ("<span class=files>files: " + " · ".join(items) + "</span>") if items else ""


def _tables(out: Path, report_dir: Path) -> list[tuple[str, str]]:
    """``(id, section html)`` of every table."""
    tdir = out / "tables"
    if not tdir.is_dir():
        return []
    stems = {p.stem for p in tdir.iterdir() if p.suffix in (".md", ".csv") and not p.name.startswith(".")}
    sections = []
    for stem in _order(stems):
        md, cs = tdir / f"{stem}.md", tdir / f"{stem}.csv"
        own, rows = "", []
        if md.is_file():
            own, rows = _split_md(md.read_text(encoding="utf-8"))
        if not rows and cs.is_file():
            try:
                rows = _csv_rows(cs)
            except (OSError, csv.Error, UnicodeDecodeError):
                rows = []
        if rows and (len(rows) - 1 > _OPEN_ROWS or stem.endswith("_raw")):
            body = (f"<details><summary>show the table ({len(rows) - 1} rows)</summary>{_table_html(rows)}"
                    "</details>")
        else:
            body = _table_html(rows) if rows else (f"<pre>{html.escape(md.read_text(encoding='utf-8'))}</pre>"
                                                   if md.is_file() else "<p class=empty>(unreadable)</p>")
        links = _links(out, report_dir, [cs, md, tdir / f"{stem}.tex"])
        sections.append((f"table-{stem}",
            f'<section class=item id="table-{html.escape(stem)}"><h3>{html.escape(stem)}</h3>'
            f"<p class=look><b>What to look for:</b> {html.escape(caption_for(stem, 'table'))}</p>"
            + (f"<p class=own>{html.escape(own)}</p>" if own else "") + body + links + "</section>"))
    return sections


def _figure_paths(out: Path) -> list[Path]:
    found: dict[str, Path] = {}
    for d in ("plots", "figures"):
        root = out / d
        if root.is_dir():
            for p in sorted(root.rglob("*.png")):
                if not any(part.startswith(".") for part in p.relative_to(out).parts):
                    found.setdefault(str(p.relative_to(out)), p)
    by_stem: dict[str, list[Path]] = {}
    for p in found.values():
        by_stem.setdefault(p.stem, []).append(p)
    return [p for s in _order(by_stem) for p in by_stem[s]]


def _is_roc(stem: str) -> bool:
    return stem == "roc" or stem.startswith("roc_")


def _figures(out: Path, report_dir: Path, roc: bool = False) -> list[tuple[str, str]]:
    """``(id, section html)`` of every figure; ``roc``: only the ROC figures, else every other one."""
    sections = []
    for p in _figure_paths(out):
        stem = p.stem
        if _is_roc(stem) != roc:
            continue
        data = base64.b64encode(p.read_bytes()).decode("ascii")
        rel = str(p.relative_to(out))
        extra = [out / "roc" / "roc.csv"] if roc else []  # the curves' points, as data
        links = _links(out, report_dir, [p, p.with_suffix(".pdf"), *extra])
        sid = f"figure-{stem}"
        sections.append((sid,
            f'<section class=item id="{html.escape(sid)}"><h3>{html.escape(rel)}</h3>'
            f"<p class=look><b>What to look for:</b> {html.escape(caption_for(stem, 'figure'))}</p>"
            f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(rel)}"></figure>'
            + links + "</section>"))
    return sections


def _toc(groups: list[tuple[str, str, list[tuple[str, str]]]]) -> str:
    """The table of contents: each part (anchor, title) and the items in it, in page order."""
    rows = []
    for anchor, title, items in groups:
        sub = " · ".join(f'<a href="#{html.escape(i)}">{html.escape(i.split("-", 1)[-1])}</a>' for i, _ in items)
        rows.append(f'<li><a href="#{anchor}">{html.escape(title)}</a>' + (f"<span class=sub>{sub}</span>" if sub
                                                                             else "") + "</li>")
    return "<nav class=toc><b>Contents</b><ol>" + "".join(rows) + "</ol></nav>"


_SUMMARY_KEYS = [("n_shadows_done", "shadows used (done)"), ("n_shadows_total", "shadows in store"),
                 ("n_targets", "target shadows"), ("n_train_samples", "challenge (train) samples"),
                 ("n_pairs", "(target, sample) pairs"), ("fpr", "FPRs"),
                 ("singleton_threshold", "singleton threshold"), ("wall_s", "analysis wall time (s)")]

_CSS = """
body{font-family:DejaVu Sans,Helvetica,Arial,sans-serif;margin:0;background:#fff;color:#1b1b1b;line-height:1.4}
header{background:#1f3b5a;color:#fff;padding:18px 28px}
header h1{margin:0 0 6px 0;font-size:24px}
header .hash{font-family:monospace;font-size:15px;background:#2d5580;padding:2px 6px;border-radius:3px}
main{padding:8px 28px 40px 28px;max-width:1200px}
h2{border-bottom:2px solid #1f3b5a;padding-bottom:4px;margin-top:28px}
h3{margin:0 0 6px 0;font-family:monospace;font-size:17px}
section.item{border:1px solid #d0d7de;border-radius:6px;padding:12px 16px;margin:14px 0;background:#fafbfc}
p.look{background:#fff8c5;border-left:4px solid #d4a72c;padding:6px 10px;margin:6px 0}
p.own{color:#444;font-size:14px}
.scroll{overflow-x:auto;max-width:100%;scrollbar-color:#8c959f #eaeef2}
.scroll::-webkit-scrollbar{height:10px}
.scroll::-webkit-scrollbar-thumb{background:#8c959f;border-radius:5px}
.scroll::-webkit-scrollbar-track{background:#eaeef2}
table{border-collapse:collapse;font-size:14px;background:#fff}
table.wide{font-size:12.5px}
th,td{border:1px solid #d0d7de;padding:4px 9px}
table.wide th,table.wide td{padding:3px 5px}
thead th{vertical-align:bottom}
table.wide thead th{overflow-wrap:anywhere;min-width:3.5em}
tbody th{text-align:left}
details summary{cursor:pointer;color:#1f3b5a;margin:4px 0}
thead th{background:#e8eef5}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:8px 0}
img{max-width:100%;height:auto;border:1px solid #d0d7de;background:#fff}
dl.facts{display:grid;grid-template-columns:max-content auto;gap:2px 14px;margin:10px 0}
dl.facts dt{font-weight:bold}
dl.facts dd{margin:0;font-family:monospace}
pre.spec{background:#f6f8fa;border:1px solid #d0d7de;padding:10px;font-size:13px;overflow-x:auto}
.files{font-size:13px;color:#555}
nav.toc{background:#f6f8fa;border:1px solid #d0d7de;border-radius:6px;padding:8px 14px;margin:14px 0}
nav.toc ol{margin:4px 0 0 0;padding-left:22px}
nav.toc li{margin:2px 0}
nav.toc .sub{display:block;font-size:13px;color:#555}
@media print{.scroll{overflow:visible}table{font-size:10px}td,th{overflow-wrap:anywhere}}
p.note,p.empty{color:#666;font-style:italic}
p.incomplete{margin:0;padding:10px 28px;background:#ffebe9;color:#82071e;font-weight:bold;border-bottom:2px solid #cf222e}
"""


def render_report(out: str | Path, *, store: str | Path | None = None, title: str | None = None,
                  report_dir: str | Path | None = None) -> str:
    """The report's HTML for the analysis folder ``out`` (see the module docstring), its file links
    relative to ``report_dir`` (default ``out/report``), the folder the page will be written to."""
    out = Path(out)
    report_dir = Path(report_dir) if report_dir is not None else out / "report"
    summary = _read_json(out / "analysis.json")
    store_path = Path(store) if store is not None else (Path(summary["store"]) if summary.get("store") else None)
    attrs = _store_attrs(store_path)
    spec: Any = attrs.get("spec", {})
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except ValueError:
            pass
    spec_hash = str(summary.get("spec_hash") or attrs.get("spec_hash") or "unknown")
    name = spec.get("name", "") if isinstance(spec, dict) else ""
    title = title or f"mia-hpc analysis{': ' + name if name else ''}"

    facts = [("store", str(store_path) if store_path else "unknown")]
    facts += [(label, summary[k]) for k, label in _SUMMARY_KEYS if k in summary]
    if attrs.get("created"):
        facts.append(("store created", attrs["created"]))
    if not summary:
        facts.append(("analysis.json", "missing: the analysis did not finish, or this is not an analysis folder"))
    facts_html = "".join(f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(_fact(v))}</dd>" for k, v in facts)
    warn = incomplete_line(summary)
    spec_text = json.dumps(spec, indent=2, sort_keys=False) if spec else "(spec not found: store not readable)"

    tables, figures = _tables(out, report_dir), _figures(out, report_dir)
    roc = _figures(out, report_dir, roc=True)
    roc_html = [h for _, h in roc] or ["<p class=empty>No ROC curves found (plots/roc.png is written by "
                                       "analysis.output.roc).</p>"]
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        *([f"<p class=incomplete>{html.escape(warn)}</p>"] if warn else []),
        f"<header><h1>{html.escape(title)}</h1>"
        f"<div>spec hash <span class=hash>{html.escape(spec_hash)}</span> · generated {now}</div></header>",
        "<main>",
        _toc([("roc", "ROC curves", roc), ("spec", "Run", []), ("tables", f"Tables ({len(tables)})", tables),
              ("figures", f"Figures ({len(figures)})", figures)]),
        "<h2 id=roc>ROC curves</h2>", *roc_html,
        "<h2 id=spec>Run</h2>", f"<dl class=facts>{facts_html}</dl>",
        f"<details><summary>Spec (normalized)</summary><pre class=spec>{html.escape(spec_text)}</pre></details>",
        f"<h2 id=tables>Tables ({len(tables)})</h2>",
        *([h for _, h in tables] or ["<p class=empty>No tables found.</p>"]),
        f"<h2 id=figures>Figures ({len(figures)})</h2>",
        *([h for _, h in figures] or ["<p class=empty>No figures found.</p>"]),
        "</main></body></html>",
    ]
    return "\n".join(parts) + "\n"


def write_report(out: str | Path, *, store: str | Path | None = None, title: str | None = None,
                 report_dir: str | Path | None = None) -> Path:
    """Write ``report_dir/index.html`` (default ``out/report/index.html``) atomically (temporary
    name, then rename); return its path.

    Parameters
    ----------
    out : str or Path
        An analysis folder (what :func:`analysis.output.report.analyze` wrote, plus any other module's
        ``tables/`` and ``plots/`` files).
    store : str or Path, optional
        The store, for its spec; default: ``analysis.json``'s ``store`` entry.
    title : str, optional
        Page title; default "mia-hpc analysis: <spec name>".
    report_dir : str or Path, optional
        Where the page goes; its links to the analysis' files are relative to it, so the page works
        wherever it is written on the same filesystem. Default ``out/report``.
    """
    out = Path(out)
    report_dir = Path(report_dir) if report_dir is not None else out / "report"
    text = render_report(out, store=store, title=title, report_dir=report_dir)
    return write_text(report_dir / "index.html", text)


def _main(argv: list[str] | None = None) -> int:  # python -m analysis.output.html_report OUT
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m analysis.output.html_report ANALYSIS_DIR", file=sys.stderr)
        return 2
    print(write_report(args[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
