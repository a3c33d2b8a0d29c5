"""Nine training runs -> one model folder (EMA weights, checked against one config)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..background import BackgroundRule
from ..conditioning import has_neighbours
from ..errors import LazySlideError, ModelError
from ..model import URCDM, default_config
from ..networks import DEFAULT_ARCHITECTURE
from ..sampler import SamplingConfig
from .trainer import MODEL_KEYS, TrainError, run_summary


def training_data(summaries: Sequence[dict]) -> list[dict]:
    """What the runs learnt from, from their datasets' manifests: packaged sources with their
    region (``realdata``), other slides by file name, and what a fine-tuned run's starting model
    had learnt (its record, kept in the run; for runs from before that, read from the model).
    ``evaluate`` keeps them out of its real references and audits memorisation against them.
    Empty when nothing can be read."""
    from .prepare import DatasetError, load_manifest

    seen: dict[str, dict] = {}
    models: dict[str, list[dict] | None] = {}
    for s in summaries:
        init = s.get("init") or {}
        inherited = init.get("training_data")
        if inherited is None and init.get("model"):
            if init["model"] not in models:
                try:
                    models[init["model"]] = URCDM.from_spec(init["model"]).config.get("training_data")
                except LazySlideError:
                    models[init["model"]] = None
            inherited = models[init["model"]]
        items = list(inherited or ())
        try:
            manifest = load_manifest(s.get("dataset", {}).get("path", ""))
        except (DatasetError, OSError):
            manifest = {"slides": []}
        for slide in manifest["slides"]:
            if slide.get("status") != "ok":
                continue
            real = slide.get("real") or {"file": slide["name"]}
            items.append({"source": real["source"], "region": real["region"]} if "source" in real
                         else {"file": real["file"]})
        for item in items:
            seen[repr(sorted(item.items()))] = dict(item)
    return [seen[k] for k in sorted(seen)]


def assemble(runs: Sequence[str | Path], out: str | Path, *, dtype: str = "float32",
             overwrite: bool = False, sampling: Mapping[str, Any] | None = None,
             background_sat: float | None = None, background_blur: float | None = None,
             architecture: str | None = None, background: Mapping[str, Any] | None = None) -> URCDM:
    """Build a model folder from one run per (level, unet); all must share one model config.

    ``dtype="float16"`` halves the files (the bundled demo model); weights load back into
    float32 unets. ``sampling`` overrides the preset's default sampling: ``SamplingConfig`` fields
    (steps, resample, sampler, ...).
    ``background_sat`` overrides the background rule's saturation threshold: the paper's 0.02
    suits real glass, but a briefly trained model's generated glass can be tinted above it,
    and then no tile is ever skipped as background. ``background_blur`` sets the rule's
    ``fill_blur`` (the parent blurred before it fills a background tile). ``architecture``
    names the ``networks.ARCHITECTURES`` entry the model is built and run with (one with the
    runs' parameters; the default entry is left out of the config, as models before it had it).
    ``background``: ``BackgroundRule`` fields, applied before the two options above.
    """
    out = Path(out)
    if (out / "config.json").exists() and not overwrite:
        raise TrainError(f"{out} already holds a model (use --overwrite to replace it)")
    if dtype not in ("float32", "float16", "bfloat16"):
        raise TrainError(f"--dtype must be float32, float16 or bfloat16, got {dtype}")
    summaries = [(Path(r), run_summary(r)) for r in runs]
    if not summaries:
        raise TrainError("give the training runs to assemble")
    # A run's model config as far as its unet depends on it: the inpainting mode only matters
    # where a level has neighbouring tiles, so one-tile levels' runs fit either mode.
    def relevant(s: dict) -> dict:
        m = dict(s["model"])
        mode = m.pop("inpainting", "repaint")
        if has_neighbours(m, s["level"]):
            m["inpainting"] = mode
        return m

    first_path, first = summaries[0]
    model = relevant(first)
    by_unet: dict[tuple[int, int], tuple[Path, dict]] = {}
    for path, s in summaries:
        mine = relevant(s)
        diff = sorted(k for k in {*mine, *model} if mine.get(k) != model.get(k)
                      and (k != "inpainting" or (k in mine and k in model)))
        if diff:
            raise TrainError(f"{path} and {first_path} disagree on the model config ({', '.join(diff)}): "
                             "a model needs all nine unets trained for one preset and geometry")
        model.update(mine)
        key = (s["level"], s["unet"] - 1)
        if key in by_unet:
            raise TrainError(f"{path} and {by_unet[key][0]} both train level {key[0]} unet {key[1] + 1}")
        by_unet[key] = (path, s)
    if model.get("inpainting") == "repaint":  # the default: left out, as models before it had it
        del model["inpainting"]
    config: dict[str, Any] = default_config(first["preset"])
    for k in MODEL_KEYS:
        if k in model:
            config[k] = model[k]
        else:  # a run from before the preset named it: the paper's choice
            config.pop(k, None)
    want = [(lv, st) for lv in range(len(config["unets"])) for st in range(len(config["unets"][lv]))]
    missing = [f"level {lv} unet {st + 1}" for lv, st in want if (lv, st) not in by_unet]
    if missing:
        raise TrainError(f"missing runs for {', '.join(missing)}")
    state = {}
    for (lv, st), (path, s) in by_unet.items():
        if s["architecture"] != config["unets"][lv][st]:
            raise TrainError(f"{path}: its unet architecture is not the {first['preset']!r} preset's")
        ema = load_file(path / "checkpoint" / "ema.safetensors")
        weights = {k[len("ema_model."):]: v for k, v in ema.items() if k.startswith("ema_model.")}
        state[(lv, st)] = {k: v.to(getattr(torch, dtype)) if v.is_floating_point() else v
                           for k, v in weights.items()}
    config["training"] = {
        f"level{lv}_unet{st + 1}": {"steps": s["step"], "settings": s["settings"], "run": path.name,
                                    **({"init": s["init"]} if "init" in s else {})}
        for (lv, st), (path, s) in sorted(by_unet.items())
    }
    config["dtype"] = dtype
    learnt = training_data([s for _, s in by_unet.values()])
    if learnt:
        config["training_data"] = learnt
    if sampling:
        try:
            config["sampling"] = SamplingConfig.from_dict({**config["sampling"], **sampling}).to_dict()
        except ModelError as e:
            raise TrainError(str(e)) from None
    if background:
        try:
            config["background"] = BackgroundRule.from_dict({**config["background"], **background}).to_dict()
        except LazySlideError as e:
            raise TrainError(f"background rule: {e}") from None
    for option, key, value in (("--background-sat", "sat_min", background_sat),
                               ("--background-blur", "fill_blur", background_blur)):
        if value is None:
            continue
        try:  # the rule checks its own bounds, and leaves fields at their old values out
            rule = BackgroundRule.from_dict({**config["background"], key: float(value)})
        except LazySlideError as e:
            raise TrainError(f"{option}: {e}") from None
        config["background"] = rule.to_dict()
    if architecture is not None:  # an unknown name is refused by the model's own check
        config.pop("architecture", None)
        if architecture != DEFAULT_ARCHITECTURE:
            config["architecture"] = architecture
    model = URCDM(config, state, source=str(out))
    for lv, st in want:
        model.unet(lv, st)  # loads (and checks) every unet against the config
    model.save(out, dtype=getattr(torch, dtype))
    return URCDM.load(out)


def describe(model_dir: str | Path) -> str:
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    steps = ", ".join(f"{k}: {v['steps']}" for k, v in cfg.get("training", {}).items())
    return f"{model_dir}: preset {cfg['preset']}, {cfg.get('dtype', 'float32')}, steps {steps}"
