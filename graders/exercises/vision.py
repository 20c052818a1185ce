"""Phase 2, lesson 2.1 checks (01_computer_vision)."""

from __future__ import annotations

import functools
import math
import re

import numpy as np
import pyarrow as pa

from graders import data, models
from graders.checks import Tensor, _fail, exercise, expect_count, expect_schema
from graders.exercises._common import (
    _answered,
    _expect_columns,
    _expect_float32,
    _materialized,
)

_CAT_WORDS = ("cat", "Mau", "tabby", "Persian", "Siamese", "lynx")


def _images_fs():
    """(filesystem, folder) of the course images: a local folder or a URI such as s3://..."""
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(data.paths().images)


def _read_image(name: str) -> np.ndarray:
    """One course image by file name, decoded to RGB without Ray."""
    import io

    from PIL import Image

    fs, base = _images_fs()
    with fs.open_input_stream(f"{base}/{name}") as f:
        return np.asarray(Image.open(io.BytesIO(f.read())).convert("RGB"))


@functools.lru_cache(maxsize=2)
def _true_input_means(images_path: str) -> dict[str, float]:
    """File name -> mean of its model input (gr.models.preprocess_image), for every course image."""
    import pyarrow.fs as pafs

    fs, base = _images_fs()
    names = [i.base_name for i in fs.get_file_info(pafs.FileSelector(base))
             if i.is_file and i.base_name.endswith((".jpg", ".png"))]
    return {n: float(models.preprocess_image(_read_image(n)).mean()) for n in names}


@functools.lru_cache(maxsize=1)
def _cpu_vision_model():
    return models.load_vision_model("cpu")


def _reference_features(path: str) -> np.ndarray:
    """EfficientNet-Lite0 features of one image, computed here on the CPU."""
    import torch

    pixels = torch.as_tensor(models.preprocess_image(_read_image(path.rsplit("/", 1)[-1])))[None]
    features, _ = models.vision_forward(_cpu_vision_model(), pixels)
    return features[0].numpy()


# --- 1. preprocessing: a CPU stage -----------------------------------------------------------

@exercise("21.preprocessed")
def _preprocessed(value):
    ds = _materialized(value, "preprocessed",
                       "preprocessed = ray.data.read_images(...).map_batches(preprocess, batch_size=...).")
    _expect_columns(ds, ["path", "pixels", "product_id"], "preprocessed",
                    "return exactly product_id, path and pixels from preprocess: leave out 'image' (raw pixels, "
                    "every size) so only the model input travels to the model stage.")
    _expect_float32(ds, "pixels", "preprocessed")
    expect_schema(ds, {"product_id": pa.string(), "path": pa.string(), "pixels": Tensor((3, 224, 224), "float32")},
                  "preprocessed")
    rows = ds.take_all()
    expect_count(len(rows), data.counts().images, "preprocessed images",
                 "read paths.images with read_images and return one row per image from preprocess.")
    wrong_ids = [r["path"] for r in rows if r["product_id"] != data.product_id_from_path(r["path"])]
    if wrong_ids:
        _fail("product_id", "the id in each file name", f"{len(wrong_ids)} mismatches, e.g. for {wrong_ids[0]}",
              "use gr.data.product_id_from_path on every path in the batch.")
    truth = _true_input_means(data.paths().images)
    worst, where = 0.0, None
    for r in rows:
        want = truth.get(r["path"].rsplit("/", 1)[-1])
        gap = abs(float(np.asarray(r["pixels"]).mean()) - want) if want is not None else math.inf
        if gap > worst:
            worst, where = gap, r["path"]
    if worst > 1e-3:
        _fail("pixels", "gr.models.preprocess_image of each row's own image",
              f"a mean {worst:.3g} away from it for {where}",
              "stack gr.models.preprocess_image(image) for image in batch['image'], in the order of batch['path'].")
    return f"{len(rows)} images as float32 (3, 224, 224) model inputs with product id and path"


# --- 2. the model: a stateful accelerator stage ----------------------------------------------

