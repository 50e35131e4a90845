"""Paper tables: accuracy (Tables 1/4) and attacks x challenge sets with intervals (Tables 2/3/5)."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from analysis.store_io.numfmt import fmt, fmt_p, is_p_column, max_significant_digits
from analysis.output.tables import (accuracy_table, attack_table, format_accuracy_table, format_attack_table, format_numbers,
                             latex_escape, to_latex, to_markdown, write_table)

SUBSETS = ("train/over", "train/under", "test/over", "test/under")


@pytest.fixture(scope="module")
def attack_df():
    rng = np.random.default_rng(0)
    t, n = 6, 400
    member = rng.random((t, n)) < 0.5
    under = np.arange(n) >= 300
    sep = np.where(under, 2.5, 0.3)
    results = {"lira-online": (member, rng.normal(size=(t, n)) + sep * member),
               "loss_attack": (member, rng.normal(size=(t, n)) + 0.5 * sep * member)}
    challenge = {"random": under, "subpopulation": under & (np.arange(n) < 330),
                 "singletons": under & (np.arange(n) % 2 == 0)}
    return attack_table(results, challenge, n_boot=100, seed=1), challenge


def test_attack_table_structure_and_intervals(attack_df):
    df, challenge = attack_df
    assert df.index.names == ["attack", "challenge set"]
    assert list(df.index) == [(a, c) for a in ("lira-online", "loss_attack") for c in challenge]
    metrics = [f"{m} {g}" for m in ("AUROC", "TPR@0.1%") for g in ("All", "Under")]
    for c in metrics:
        assert {c, f"{c} lo", f"{c} hi"} <= set(df.columns)
        assert (df[f"{c} lo"] <= df[c] + 1e-12).all() and (df[c] <= df[f"{c} hi"] + 1e-12).all(), c
        assert ((df[c] >= 0) & (df[c] <= 1)).all()
    # "All" is the same whatever the challenge set; Under is the challenge set
    for a in ("lira-online", "loss_attack"):
        assert df.loc[a, "AUROC All"].nunique() == 1
    assert list(df.loc["lira-online", "n Under"]) == [int(m.sum()) for m in challenge.values()]
    assert (df["AUROC Under"] > df["AUROC All"]).all()
    assert (df["degenerate"] == 0).all() and df.attrs["n_boot"] == 100


def test_attack_table_view_and_files(attack_df, tmp_path):
    df, _ = attack_df
    view = format_attack_table(df)
    assert list(view.columns) == ["AUROC All", "AUROC Under-represented", "TPR@0.1% FPR All",
                                  "TPR@0.1% FPR Under-represented", "n Under"]
    row = df.iloc[0]
    assert view.iloc[0]["AUROC All"] == \
        f"{fmt(row['AUROC All'])} [{fmt(row['AUROC All lo'])}, {fmt(row['AUROC All hi'])}]"
    assert view.iloc[0]["TPR@0.1% FPR All"] == (f"{fmt(100 * row['TPR@0.1% All'])}% [{fmt(100 * row['TPR@0.1% All lo'])}%, "
                                                f"{fmt(100 * row['TPR@0.1% All hi'])}%]")
    assert all(max_significant_digits(c)[0] <= 4 for c in view.to_numpy().ravel()), view
    paths = write_table(tmp_path / "tables", "attacks_ci", df, view, caption="LiRA, 95% CI; n_boot = 100")
    assert [p.name for p in paths] == ["attacks_ci.csv", "attacks_ci.md", "attacks_ci.tex"]
    back = pd.read_csv(paths[0], index_col=[0, 1])
    np.testing.assert_allclose(back["AUROC All"].values, df["AUROC All"].values)
    md = paths[1].read_text()
    table_lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert len(table_lines) == 2 + len(df)
    assert all(ln.count(" | ") == table_lines[0].count(" | ") for ln in table_lines)
    _check_latex(paths[2].read_text(), n_cols=2 + view.shape[1], n_rows=len(df))
    assert not list(tmp_path.rglob(".*tmp*"))


def _check_latex(tex: str, n_cols: int, n_rows: int) -> None:
    """Structural compile check: balanced environments and braces, escaped specials, column counts."""
    begins = re.findall(r"\\begin\{(\w+)\}", tex)
    ends = re.findall(r"\\end\{(\w+)\}", tex)
    assert begins == ["table", "tabular"] and ends == ["tabular", "table"]
    stripped = re.sub(r"\\[{}%_&#$]", "", tex)  # drop escaped specials
    assert stripped.count("{") == stripped.count("}")
    assert "%" not in stripped and "_" not in stripped and "#" not in stripped
    spec = re.search(r"\\begin\{tabular\}\{([lrc]+)\}", tex).group(1)
    assert len(spec) == n_cols
    body = tex.split(r"\begin{tabular}", 1)[1].split(r"\end{tabular}")[0]
    rows = [ln for ln in body.splitlines() if ln.rstrip().endswith(r"\\")]
    assert len(rows) >= n_rows + 1
    for ln in rows:
        cells = re.split(r"(?<!\\)&", ln)
        width = sum(int(m) for m in re.findall(r"\\multicolumn\{(\d+)\}", ln)) + \
            sum(1 for c in cells if r"\multicolumn" not in c)
        assert width == n_cols, ln


def test_latex_escaping_and_grouped_header():
    assert latex_escape("TPR@0.1% a_b & c#d $x$ {y} ~ ^ \\") == \
        r"TPR@0.1\% a\_b \& c\#d \$x\$ \{y\} \textasciitilde{} \textasciicircum{} \textbackslash{}"
    assert latex_escape("98.5 ± 0.1") == r"98.5 $\pm$ 0.1"
    view = pd.DataFrame({"AUROC All": ["0.5"], "AUROC Under-represented": ["0.9"], "n Under": ["3"]},
                        index=pd.Index(["x_1"], name="attack"))
    tex = to_latex(view, caption="50% of d_u")
    assert r"\multicolumn{2}{c}{AUROC}" in tex and r"50\% of d\_u" in tex and r"x\_1" in tex
    _check_latex(tex, n_cols=4, n_rows=1)
    assert to_markdown(view).splitlines()[0] == "| attack | AUROC All | AUROC Under-represented | n Under |"


def test_accuracy_table_from_store_like_array(tmp_path):
    rng = np.random.default_rng(0)
    acc = np.column_stack([rng.uniform(0.98, 1.0, 40), rng.uniform(0.8, 0.95, 40), rng.uniform(0.95, 0.99, 40),
                           np.full(40, np.nan)])  # no under-represented test samples
    da = xr.DataArray(acc, dims=("shadow", "subset"), coords={"subset": list(SUBSETS)})
    df = accuracy_table(da, dataset="digits+augdigits", n_over=1020, n_under=180)
    assert list(df.index) == ["digits+augdigits"] and df["n_shadows"].iloc[0] == 40
    for s in SUBSETS[:3]:
        m, lo, hi, pm = (df[f"{s} {k}"].iloc[0] for k in ("mean", "lo", "hi", "pm"))
        assert lo <= m <= hi and pm > 0
        assert m == pytest.approx(100 * np.nanmean(acc[:, SUBSETS.index(s)]))
        assert pm == pytest.approx(1.96 * 100 * np.std(acc[:, SUBSETS.index(s)], ddof=1), rel=1e-3)
    assert math.isnan(df["test/under mean"].iloc[0])
    view = format_accuracy_table(df)
    assert list(view.columns) == ["n_shadows", "|D_O|", "|D_U|", "Train D_O (%)", "Train D_U (%)", "Test D_O (%)",
                                  "Test D_U (%)"]
    assert view["Test D_U (%)"].iloc[0] == "N/A"
    s = "train/under"
    assert view["Train D_U (%)"].iloc[0] == f"{fmt(df[f'{s} mean'].iloc[0])} ± {fmt(df[f'{s} pm'].iloc[0])}"
    s = "train/over"
    assert format_accuracy_table(df, percentiles=True)["Train D_O (%)"].iloc[0] == \
        f"{fmt(df[f'{s} mean'].iloc[0])} [{fmt(df[f'{s} lo'].iloc[0])}, {fmt(df[f'{s} hi'].iloc[0])}]"
    assert all(max_significant_digits(c)[0] <= 4 for c in view.to_numpy().ravel()), view
    paths = write_table(tmp_path, "table1", df, view, caption="Table 1: accuracy (%), mean ± 1.96 sd over shadows")
    _check_latex(paths[2].read_text(), n_cols=1 + view.shape[1], n_rows=1)
    # concatenating two stores' rows (Table 1 has one row per mixture)
    both = pd.concat([df, accuracy_table(acc[:10], dataset="other")])
    assert list(both.index) == ["digits+augdigits", "other"]
    with pytest.raises(ValueError, match="acc must be"):
        accuracy_table(acc[:, :3])


def test_empty_challenge_set_is_na():
    rng = np.random.default_rng(2)
    member = rng.random((3, 50)) < 0.5
    df = attack_table({"a": (member, rng.normal(size=(3, 50)) + member)},
                      {"random": np.ones(50, bool), "singletons": np.zeros(50, bool)}, n_boot=20)
    assert df.loc[("a", "singletons"), "n Under"] == 0 and math.isnan(df.loc[("a", "singletons"), "AUROC Under"])
    view = format_attack_table(df)
    assert view.loc[("a", "singletons"), "AUROC Under-represented"] == "N/A"
    assert view.loc[("a", "singletons"), "AUROC All"] != "N/A"
    _check_latex(to_latex(view), n_cols=2 + view.shape[1], n_rows=2)


@pytest.mark.parametrize("value, text", [
    (0.6860876708942159, "0.6861"), (99.4412, "99.44"), (100.0, "100"), (0.5, "0.5"), (np.float32(0.25), "0.25"),
    (0.000123456, "0.0001235"), (12345.678, "1.235e+04"), (np.int64(1797), "1797"), (7, "7"), (float("nan"), "N/A"),
    (None, "N/A"), (float("inf"), "inf"), ("text", "text")])
def test_one_number_format(value, text):
    assert fmt(value) == text


def test_p_values_are_scientific_and_named_by_column():
    assert fmt(1.035767932695684e-167, p_value=True) == "1.04e-167"
    assert fmt_p(0.032) == "3.20e-02" and fmt_p(float("nan")) == "N/A"
    assert [is_p_column(c) for c in ("p", "p privacy", "p mem", "p-value", "p2.5", "pm95", "precision", "rho")] == \
        [True, True, True, True, False, False, False, False]


def test_significant_digit_scanner():
    assert max_significant_digits("| 0.6860876708942159 | 3 |") == (16, "0.6860876708942159")
    assert max_significant_digits("1.035767932695684e-167")[0] == 16
    assert max_significant_digits("99.44 ± 0.05 [1797 samples], torch 2.14.1") == (4, "99.44")
    assert max_significant_digits("0.0001235 and 100.00")[0] == 5  # trailing zeros after the point count
    assert max_significant_digits("64 shadows, 1797 samples") == (0, "")


def test_write_table_default_view_uses_the_one_format(tmp_path):
    df = pd.DataFrame({"rho privacy": [0.6860876708942159], "p privacy": [1.035767932695684e-167], "n": [1797]},
                      index=pd.Index(["msp"], name="ood score"))
    assert format_numbers(df).iloc[0].tolist() == ["0.6861", "1.04e-167", "1797"]
    paths = write_table(tmp_path, "corr", df, caption="c")
    assert "| msp | 0.6861 | 1.04e-167 | 1797 |" in paths[1].read_text()
    assert pd.read_csv(paths[0], index_col=0)["rho privacy"].iloc[0] == 0.6860876708942159  # CSV: full precision
