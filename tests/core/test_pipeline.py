"""A pipeline (real pretrained backbone + head) saves to one safetensors file and loads back identical;
an edited or damaged file is a PipelineFileError, found before anything is built: checksums of the
header and of every tensor catch damage, and the header's fields are checked against the tensors."""
from __future__ import annotations

import json
import struct
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from sklearn.datasets import load_digits

from vfe import pipeline as pipeline_module
from vfe.api import predict_files
from vfe.backbones import create_backbone
from vfe.cli import main
from vfe.errors import PipelineFileError, VfeError
from vfe.heads import feature_heads, head_class_of, make_head
from vfe.heads.priors import PriorCorrected
from vfe.io import save_tensors
from vfe.pipeline import CHECKSUMS, Pipeline, read_metadata, sealed_metadata


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


@pytest.mark.slow
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
    plain = tmp_path / "plain.safetensors"
    save_tensors(plain, {"w": torch.zeros(2)})
    with pytest.raises(PipelineFileError, match="not a vfe pipeline"):
        Pipeline.load(plain)
    for junk, content in (("junk.safetensors", b"not a safetensors file at all"),
                          ("photo.png", b"\x89PNG\r\n\x1a\n" + bytes(64)), ("empty.safetensors", b"")):
        (tmp_path / junk).write_bytes(content)
        with pytest.raises(PipelineFileError, match=f"{junk}: not a safetensors file"):
            Pipeline.load(tmp_path / junk)
    with pytest.raises(FileNotFoundError, match="does not exist") as err:
        Pipeline.load(tmp_path / "missing.safetensors")
    assert isinstance(err.value, PipelineFileError)


def test_predict_files_reads_files_and_folders(fitted, digit_images, tmp_path):
    images, labels = digit_images
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(300, 310):
        Image.fromarray(images[i]).resize((32, 32)).save(folder / f"{i}.png")  # grayscale PNGs
    Image.fromarray(np.stack([images[310]] * 3, -1)).convert("P").save(tmp_path / "palette.gif")
    results = list(predict_files(fitted, [folder, tmp_path / "palette.gif"], top=3))
    assert len(results) == 11 and all(len(ranked) == 3 for _, ranked in results)
    assert all(name.startswith("digit ") and 0 <= p <= 1 for _, ranked in results for name, p in ranked)
    hits = sum(ranked[0][0] == f"digit {labels[int(path.rsplit('/', 1)[1].split('.')[0])]}"
               for path, ranked in results[:10])
    assert hits >= 5
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match="bad.png"):
        list(predict_files(fitted, [tmp_path / "bad.png"]))
    skipped = list(predict_files(fitted, [tmp_path / "bad.png", tmp_path / "palette.gif"], skip_bad=True))
    assert skipped[0][0].endswith("bad.png") and isinstance(skipped[0][1], str) and len(skipped[1][1]) == 1


# -- edited and damaged files ------------------------------------------------------------------------
# A tiny randomly initialised timm network (test_resnet, 96 features) keeps these fast: what is checked
# is the file, not the features.

@pytest.fixture(scope="module")
def tiny(digit_images):
    """(pipeline, its saved file, 20 test images) with a linear head on test_resnet at 32 x 32."""
    images, labels = digit_images
    backbone = create_backbone("test_resnet", weights="none", image_size=32, device="cpu")
    head = make_head("linear", epochs=5, random_state=0).fit(backbone.extract(images[:80]), labels[:80])
    pipe = Pipeline(backbone, head, [f"digit {i}" for i in range(10)])
    return pipe, images[380:]


@pytest.fixture
def saved(tiny, tmp_path):
    return tiny[0].save(tmp_path / "tiny.safetensors")