@exercise("21.predictions")
def _predictions(value):
    from ray.data.dataset import MaterializedDataset

    from graders.grading import _has_actor_stage

    hint = ("predictions = preprocessed.map_batches(VisionModel, compute=ray.data.ActorPoolStrategy(size=res.model_actors), "
            "num_cpus=res.cpus_per_actor, num_gpus=res.gpus_per_actor, batch_size=res.batch_size).")
    _answered(value, "predictions", "a Ray Dataset", hint)
    lazy = hasattr(value, "materialize") and not isinstance(value, MaterializedDataset)
    if lazy and _has_actor_stage(value) is False:  # a materialized Dataset no longer shows its plan
        _fail("model stage", "a callable class on an actor pool", "no stage with an ActorPoolStrategy",
              "map the class VisionModel (not a function) with compute=ray.data.ActorPoolStrategy(size=res.model_actors).")
    ds = _materialized(value, "predictions", hint)
    _expect_float32(ds, "features", "predictions")
    expect_schema(ds, {"product_id": pa.string(), "path": pa.string(), "label": pa.string(),
                       "features": Tensor((models.VISION_FEATURES,), "float32")}, "predictions")
    rows = ds.take_all()
    expect_count(len(rows), data.counts().images, "predictions",
                 "map VisionModel over preprocessed: one output row per image.")
    features = np.stack([r["features"] for r in rows]).astype(np.float64)
    if not np.isfinite(features).all() or features.std(axis=0).mean() < 1e-4:
        _fail("features", "a different vector for different images", "(nearly) the same vector for every image",
              "return the features of gr.models.vision_forward(self.model, pixels) for this batch's pixels.")
    cats = [r for r in rows if data.image_source_from_path(r["path"]) == "chelsea"]
    if cats and not any(any(w in r["label"] for w in _CAT_WORDS) for r in cats):
        _fail("labels of the cat photos", "a cat label", [r["label"] for r in cats][:3],
              "name the argmax of the logits: gr.models.imagenet_label(i) for i in logits.argmax(dim=1).tolist().")
    probes = cats[:1] + [r for r in rows if data.image_source_from_path(r["path"]).startswith("digit")][:1]
    for r in probes:
        want = _reference_features(r["path"])
        got = np.asarray(r["features"], dtype=np.float64)
        cos = float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want) + 1e-12))
        if cos < 0.99:
            _fail(f"features of {r['path'].rsplit('/', 1)[-1]}", "the model's 1280 features of this image",
                  f"a vector that points elsewhere (cosine similarity {cos:.2f})",
                  "keep each row's features next to its own path and product_id, and pass batch['pixels'] "
                  "as a tensor: torch.as_tensor(batch['pixels'], device=self.device).")
    label = f"; a cat photo says '{cats[0]['label']}'" if cats else ""
    return f"{len(rows)} images with a label and {models.VISION_FEATURES} features each{label}"


# --- 3. batch size, measured -----------------------------------------------------------------

@exercise("21.fastest_batch_size")
def _fastest_batch_size(value):
    hint = "build rates = {batch_size: images_per_s, ...} from your runs, then fastest_batch_size = max(rates, key=rates.get)."
    _answered(value, "(rates, fastest_batch_size)", "your measured rates and your choice", hint)
    if not isinstance(value, tuple) or len(value) != 2:
        _fail("the value to check", "a pair (rates, fastest_batch_size)", type(value).__name__,
              "check (rates, fastest_batch_size), as the cell does.")
    rates, choice = value
    _answered(rates, "rates", "a dict {batch_size: images per second}", hint)
    if not isinstance(rates, dict):
        _fail("rates", "a dict {batch_size: images per second}", type(rates).__name__, hint)
    if len(rates) < 2:
        _fail("rates", "a rate for at least two batch sizes", f"{len(rates)}", "measure every batch size in runs.")
    for bs, rate in rates.items():
        if isinstance(bs, bool) or not isinstance(bs, (int, np.integer)) or bs < 1:
            _fail("rates keys", "batch sizes (positive ints)", repr(bs), "use the batch sizes as the keys: rates[batch_size] = ...")
        if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)) or not math.isfinite(rate) or rate <= 0:
            _fail(f"rates[{bs}]", "images per second (a positive number)", repr(rate),
                  "divide the number of images by the seconds the model stage took: len(rows) / seconds.")
    _answered(choice, "fastest_batch_size", "one of the batch sizes you measured", hint)
    best = max(rates, key=rates.get)
    if choice not in rates:
        _fail("fastest_batch_size", f"one of the batch sizes you measured, {sorted(rates)}", repr(choice), hint)
    if rates[choice] < rates[best]:
        slowest = min(rates, key=rates.get)
        more = (" You picked the slowest one: do your rates hold seconds instead of images per second?"
                if choice == slowest else "")
        _fail("fastest_batch_size", f"{best} ({rates[best]:.1f} images/s in your measurements)",
              f"{choice} ({rates[choice]:.1f} images/s)", "pick the key with the largest rate: max(rates, key=rates.get)." + more)
    others = ", ".join(f"{bs}: {r:.1f}" for bs, r in sorted(rates.items()) if bs != choice)
    return f"batch size {choice} is the fastest you measured: {rates[choice]:.1f} images/s (others {others})"


