"""`lazyslide evaluate` end to end: test preset, the real Aperio slide, tiny sample counts."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from lazyslide.cli import main

from .test_prepare import SVS


@pytest.fixture(scope="module")
def tiny_features(tmp_path_factory):
    """A small random network saved as TorchScript: a user's own extractor, and seconds, not
    minutes, of features (the Inception features are tested in test_metrics)."""
    from .test_features import save_script

    path = tmp_path_factory.mktemp("features") / "tiny.pt"
    save_script("pooled", path)
    return path


@pytest.fixture(scope="module")
def extractor(tiny_features):
    from lazyslide.evaluation.features import load_extractor

    return load_extractor(str(tiny_features))


@pytest.fixture(scope="module")
def small_folder(small_model, tmp_path_factory):
    """The small test geometry as a model folder (random init), so the CLI can load it."""
    folder = tmp_path_factory.mktemp("model") / "small"
    small_model.save(folder)
    return folder


@pytest.mark.parametrize("method", ["urcdm", "outpaint"])
def test_evaluate_writes_the_papers_tables(tmp_path, capsys, method, small_folder, tiny_features):
    out = tmp_path / "report"
    code = main(["evaluate", "--model", str(small_folder), "--real", str(SVS), "--seeds", "0-1", "--n", "6",
                 "--pfid-n", "4", "--block", "2", "--method", method, "-o", str(out),
                 "--cache", str(tmp_path / "cache"), "--features", str(tiny_features), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["method"] == method and report["seeds"] == [0, 1]
    assert report["summary"]["pfid"] > 0 and report["summary"]["pfid_n"] == 4
    md = (out / "report.md").read_text()
    assert "| Method | FID (level 0) | KID x 1000 (level 0) | pFID | pKID x 1000 |" in md
    assert report["protocol"]["extractor"] == "torchscript:tiny.pt" and report["protocol"]["extractor_digest"]
    assert "| Level | um/px |" in md
    for lv in ("0", "1", "2"):
        assert report["levels"][lv]["n_real"] == 6
        assert (out / f"samples_level{lv}.png").is_file()
    deepest = report["levels"]["2"]
    assert deepest["n_generated"] >= 4 and deepest["kid"] is not None and len(deepest["kid_ci"]) == 2
    assert 0 <= deepest["precision"] <= 1 and 0 <= deepest["recall"] <= 1
    # the floor at the generated row's n: more real patches against the same references
    assert report["real_vs_real"]["levels"]["2"]["n_generated"] == deepest["n_generated"]
    if method == "urcdm":
        assert report["summary"]["fid_level0"] > 0
    else:  # outpainting makes only the full-resolution canvas
        assert report["levels"]["0"]["n_generated"] == 0 and report["summary"]["fid_level0"] is None
        assert "| outpaint | n/a |" in md
    cons = report["consistency"]
    assert set(cons["real"]) == {"1", "2"} and "| Method | level | pairs | tissue IoU |" in md
    for v in cons["real"].values():
        assert v["lab_vs_parent"] is not None and v["lab_vs_real"] is not None
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
    # seams: the generated inpainted tiles' seam-vs-interior crops, real patches at the same places
    seams = report["seams"]
    assert set(seams) == ({"1", "2"} if method == "urcdm" else {"2"})
    for v in seams.values():
        assert v["generated"]["n_seam"] > 0 and v["real"]["n_seam"] > 0 and v["seam_score"] > 0
        assert v["real"]["seam_score"] > 0  # the real value at the same positions, beside
    assert "## Inpainting seams" in md and "same positions on real tissue" in md


def test_evaluate_bad_input(tmp_path, capsys):
    base = ["evaluate", "--model", "random:test", "-o", str(tmp_path / "r")]
    assert main(base + ["--real", str(tmp_path / "none.svs")]) == 2
    assert "none.svs: no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"nope")
    assert main(base + ["--real", str(bad)]) == 2
    assert "real slide: cannot read" in capsys.readouterr().err
    assert main(base) == 2  # a random model records no training data: no default protocol
    assert "does not record what it learnt from" in capsys.readouterr().err
    assert main(base + ["--real", str(SVS), "--features", str(tmp_path / "enc.pt")]) == 2
    assert "enc.pt" in capsys.readouterr().err
    assert main(base + ["--real", str(SVS), "--n", "2"]) == 2


# -- other generators' samples, the noise floor, compare ------------------------------------------
EVAL = dict(n=8, pfid_n=4, block=2, progress=False, draws=50)


@pytest.fixture(scope="module")
def engine_and_export(small_model, tmp_path_factory, extractor):
    """The engine's report for slide seed 0, and a lossless export of that slide."""
    from lazyslide import Slide, TileStore
    from lazyslide.evaluation.evaluate import evaluate
    from lazyslide.export import export
    from lazyslide.materialize import materialize

    d = tmp_path_factory.mktemp("samples")
    store = TileStore(d / "store")
    slide = Slide(small_model, 0, store, make_level0=False)
    materialize(slide, show_progress=False)
    tiff = export(slide, d / "seed0.svs", "svs", compression="deflate", tile=64)
    report = evaluate(small_model, [SVS], d / "engine", seeds=[0], store=store, extractor=extractor, **EVAL)
    return report, tiff, d