def edited(path, meta_edit=None, tensor_edit=None, raw=None, seal=True):
    """The pipeline at `path` rewritten with its JSON header and/or tensors changed, as a user could: with
    checksums made anew (`seal`: what a deliberate edit does), or keeping the saved ones (damage)."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    meta = json.loads(metadata["vfe"])
    tensors = load_file(str(path))
    if meta_edit:
        meta_edit(meta)
    if tensor_edit:
        tensor_edit(tensors)
    document = raw if raw is not None else json.dumps(meta)
    out = path.with_name("edited.safetensors")
    save_tensors(out, tensors, metadata=sealed_metadata(document, tensors) if seal else
                 {**metadata, "vfe": document})
    return out


def head_weight(tensors) -> str:
    return next(k for k, v in tensors.items() if k.startswith("head.") and v.ndim == 2)


def _set(path: str, value):
    def edit(meta):
        *parents, key = path.split(".")
        target = meta
        for p in parents:
            target = target[p]
        target[key] = value
    return edit


EDITS = {  # name: (meta edit, tensor edit, raw JSON, what the error says)
    "more classes": (lambda m: (_set("head.classes", list(range(12)))(m),
                                _set("class_names", [f"c{i}" for i in range(12)])(m)), None, None,
                     r"head does not fit .* size mismatch for \S+weight: .*\[10, 96\]\) .*\[12, 96\]"),
    "transposed weight": (None, lambda t: t.update({head_weight(t): t[head_weight(t)].T.contiguous()}), None,
                          r"head does not fit .* size mismatch for \S+weight: .*\[96, 10\]\) from"),
    "weight as float64": (None, lambda t: t.update({head_weight(t): t[head_weight(t)].double()}), None,
                          r"weight is F64 \[10, 96\], .* needs F32 \[10, 96\]"),
    "unknown arch": (_set("backbone.arch", "resnet_from_the_future"), None, None,
                     "backbone.arch 'resnet_from_the_future' is not a timm model"),
    "another arch": (_set("backbone.arch", "test_vit"), None, None,
                     r"the file (lacks|holds) \d+ tensor\(s\) the backbone"),
    "no backbone": (lambda m: m.pop("backbone"), None, None, "the header has no 'backbone' object"),
    "class names short": (lambda m: m["class_names"].pop(), None, None,
                          "class_names lists 9 names but the head has 10 classes"),
    "huge input": (_set("backbone.data_config.input_size", [3, 100000, 100000]), None, None,
                   r"input_size \[3, 100000, 100000\] is outside 8..1024 pixels a side"),
    "huge head input": (_set("head.n_features_in", 10**9), None, None,
                        "the head takes 1000000000 features, but the backbone test_resnet gives 96"),
    "unknown head parameter": (_set("head.params.colour", "blue"), None, None,
                               r"the head does not fit its saved tensors or parameters \(TypeError"),
    "unknown head class": (_set("head.head", "MysteryHead"), None, None, "unknown head class 'MysteryHead'"),
    "interpolation": (_set("backbone.data_config.interpolation", "lanczos9"), None, None,
                      "interpolation 'lanczos9' is not one of"),
    "not JSON": (None, None, '{"format": "vfe-pipeline", ', "the pipeline header is not valid JSON"),
    "version as text": (_set("version", "1"), None, None, "pipeline format vfe-pipeline v1 is not readable"),
    "a list": (None, None, "[1, 2]", "the pipeline header is a JSON list"),
}


@pytest.mark.parametrize("name", list(EDITS))
def test_an_edited_header_is_refused_before_any_tensor_is_read(name, saved, monkeypatch):
    meta_edit, tensor_edit, raw, message = EDITS[name]
    path = edited(saved, meta_edit, tensor_edit, raw)

    def no_tensors(*args, **kwargs):
        raise AssertionError("tensors were read before the header was checked")

    monkeypatch.setattr(pipeline_module, "load_tensors", no_tensors)
    with pytest.raises(PipelineFileError, match=message) as err:
        Pipeline.load(path, device="cpu")
    assert str(err.value).startswith(f"{path}: ")
    with pytest.raises(PipelineFileError, match=message):
        read_metadata(path)


@pytest.fixture(scope="module")
def feature_matrix(tiny, digit_images):
    images, labels = digit_images
    return tiny[0].backbone.extract(images[:80]), labels[:80]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted({n for n in feature_heads() if n == min(
    (m for m in feature_heads() if head_class_of(m) is head_class_of(n)), key=len)}))
def test_every_head_class_passes_the_check_and_round_trips(name, tiny, feature_matrix, tmp_path):
    """The header check rebuilds each head on the meta device: it must accept every real file."""
    X, y = feature_matrix
    head = make_head(name, random_state=0).fit(X, y)
    for model in (head, PriorCorrected(head, new_priors=np.full(10, 0.1), prefit=True).fit(None, y)):
        pipe = Pipeline(tiny[0].backbone, model, tiny[0].class_names)
        path = pipe.save(tmp_path / "p.safetensors", overwrite=True)
        loaded = Pipeline.load(path, device="cpu")
        np.testing.assert_allclose(loaded.predict_proba(tiny[1]), pipe.predict_proba(tiny[1]), atol=1e-6)


def test_a_head_fitted_on_some_classes_keeps_the_data_sets_names(tiny, feature_matrix, tmp_path):
    """class_names may list more names than the head has classes when the labels index them."""
    X, y = feature_matrix
    keep = y != 4
    head = make_head("linear", epochs=2, random_state=0).fit(X[keep], y[keep])
    path = Pipeline(tiny[0].backbone, head, tiny[0].class_names).save(tmp_path / "p.safetensors")
    loaded = Pipeline.load(path, device="cpu")
    assert loaded.class_name(5) == "digit 5" and len(loaded.head.classes_) == 9


# -- property: truncation and byte flips ------------------------------------------------------------

PROPERTY = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def layout_of(data: bytes) -> tuple[range, range, range]:
    """(the JSON header, the 'vfe' metadata string inside it, the tensor data) as byte ranges of a file."""
    n = struct.unpack("<Q", data[:8])[0]
    header = data[8:8 + n]
    vfe = json.dumps(json.loads(header)["__metadata__"]["vfe"]).encode()
    start = 8 + header.index(vfe)
    return range(8, 8 + n), range(start, start + len(vfe)), range(8 + n, len(data))


def load_or_none(path):
    try:
        return Pipeline.load(path, device="cpu")
    except VfeError:
        return None


def state_of(pipe: Pipeline) -> dict[str, torch.Tensor]:
    return {**{f"backbone.{k}": v for k, v in pipe.backbone.model.state_dict().items()},
            **{f"head.{k}": v for k, v in pipe.head.export_state()[0].items()}}


@pytest.mark.slow
def test_a_pipeline_truncated_anywhere_in_its_header_is_an_error(saved, tmp_path):
    """Every offset in the length prefix and the first 64 header bytes, then every 37th through the header
    and one per 4 KiB of tensor data: a cut inside the header is one case for the parser (fewer bytes than
    the prefix announces), a cut in the data another (less data than the offsets say)."""
    data = saved.read_bytes()
    header, _, tensors = layout_of(data)
    cut_file = tmp_path / "cut.safetensors"
    cuts = [*range(72), *range(72, header.stop, 37), header.stop - 1, *range(tensors.start, len(data), 4096)]
    for cut in cuts:
        cut_file.write_bytes(data[:cut])
        with pytest.raises(PipelineFileError):
            read_metadata(cut_file)
    cut_file.write_bytes(data[:-1])
    assert load_or_none(cut_file) is None


@pytest.mark.slow
@PROPERTY
@given(data=st.data())
def test_a_flipped_byte_anywhere_is_an_error_or_changes_nothing(saved, tiny, tmp_path, data):
    """safetensors has no checksum of its own; vfe's (every tensor, and the JSON document with the table of
    tensor checksums) catch a flip in the tensor data or inside the 'vfe' JSON text, which used to load as a
    silently different model or header. A flip anywhere else (the length prefix, tensor names, dtypes,
    shapes, offsets, JSON syntax) is an error too, or changes nothing (e.g. padding to other whitespace)."""
    raw = saved.read_bytes()
    _, vfe, tensors = layout_of(raw)
    offset = data.draw(st.one_of(st.integers(0, tensors.start - 1), st.integers(tensors.start, len(raw) - 1),
                                 st.integers(vfe.start, vfe.stop - 1)))
    xor = data.draw(st.integers(1, 255))
    path = tmp_path / "flipped.safetensors"
    path.write_bytes(raw[:offset] + bytes([raw[offset] ^ xor]) + raw[offset + 1:])
    got = load_or_none(path)
    if got is None:
        return
    before, after = state_of(tiny[0]), state_of(got)
    assert before.keys() == after.keys()
    assert [k for k in before if not torch.equal(before[k], after[k])] == []
    assert read_metadata(path) == read_metadata(saved)


# -- checksums -----------------------------------------------------------------------------------------

def tensor_bytes(path, name: str) -> range:
    """Where tensor `name`'s data lies in the file at `path`."""
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    start, stop = json.loads(data[8:8 + n])[name]["data_offsets"]
    return range(8 + n + start, 8 + n + stop)