# --- 4. reading Dataset.stats() --------------------------------------------------------------

_OPERATOR = re.compile(r"^\s*(?:Sub)?[Oo]perator \d+ (.+?): ")
_WALL = re.compile(r"\* Remote wall time: .*?([\d.]+)(us|ms|s) total")
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def operator_wall_times(stats_text: str) -> dict[str, float]:
    """Operator name -> total remote wall time in seconds, parsed from `Dataset.stats()`."""
    walls: dict[str, float] = {}
    name = None
    for line in stats_text.splitlines():
        m = _OPERATOR.match(line)
        if m:
            name = m.group(1).strip()
            continue
        m = _WALL.search(line)
        if m and name is not None:
            walls[name] = max(walls.get(name, 0.0), float(m.group(1)) * _UNITS[m.group(2)])
            name = None
    return walls


@exercise("21.slowest_operator")
def _slowest_operator(value):
    hint = ("check (stats_text, slowest): stats_text = pipeline.stats(), and slowest is the name of the operator "
            "whose '* Remote wall time' line has the largest total.")
    _answered(value, "(stats_text, slowest)", "the stats and the operator you name", hint)
    if not isinstance(value, tuple) or len(value) != 2:
        _fail("the value to check", "a pair (stats_text, slowest)", type(value).__name__, hint)
    stats_text, answer = value
    _answered(stats_text, "stats_text", "the text of pipeline.stats()", hint)
    if callable(stats_text):
        _fail("stats_text", "the text of pipeline.stats()", "the method itself", "call it: pipeline.stats().")
    if not isinstance(stats_text, str):
        _fail("stats_text", "the text of pipeline.stats() (a str)", type(stats_text).__name__,
              "stats_text = pipeline.stats(), after the pipeline ran.")
    walls = operator_wall_times(stats_text)
    if not walls:
        _fail("stats_text", "operators with a '* Remote wall time' line", "none",
              "run the pipeline first (materialize), then take pipeline.stats().")
    _answered(answer, "slowest", "an operator name from the stats", hint)
    if not isinstance(answer, str):
        _fail("slowest", "an operator name (a str)", type(answer).__name__, hint)
    ranked = sorted(walls.items(), key=lambda kv: -kv[1])
    name, seconds = ranked[0]
    table = ", ".join(f"'{n}' {s:.2f} s" for n, s in ranked)
    given = answer.strip()
    if given.lower() == name.lower():
        runner_up = f"; next, '{ranked[1][0]}' at {ranked[1][1]:.2f} s" if len(ranked) > 1 else ""
        return f"'{name}' is the slowest operator: {seconds:.2f} s of remote wall time in total{runner_up}"
    if given and given.lower() in name.lower():
        why = ("Ray fused several steps into that one operator (the '->' joins them): its wall time is theirs "
               "together, so name the operator as the stats print it." if "->" in name
               else "name the operator exactly as the stats print it.")
        _fail("slowest", f"the whole operator name '{name}'", repr(given), why)
    if given in walls:
        _fail("slowest", f"'{name}' ({seconds:.2f} s in total)", f"'{given}' ({walls[given]:.2f} s)",
              f"compare the totals at the end of each '* Remote wall time' line: {table}.")
    _fail("slowest", f"one of the operator names in the stats: {sorted(walls)}", repr(given),
          "copy the name between 'Operator N ' and ':' on the operator's line.")