def _metric_values(report):
    out = {k: v for k, v in report["summary"].items() if not isinstance(v, list)}
    for lv, v in report["levels"].items():
        out.update({f"{lv}/{k}": x for k, x in v.items() if not isinstance(x, list)})
    return out


def test_an_exported_slide_through_samples_gives_the_engines_metrics(small_model, engine_and_export,
                                                                    extractor):
    from lazyslide.evaluation.evaluate import evaluate

    engine, tiff, d = engine_and_export
    report = evaluate(small_model, [SVS], d / "file", samples=tiff, name="export", extractor=extractor,
                      **EVAL)
    assert report["name"] == "export" and report["source"].startswith("slide file")
    ours, theirs = _metric_values(report), _metric_values(engine)
    assert ours.keys() == theirs.keys() and ours["pfid"] is not None
    for key, v in theirs.items():
        assert ours[key] == (v if v is None else pytest.approx(v, rel=1e-6, abs=1e-9)), key
    assert report["consistency"]["generated"] == engine["consistency"]["generated"]
    assert report["real_vs_real"] == engine["real_vs_real"] and report["protocol"] == engine["protocol"]
    # the noise floor: more real patches against the same references, at the generated row's n
    rr = report["real_vs_real"]
    assert rr["levels"]["2"]["n_real"] == 8
    assert rr["levels"]["2"]["n_generated"] == engine["levels"]["2"]["n_generated"]
    lo, hi = rr["summary"]["pfid_ci"]
    assert lo < rr["summary"]["pfid"] < hi
    lo, hi = engine["levels"]["2"]["fid_ci"]
    assert lo < engine["levels"]["2"]["fid"] < hi
    md = (d / "file" / "report.md").read_text()
    assert "| real vs real |" in md and " [" in md


