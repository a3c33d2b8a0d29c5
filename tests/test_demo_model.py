"""The bundled demo model (real weights): it loads offline, is small, and makes H&E, not noise."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from lazyslide import URCDM, Slide
from lazyslide.cli.common import default_spec as _default_spec
from lazyslide.model import DEMO_MODEL_DIR
from lazyslide.store import MemoryStore


def _he_stats(image: np.ndarray) -> tuple[float, float]:
    """Share of H&E hues (purple to pink) among stained pixels; horizontal neighbour correlation."""
    hsv = np.asarray(Image.fromarray(image).convert("HSV"), np.float32) / 255
    stained = (hsv[..., 1] > 0.1) & (hsv[..., 2] < 0.9)
    h = hsv[..., 0][stained]
    grey = image.astype(np.float32).mean(-1)
    corr = np.corrcoef(grey[:, :-1].ravel(), grey[:, 1:].ravel())[0, 1]
    return float(((h >= 0.6) | (h <= 0.05)).mean()) if h.size > 50 else 0.0, float(corr)


def test_the_demo_model_is_bundled_small_and_the_default():
    files = list(DEMO_MODEL_DIR.glob("*.safetensors"))
    assert len(files) == 9
    assert sum(f.stat().st_size for f in files) <= 25 * 2**20
    assert (DEMO_MODEL_DIR / "MODEL_CARD.md").is_file()
    config = json.loads((DEMO_MODEL_DIR / "config.json").read_text())
    assert config["preset"] == "demo" and len(config["training"]) == 9
    assert _default_spec() == "demo"


def test_demo_slides_look_like_he_and_untrained_ones_do_not():
    model = URCDM.from_spec("demo")
    untrained = URCDM.random("demo")
    for seed in (0, 1):
        he, corr = _he_stats(Slide(model, seed, MemoryStore()).tile(0, 0, 0))
        assert he > 0.8 and corr > 0.3, (seed, he, corr)
    he, corr = _he_stats(Slide(untrained, 0, MemoryStore()).tile(0, 0, 0))
    assert he < 0.8 or corr < 0.3, (he, corr)


def test_demo_levels_agree_with_the_level_above():
    """Level-1 tiles around seed 0's tissue, downsampled onto the level-0 region they were
    conditioned on: the same tissue (IoU >= 0.8) and little tissue over level-0 glass (<= 10 %).
    The first demo model, conditioned on the window alone, scored 0.55 and 36 % (model card).
    Fewer sampling steps than the model's, to keep the test short: the layout is the point."""
    from lazyslide.evaluation.consistency import generated_consistency

    model = URCDM.from_spec("demo").with_sampling(steps=[16, 8, 8])
    scores = generated_consistency([Slide(model, 0, MemoryStore())], block=2, levels=[1])[1]
    assert scores["pairs"] >= 3
    assert scores["tissue_iou"] >= 0.8 and scores["hallucinated_tissue"] <= 0.1, scores
