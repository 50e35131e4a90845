"""The static HTML report: built from ``analyze``'s output, rendered in headless Chromium.

Chromium (Debian's ``chromium``) is installed by ``.ci/chromium.sh``. Without it the render tests
skip on a developer machine and FAIL under CI (``CI=true``), which must never skip them.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from analysis.output.html_report import caption_for, write_report
from analysis.output.report import analyze
from analysis.tools.synthetic_store import write_synthetic_store

SKIP_REASON = "chromium not installed; run `sudo bash .ci/chromium.sh` to enable"


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe:
        return exe
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {SKIP_REASON}")
    pytest.skip(SKIP_REASON)


def _run_chromium(exe: str, tmp: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={tmp / 'chromium-profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, "HOME": str(tmp)})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    store = root / "store.zarr"
    write_synthetic_store(store, n_shadows=12, n_samples=300, n_test=60, n_queries=2, seed=4,
                          separation={"over": 0.0, "under": 4.0}, frac_under=0.25, offset_mean=0.0,
                          analysis={"targets": 0, "fpr": [0.001, 0.01]})
    out = root / "analysis"
    analyze(store, out, progress=False)
    # a table and a figure from a module this report knows nothing about must still appear
    (out / "tables" / "zz_new_module.csv").write_text("row,value\nfirst,1.5\nsecond,2.5\n")
    Image.new("RGB", (120, 80), (200, 30, 30)).save(out / "plots" / "zz_new_figure.png")
    path = write_report(out)
    return out, path


def test_report_file(built):
    out, path = built
    assert path == out / "report" / "index.html"
    text = path.read_text(encoding="utf-8")
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], "temporary files left behind"
    spec_hash = json.loads((out / "analysis.json").read_text())["spec_hash"]
    assert spec_hash in text
    assert html.escape('"name": "synthetic"') in text  # the spec, from the store's attrs
    # offline: nothing fetched from elsewhere (links to sibling files are relative)
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:|//)', text, re.I)
    assert "<script" not in text.lower() and "<link" not in text.lower()
    n_png = sorted(p.name for p in (out / "plots").rglob("*.png"))
    assert text.count("<img ") == len(n_png) >= 3
    for stem in [p.stem for p in (out / "tables").glob("*.csv")]:
        assert f'id="table-{stem}"' in text, stem
    for stem in ("attacks", "privacy_score_hist"):
        assert html.escape(caption_for(stem)) in text, stem
    assert "no specific guidance is registered" in text  # generic captions for the unknown ones
    assert "lira-fixed-variance" in text and "<table" in text
    # the ROC curves come first (before the run's facts, the tables and the other figures), with their data
    assert text.index('id="figure-roc"') < text.index("id=spec") < text.index('id="table-attacks"') \
        < text.index('id="figure-privacy_score_hist"')
    assert 'href="../roc/roc.csv"' in text and (out / "roc" / "roc.csv").is_file()
    # the table of contents links every table and figure section
    toc = text[text.index("<nav class=toc>"):text.index("</nav>")]
    for sid in re.findall(r'<section class=item id="([^"]+)"', text):
        assert f'href="#{sid}"' in toc, sid


def test_caption_registry():
    assert caption_for("attacks") != caption_for("attacks_per_target")
    assert "specific guidance" in caption_for("something_nobody_knows", "figure")
    assert caption_for("roc_lira_loglog") == caption_for("roc")  # prefix match
    # every figure's caption is about that figure, not copied from a neighbour's
    tpr, auroc = caption_for("sweep_tpr_0p1pct", "figure"), caption_for("sweep_auroc", "figure")
    assert tpr != auroc and "TPR" in tpr and "AUROC" not in tpr and "AUROC" in auroc
    absolute, relative = caption_for("complexity", "figure"), caption_for("complexity_relative", "figure")
    assert len({absolute, relative, caption_for("complexity", "table")}) == 3
    assert "relative" in relative and "95%" in relative and "absolute" in absolute
    assert caption_for("sweep", "table") != caption_for("sweep_auroc", "figure")
    assert "bands" not in caption_for("sweep", "table")  # a table has no bands
    assert caption_for("ood_msp_vs_privacy", "figure") != caption_for("ood_energy_vs_privacy", "figure")
    assert "Fig. 1b" in caption_for("ood_msp_vs_privacy", "figure")
    assert "Figs. 9, 10" in caption_for("mem_vs_ood_energy", "figure")


def test_report_renders_in_chromium(built, tmp_path):
    exe = _chromium()
    out, path = built
    # 1. every image decodes: a copy of the page with a probe script that records naturalWidth
    probe = path.with_name("probe.html")
    script = ("<script>window.addEventListener('load',function(){var w=[];"
              "for(const i of document.images){w.push(i.complete?i.naturalWidth:-1)}"
              "var d=document.createElement('pre');d.id='imgprobe';d.textContent=JSON.stringify(w);"
              "document.body.appendChild(d);});</script>")
    probe.write_text(path.read_text(encoding="utf-8").replace("</body>", script + "</body>"), encoding="utf-8")
    try:
        r = _run_chromium(exe, tmp_path, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    finally:
        probe.unlink()
    m = re.search(r'<pre id="imgprobe">([^<]*)</pre>', r.stdout)
    assert m, f"probe did not run (rc {r.returncode}): {r.stderr[-2000:]}"
    widths = json.loads(m.group(1))
    n_img = path.read_text(encoding="utf-8").count("<img ")
    assert len(widths) == n_img >= 3
    assert all(w > 0 for w in widths), f"images that did not load (naturalWidth): {widths}"

    # 2. the page is not blank: a screenshot with more than one colour, and plenty of non-white
    shot = tmp_path / "report.png"
    r = _run_chromium(exe, tmp_path, "--window-size=1280,2400", f"--screenshot={shot}", path.as_uri())
    assert shot.is_file(), f"no screenshot (rc {r.returncode}): {r.stderr[-2000:]}"
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[0] >= 1000 and img.shape[1] >= 1000
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50, "screenshot is (nearly) a single colour"
    non_white = (img.min(axis=-1) < 240).mean()
    assert non_white > 0.05, f"only {non_white:.1%} of the page is not white"
    keep = os.environ.get("MIA_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)


_OVERFLOW_PROBE = """<script>window.addEventListener('load',function(){
var d=document.documentElement, r={width:d.clientWidth, page:d.scrollWidth>d.clientWidth?[d.scrollWidth,d.clientWidth]:null,
 sections:[], clipped:[]};
for(const s of document.querySelectorAll('main > section, section.item, header, nav')){
 if(s.scrollWidth>s.clientWidth+1)r.sections.push([s.id||s.tagName,s.scrollWidth,s.clientWidth]);}
for(const b of document.querySelectorAll('.scroll')){
 if(b.scrollWidth>b.clientWidth+1)r.clipped.push([b.closest('section').id,b.scrollWidth,b.clientWidth]);}
var p=document.createElement('pre');p.id='overflow';p.textContent=JSON.stringify(r);document.body.appendChild(p);});
</script>"""


def _overflow(exe: str, tmp: Path, page: Path, width: int) -> dict:
    probe = page.with_name(f"overflow-{width}.html")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", _OVERFLOW_PROBE + "</body>"), encoding="utf-8")
    try:
        r = _run_chromium(exe, tmp, f"--window-size={width},1600", "--virtual-time-budget=10000", "--dump-dom",
                          probe.as_uri())
    finally:
        probe.unlink()
    m = re.search(r'<pre id="overflow">([^<]*)</pre>', r.stdout)
    assert m, f"overflow probe did not run (rc {r.returncode}): {r.stderr[-2000:]}"
    return json.loads(html.unescape(m.group(1)))


def test_report_fits_the_page_in_chromium(built, tmp_path):
    """Nothing is cut off at the page's right edge: at a laptop width (1280 px) every section and every
    table fits in full; in a narrow window (800 px) a wide table scrolls inside its own box, but no
    section and not the page is wider than the window. Screenshots of both are kept with
    MIA_KEEP_SCREENSHOT=DIR."""
    exe = _chromium()
    out, path = built
    wide, narrow = _overflow(exe, tmp_path, path, 1280), _overflow(exe, tmp_path, path, 800)
    assert wide["width"] >= 1200 and narrow["width"] <= 820, (wide["width"], narrow["width"])
    for r in (wide, narrow):
        assert r["page"] is None, f"the page is wider than a {r['width']} px window: {r['page']}"
        assert not r["sections"], f"sections wider than the page at {r['width']} px: {r['sections']}"
    assert not wide["clipped"], f"tables cut off at the right edge of their box at 1280 px: {wide['clipped']}"
    keep = os.environ.get("MIA_KEEP_SCREENSHOT")
    if keep:
        for w in (1280, 800):
            shot = Path(keep) / f"report-{w}.png"
            _run_chromium(exe, tmp_path, f"--window-size={w},9000", f"--screenshot={shot}", path.as_uri())
