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

from analysis.html_report import caption_for, write_report
from analysis.report import analyze
from analysis.synthetic import write_synthetic_store

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
    assert "lira-fixed-variance" in text and "<table>" in text


def test_caption_registry():
    assert caption_for("attacks") != caption_for("attacks_per_target")
    assert "specific guidance" in caption_for("something_nobody_knows", "figure")
    assert caption_for("roc_lira_loglog") == caption_for("roc")  # prefix match


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
