"""A pipeline (real pretrained backbone + head) saves to one safetensors file and loads back identical."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from vfe.api import predict_files
from vfe.backbones import create_backbone
from vfe.heads import make_head
from vfe.io import save_tensors
from vfe.pipeline import Pipeline, read_metadata


@pytest.fixture(scope="module")
def digit_images():
    digits = load_digits()
    images = (digits.images * (255 / 16)).round().astype(np.uint8)
    return images[:400], digits.target[:400]


@pytest.fixture(scope="module")
def fitted(digit_images):
    images, labels = digit_images
    backbone = create_backbone("efficientnet_lite0", image_size=64)
    X = backbone.extract(images[:300], progress=False)
    head = make_head("linear", epochs=40, lr=3e-3, random_state=0).fit(X, labels[:300])
    return Pipeline(backbone, head, [f"digit {i}" for i in range(10)])


def test_pipeline_learns_and_round_trips(fitted, digit_images, tmp_path):
    images, labels = digit_images
    accuracy = (fitted.predict(images[300:]) == labels[300:]).mean()
    assert accuracy > 0.7  # pretrained ImageNet features of 8x8 digits, 300 labels; chance is 0.1
    path = fitted.save(tmp_path / "digits.safetensors")
    meta = read_metadata(path)
    assert meta["backbone"]["name"] == "efficientnet_lite0" and meta["head"]["head"] == "LinearHead"
    loaded = Pipeline.load(path)
    np.testing.assert_array_equal(loaded.predict_proba(images[300:]), fitted.predict_proba(images[300:]))
    assert loaded.backbone.fingerprint() == fitted.backbone.fingerprint()  # cached features stay valid


def test_save_never_overwrites_unless_asked(fitted, tmp_path):
    path = fitted.save(tmp_path / "p.safetensors")
    with pytest.raises(FileExistsError, match="overwrite"):
        fitted.save(path)
    fitted.save(path, overwrite=True)
    with pytest.raises(ValueError, match=".safetensors"):
        fitted.save(tmp_path / "p.pt")


def test_loading_a_foreign_file_says_what_is_wrong(tmp_path):
    import torch

    plain = tmp_path / "plain.safetensors"
    save_tensors(plain, {"w": torch.zeros(2)})
    with pytest.raises(ValueError, match="not a vfe pipeline"):
        Pipeline.load(plain)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="not a safetensors file"):
        Pipeline.load(junk)
    with pytest.raises(FileNotFoundError):
        Pipeline.load(tmp_path / "missing.safetensors")


def test_predict_files_reads_files_and_folders(fitted, digit_images, tmp_path):
    images, labels = digit_images
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(300, 310):
        Image.fromarray(images[i]).resize((32, 32)).save(folder / f"{i}.png")  # grayscale PNGs
    Image.fromarray(np.stack([images[310]] * 3, -1)).convert("P").save(tmp_path / "palette.gif")
    results = predict_files(fitted, [folder, tmp_path / "palette.gif"], top=3)
    assert len(results) == 11 and all(len(ranked) == 3 for _, ranked in results)
    assert all(name.startswith("digit ") and 0 <= p <= 1 for _, ranked in results for name, p in ranked)
    hits = sum(ranked[0][0] == f"digit {labels[int(path.rsplit('/', 1)[1].split('.')[0])]}"
               for path, ranked in results[:10])
    assert hits >= 5
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match="bad.png"):
        predict_files(fitted, [tmp_path / "bad.png"])
