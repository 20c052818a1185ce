"""The offline models load without downloads or stderr, and give real answers on real photos."""

import numpy as np
import pytest
import skimage.data

from graders import models

CATS = range(281, 286)  # ImageNet-1k's domestic cats: tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def vision():
    return models.load_vision_model("cpu")


def _classify(model, images):
    import torch

    pixels = torch.from_numpy(np.stack([models.preprocess_image(img) for img in images]))
    return models.vision_forward(model, pixels)


def test_the_cat_photo_is_a_cat(vision):
    features, logits = _classify(vision, [skimage.data.chelsea(), skimage.data.coffee()])
    assert features.shape == (2, models.VISION_FEATURES) and logits.shape == (2, 1000)
    top = logits.argmax(1).tolist()
    assert top[0] in CATS, f"chelsea classified as {models.imagenet_label(top[0])}"
    assert models.imagenet_label(top[1]) in {"espresso", "cup", "coffee mug", "tea cup"}


def test_preprocess_handles_grey_and_any_size():
    x = models.preprocess_image(skimage.data.camera())  # 512x512 greyscale
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    assert -3 < x.min() < x.max() < 3, "normalized with ImageNet mean/std"


def test_text_embeddings_are_unit_length_and_meaningful(capfd):
    tokenizer, model = models.load_text_model("cpu")
    emb = models.embed_texts(tokenizer, model, [
        "My order arrived broken and I want a refund.",
        "The package was damaged when it was delivered.",
        "What a lovely sunny day at the beach.",
    ])
    assert emb.shape == (3, models.TEXT_EMBEDDING_SIZE) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2, "similar complaints should be closer than unrelated text"
    assert capfd.readouterr().err == "", "loading the model must not write to stderr (nbgrader scores that 0)"


def test_padding_no_text_reaches_is_skipped_without_changing_the_embeddings():
    import torch

    _, model = models.load_text_model("cpu")
    texts = ["Fast delivery.", "The screen cracked after two days and support never answered my emails."]
    tokens = models.tokenize(texts)
    longest = int(tokens["attention_mask"].sum(1).max())
    assert longest < models.TEXT_MAX_TOKENS  # there is padding to skip
    mask = torch.as_tensor(tokens["attention_mask"])
    with torch.inference_mode():  # the whole padded batch, as computed before the padding was cut
        hidden = model(input_ids=torch.as_tensor(tokens["input_ids"]), attention_mask=mask).last_hidden_state
        full = torch.nn.functional.normalize((hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True), dim=1)
    assert np.allclose(models.embed_tokens(model, tokens["input_ids"], tokens["attention_mask"]), full.numpy(), atol=1e-5)