def test_a_folder_of_images_per_level(small_model, engine_and_export, tmp_path, capsys, extractor):
    from PIL import Image

    from lazyslide import Slide, TileStore
    from lazyslide.evaluation.evaluate import evaluate
    from lazyslide.evaluation.samples import level_patches

    engine, _, d = engine_and_export
    slide = Slide(small_model, 0, TileStore(d / "store"), make_level0=False)
    folder = tmp_path / "gen"
    for lv in range(3):
        (folder / f"level{lv}").mkdir(parents=True)
        for i, px in enumerate(level_patches([slide], lv, 2)):
            Image.fromarray(px).save(folder / f"level{lv}" / f"{i}.png")
    report = evaluate(small_model, [SVS], tmp_path / "r", samples=folder, extractor=extractor, **EVAL)
    for lv in ("0", "1", "2"):  # the engine's own tiles: its per-level numbers
        for key in ("fid", "kid", "precision", "recall", "n_generated"):
            assert report["levels"][lv].get(key) == pytest.approx(engine["levels"][lv].get(key)), (lv, key)
    assert report["summary"]["pfid"] is None  # no whole slide: no crops
    # one level's images with --mpp; wrong scale or size: errors naming what is expected
    base = ["evaluate", "--model", "random:test", "--real", str(SVS), "--n", "8", "-o", str(tmp_path / "x")]
    mpp1 = small_model.geometry.level_mpp(1)
    assert main(base + ["--samples", str(folder / "level1"), "--mpp", "3.3"]) == 2
    assert "match no level" in capsys.readouterr().err
    Image.new("RGB", (40, 40)).save(folder / "level1" / "big.png")
    assert main(base + ["--samples", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "big.png: 40x40 px; level 1 images must be 32x32 px at" in err
    assert main(base + ["--samples", str(folder / "level1"), "--mpp", f"{mpp1 * 1.3}"]) == 2
    assert main(base + ["--samples", str(tmp_path / "nothing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_compare_tabulates_reports_and_refuses_other_protocols(small_model, engine_and_export,
                                                             tmp_path, capsys, extractor):
    from lazyslide.evaluation.evaluate import evaluate

    engine, tiff, d = engine_and_export
    # --no-pfid: no generated crops, the same protocol (real crops drawn all the same)
    r = evaluate(small_model, [SVS], tmp_path / "file", samples=tiff, name="export", pfid=False,
                 extractor=extractor, **EVAL)
    assert r["summary"]["pfid"] is None and not r["pfid_measured"] and engine["pfid_measured"]
    assert r["protocol"] == engine["protocol"] and r["real_vs_real"] == engine["real_vs_real"]
    assert main(["compare", str(d / "engine"), str(tmp_path / "file"), "-o", str(tmp_path / "c")]) == 0
    md = (tmp_path / "c" / "compare.md").read_text()
    for row in ("| urcdm |", "| export |", "| real vs real |"):
        assert row in md, row
    pfid = {row: md.split(f"| {row} |")[1].split("|")[2].strip() for row in ("urcdm", "export")}
    assert pfid["export"] == "n/a" and pfid["urcdm"] != "n/a"  # Table 1's pFID column
    assert "level 2 IP" in md and (tmp_path / "c" / "compare.png").stat().st_size > 0
    # the same slide's pixels: paired KID differences of exactly 0 at levels 1 and 2 (level 0:
    # one image per seed, too few for KID; pFID: the export made no crops)
    delta = md.split("Delta KID x 1000 on paired draws")[1].split("| export |")[1].split("\n")[0]
    zero = "0.00 [0.00, 0.00]"
    assert [c.strip() for c in delta.split("|")[:4]] == ["n/a", zero, zero, "n/a"]
    # a model that learnt other data (its audit's training set differs): still one protocol
    import shutil

    shutil.copytree(d / "engine", tmp_path / "retrained")
    report = json.loads((tmp_path / "retrained" / "report.json").read_text())
    report["protocol"]["training"] = report["protocol"]["training"][:0]
    (tmp_path / "retrained" / "report.json").write_text(json.dumps(report))
    assert main(["compare", str(d / "engine"), str(tmp_path / "retrained"), "-o", str(tmp_path / "c1")]) == 0
    other = dict(EVAL, n=10)
    evaluate(small_model, [SVS], tmp_path / "more", samples=tiff, extractor=extractor, **other)
    assert main(["compare", str(d / "engine"), str(tmp_path / "more"), "-o", str(tmp_path / "c2")]) == 2
    assert "real patches per level (--n)" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "nothing"), "-o", str(tmp_path / "c3")]) == 2
    assert "no report.json" in capsys.readouterr().err
    # another extractor (another network's weights): refused, naming it
    from lazyslide.evaluation.features import load_extractor

    from .test_features import save_script

    torch_file = tmp_path / "other.pt"
    save_script("map", torch_file)
    evaluate(small_model, [SVS], tmp_path / "other", samples=tiff, extractor=load_extractor(str(torch_file)),
             **EVAL)
    assert main(["compare", str(d / "engine"), str(tmp_path / "other"), "-o", str(tmp_path / "c4")]) == 2
    assert "feature extractor" in capsys.readouterr().err


# -- the held-out protocol and the memorisation audit ---------------------------------------------
def _level_folder(small_model, spec, tmp_path, name, count=48):
    """``count`` patches of a real region at level 2's scale: a "generator" that returns them."""
    from lazyslide.evaluation.samples import real_patches
    from lazyslide.realdata import parse_spec

    g = small_model.geometry
    reader = parse_spec(spec, default_region="held-out").open()
    px = real_patches([reader], g.level_mpp(2), g.tile, count, np.random.default_rng(7))
    folder = tmp_path / name
    folder.mkdir()
    for i, im in enumerate(px):
        Image.fromarray(im).save(folder / f"{i}.png")
    return folder


def test_the_audit_flags_a_generator_that_returns_training_patches(small_model, tmp_path, extractor):
    """A model that learnt from prostate's training region: its default references are the held-out
    regions it did not see; a "generator" returning training patches is flagged as copying, one
    returning unseen held-out tissue is not."""
    from lazyslide.evaluation.evaluate import evaluate
    from lazyslide.model import URCDM

    cfg = dict(small_model.config, training_data=[{"source": "prostate", "region": "training"}])
    model = URCDM(cfg, init_seed=0, source="random:small")
    assert model.fingerprint == small_model.fingerprint  # provenance names the data, not the tiles
    mpp = model.geometry.level_mpp(2)
    verdicts = {}
    for name, spec in (("copies", "prostate:training"), ("unseen", "prostate:held-out")):
        folder = _level_folder(model, spec, tmp_path, name)
        r = evaluate(model, None, tmp_path / f"r-{name}", samples=folder, samples_mpp=mpp,
                     extractor=extractor, n=24, progress=False)
        labels = [s["source"] + ":" + s["region"] for grp in r["protocol"]["real"] for s in grp["sources"]]
        assert "prostate:held-out" in labels and not any(lb.endswith(":training") for lb in labels)
        assert r["protocol"]["training"][0]["region"] == "training"
        audit = r["memorisation"]["2"]
        verdicts[name] = (audit["features"]["verdict"], audit["pixels"]["verdict"])
        assert (tmp_path / f"r-{name}" / "memorisation_level2.png").is_file()
        assert "## Memorisation audit" in (tmp_path / f"r-{name}" / "report.md").read_text()
    # features see a shifted copy of training tissue; pixels, at other offsets, need not
    assert verdicts["copies"][0] == "copies training data", verdicts
    assert not any(v == "copies training data" for v in verdicts["unseen"]), verdicts


def test_the_references_do_not_depend_on_how_many_images_a_report_has(small_model, tmp_path, extractor):
    """Two "generators" with 24 and 9 level-2 images: the same real patches (digest) and one
    table; the floors differ (each at its row's n), the references do not."""
    from lazyslide.evaluation.compare import compare
    from lazyslide.evaluation.evaluate import evaluate

    mpp = small_model.geometry.level_mpp(2)
    reports = []
    for name, count, crops in (("many", 24, 16), ("few", 9, 5)):  # folders have no pFID crops
        folder = _level_folder(small_model, "prostate:training", tmp_path, name, count=count)
        reports.append(evaluate(small_model, ["ovary-nest"], tmp_path / f"r-{name}", samples=folder,
                                samples_mpp=mpp, extractor=extractor, n=16, pfid_n=crops,
                                progress=False, audit=False))
    assert reports[0]["protocol"]["real_features"] == reports[1]["protocol"]["real_features"]
    assert [r["levels"]["2"]["n_generated"] for r in reports] == [24, 9]
    compare([tmp_path / "r-many", tmp_path / "r-few"], tmp_path / "cmp")
    assert "few" in (tmp_path / "cmp" / "compare.md").read_text()
