"""The reader study: API rules, the page in headless Chromium, and Table 2 from the database."""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import threading

import pytest
from aiohttp import web

from lazyslide.cli import main
from lazyslide.evaluation.study import StudyDB, build_pairs, study_report
from lazyslide.server.study import Study
from lazyslide.wsi import SlideReader

from .test_prepare import SVS
from .test_viewer_browser import CHROMIUM


@pytest.fixture(scope="module")
def pairs(small_model):
    return build_pairs(small_model, [SlideReader(SVS, None)], [1, 2], 3, seeds=[0, 1], block=2)


def test_pairs_match_in_scale_and_size(pairs, small_model):
    assert len(pairs) == 6 and len({p.id for p in pairs}) == 6
    for p in pairs:
        assert p.real.shape == p.fake.shape == (32, 32, 3)
        assert p.mpp == pytest.approx(small_model.geometry.level_mpp(p.level))
        other = "left" if p.real_side == "right" else "right"
        assert p.image(p.real_side) is p.real and p.image(other) is p.fake


async def test_bad_answers_get_400_and_nothing_is_double_counted(pairs, tmp_path, aiohttp_client):
    db = StudyDB(tmp_path / "s.sqlite")
    client = await aiohttp_client(Study(pairs, db).app())
    first = (await (await client.get("/study/api/next", params={"reader": "r1"})).json())
    assert first["total"] == 6 and first["answered"] == 0
    answer = {"reader": "r1", "pair": first["pair"], "choice": "left"}
    ok = await client.post("/study/api/answer", json=answer)
    assert ok.status == 200
    bad = [
        {"reader": "r1", "pair": first["pair"], "choice": "right"},  # replayed
        {"reader": "r1", "pair": "nope", "choice": "left"},          # unknown pair
        {"pair": first["pair"], "choice": "left"},                   # no reader id
        {"reader": "", "pair": first["pair"], "choice": "left"},
        {"reader": "r1", "pair": first["pair"], "choice": "up"},
    ]
    for body in bad:
        r = await client.post("/study/api/answer", json=body)
        assert r.status == 400, body
        assert (await r.text())
    r = await client.post("/study/api/answer", data=b"not json", headers={"Content-Type": "application/json"})
    assert r.status == 400
    assert (await client.get("/study/api/next")).status == 400
    assert (await client.get("/study/img/nope/left.png")).status == 404
    img = await client.get(first["left"])
    assert img.status == 200 and img.content_type == "image/png"
    n = sqlite3.connect(tmp_path / "s.sqlite").execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    assert n == 1
    after = await (await client.get("/study/api/next", params={"reader": "r1"})).json()
    assert after["answered"] == 1 and after["pair"] != first["pair"]


def _serve(app: web.Application):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    started = threading.Event()

    def run():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        started.set()
        loop.run_forever()

    threading.Thread(target=run, daemon=True).start()
    started.wait(30)

    def stop():
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)

    return f"http://127.0.0.1:{port}", stop


@pytest.mark.skipif(not os.path.exists(CHROMIUM) and not os.environ.get("CI"),
                    reason="Debian's chromium is not installed (`make test` installs it)")
def test_a_reader_answers_five_pairs_in_a_real_browser(pairs, tmp_path, capsys):
    from playwright.sync_api import sync_playwright

    db_path = tmp_path / "study.sqlite"
    url, stop = _serve(Study(pairs, StudyDB(db_path)).app())
    real_side = {p.id: p.real_side for p in pairs}
    chosen = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page()
            page.goto(f"{url}/study")
            page.fill("#reader", "dr-a")
            page.click("#reader-form button")
            for i in range(5):
                page.wait_for_function(
                    f"() => document.getElementById('progress').textContent.startsWith('{i} /')")
                pair = page.evaluate("() => window.lazyslideStudy.current.pair")
                side = "left" if i % 2 == 0 else "right"
                page.click(f"#choose-{side}")
                chosen.append((pair, side))
            page.wait_for_function("() => document.getElementById('progress').textContent.startsWith('5 /')")
            # the sixth pair's image arrives after the progress text (CI once read 0 before it)
            page.wait_for_function("() => document.getElementById('left').complete", timeout=10_000)
            assert page.evaluate("() => document.getElementById('left').naturalWidth") == 32
            browser.close()
    finally:
        stop()
    rows = sqlite3.connect(db_path).execute("SELECT reader, pair, choice FROM answers").fetchall()
    assert sorted(rows) == sorted(("dr-a", p, c) for p, c in chosen)
    tp = sum(real_side[p] == c for p, c in chosen)
    report = study_report(db_path)
    total = next(r for r in report if r["reader"] == "all" and r["level"] == "all")
    assert (total["TP"], total["FP"]) == (tp, 5 - tp)
    assert total["p"] == pytest.approx((5 - tp) / 5)
    assert total["abs_p_minus_half"] == pytest.approx(abs((5 - tp) / 5 - 0.5))
    per_level = [r for r in report if r["reader"] == "dr-a"]
    assert sum(r["TP"] + r["FP"] for r in per_level) == 5
    assert main(["study", "report", str(db_path)]) == 0
    printed = capsys.readouterr().out
    assert "dr-a" in printed and "|p-0.5|" in printed


def test_study_cli_bad_input(tmp_path, capsys):
    assert main(["study", "report", str(tmp_path / "none.sqlite")]) == 2
    assert "no such study database" in capsys.readouterr().err
    assert main(["study", "--model", "random:test"]) == 2
    assert "needs --model and --real" in capsys.readouterr().err
