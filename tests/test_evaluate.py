"""`lazyslide evaluate` end to end: test preset, the real Aperio slide, tiny sample counts."""

from __future__ import annotations

import csv
import json

import pytest

from lazyslide.cli import main

from .test_prepare import SVS


@pytest.fixture(scope="module")
def small_folder(small_model, tmp_path_factory):
    """The small test geometry as a model folder (random init), so the CLI can load it."""
    folder = tmp_path_factory.mktemp("model") / "small"
    small_model.save(folder)
    return folder


@pytest.mark.parametrize("method", ["urcdm", "outpaint"])
def test_evaluate_writes_the_papers_tables(tmp_path, capsys, method, small_folder):
    out = tmp_path / "report"
    code = main(["evaluate", "--model", str(small_folder), "--real", str(SVS), "--seeds", "0-1", "--n", "6",
                 "--pfid-n", "4", "--block", "2", "--method", method, "-o", str(out),
                 "--cache", str(tmp_path / "cache"), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["method"] == method and report["seeds"] == [0, 1]
    assert report["summary"]["pfid"] > 0 and report["summary"]["pfid_n"] == 4
    md = (out / "report.md").read_text()
    assert "| Method | FID (level 0) | pFID | Improved precision | Improved recall |" in md
    assert "| Level | um/px |" in md
    for lv in ("0", "1", "2"):
        assert report["levels"][lv]["n_real"] == 6
        assert (out / f"samples_level{lv}.png").is_file()
    deepest = report["levels"]["2"]
    assert deepest["n_generated"] >= 4
    assert 0 <= deepest["precision"] <= 1 and 0 <= deepest["recall"] <= 1
    if method == "urcdm":
        assert report["summary"]["fid_level0"] > 0
    else:  # outpainting makes only the full-resolution canvas
        assert report["levels"]["0"]["n_generated"] == 0 and report["summary"]["fid_level0"] is None
        assert "| outpaint | n/a |" in md
    cons = report["consistency"]
    assert set(cons["real"]) == {"1", "2"} and "| Level | source | pairs | tissue IoU |" in md
    for v in cons["real"].values():
        assert v["pairs"] == 6 and 0 <= v["tissue_iou"] <= 1 and 0 <= v["hallucinated_tissue"] <= 1
        assert v["grid_tissue"] is not None and 0.5 < v["grid_tissue"] < 2  # real: no tile grid
    if method == "urcdm":  # two seeds, a 2x2 block each, against their parent windows
        assert set(cons["generated"]) == {"1", "2"}
        assert all(v["pairs"] == 8 for v in cons["generated"].values())
    else:  # no parent windows: the grid score only
        assert set(cons["generated"]) == {"2"} and cons["generated"]["2"]["pairs"] == 0
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert {r["metric"] for r in rows} >= {"pfid", "precision", "recall", "fid"}
    assert (out / "pr_by_level.png").stat().st_size > 0


def test_evaluate_bad_input(tmp_path, capsys):
    base = ["evaluate", "--model", "random:test", "-o", str(tmp_path / "r")]
    assert main(base + ["--real", str(tmp_path / "none.svs")]) == 2
    assert "none.svs: no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"nope")
    assert main(base + ["--real", str(bad)]) == 2
    assert "real slide: cannot read" in capsys.readouterr().err
    assert main(base + ["--real", str(SVS), "--n", "2"]) == 2