def test_a_flipped_bit_in_the_head_bias_stops_predict_with_one_line(saved, tiny, tmp_path, capsys):
    """It used to predict every image as one class with probability 1.0 and exit 0."""
    image = tmp_path / "digit.png"
    Image.fromarray(tiny[1][0]).save(image)
    data = bytearray(saved.read_bytes())
    data[tensor_bytes(saved, "head.1.bias")[3]] ^= 0x40  # the top exponent bit of the first bias: ~1e36
    saved.write_bytes(bytes(data))
    assert main(["predict", str(saved), str(image)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == (f"vfe predict: error: {saved}: checksum mismatch in tensor 'head.1.bias' (the file "
                                 "is damaged); save the pipeline again (vfe fit), or restore the file\n")


@pytest.fixture
def two_class(tiny, feature_matrix, tmp_path):
    """A pipeline whose head knows 2 classes, named 'zero' and 'one', saved."""
    X, y = feature_matrix
    keep = y < 2
    head = make_head("linear", epochs=2, random_state=0).fit(X[keep], y[keep])
    return Pipeline(tiny[0].backbone, head, ["zero", "one"]).save(tmp_path / "two.safetensors")


UNSEALED = {  # name: (meta edit, tensor edit, metadata edit, what the error says)
    "5 class names for a 2-class head": (_set("class_names", list("abcde")), None, None,
                                         "checksum mismatch in the header"),
    "a class name": (_set("class_names", ["zero", "eins"]), None, None, "checksum mismatch in the header"),
    "a head weight": (None, lambda t: t["head.1.weight"].mul_(-1), None,
                      "checksum mismatch in tensor 'head.1.weight'"),
    "the checksum table": (None, None, lambda m: m.update({CHECKSUMS: m[CHECKSUMS].replace("sha256", "md5")}),
                           "checksum mismatch in the header"),
    "no checksum table": (None, None, lambda m: m.pop(CHECKSUMS),
                          "a format v2 pipeline without its checksums"),
}


@pytest.mark.parametrize("name", list(UNSEALED))
def test_a_header_or_tensor_changed_without_new_checksums_is_refused(name, two_class):
    meta_edit, tensor_edit, metadata_edit, message = UNSEALED[name]
    path = edited(two_class, meta_edit, tensor_edit, seal=False)
    if metadata_edit:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata()
        metadata_edit(metadata)
        save_tensors(path, load_file(str(path)), metadata=metadata)
    with pytest.raises(PipelineFileError, match=rf"^{path}: {message}.*; save the pipeline again") as err:
        Pipeline.load(path, device="cpu")
    assert "\n" not in str(err.value)


def test_a_pipeline_saved_before_checksums_loads_with_a_warning(two_class, tiny):
    """Format v1 (no checksum table) still loads: the warning says damage cannot be found, and to fit again."""
    with safe_open(str(two_class), framework="pt") as f:
        meta = json.loads(f.metadata()["vfe"])
    path = two_class.with_name("v1.safetensors")
    save_tensors(path, load_file(str(two_class)), metadata={"vfe": json.dumps({**meta, "version": 1})})
    with pytest.warns(UserWarning, match=rf"{path}: .*format v1, without checksums.*fit it again"):
        old = Pipeline.load(path, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = Pipeline.load(two_class, device="cpu")
    np.testing.assert_array_equal(old.predict_proba(tiny[1]), new.predict_proba(tiny[1]))
