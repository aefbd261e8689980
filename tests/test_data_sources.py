"""vae.data.load_dataset: every source, the kinds, the held-out split, the memory check, and each bad input
refused in one line naming the file. Each test makes its own small fixture in ``tmp_path``."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torchvision.io import encode_jpeg, write_png

import vae.data.cifar
import vae.data.images
import vae.data.memory
import vae.data.split
from vae.data import DATA_KINDS, SPLIT_SEED, DataError, Dataset, held_out, load_dataset, load_split
from vae.errors import ArgumentError, UsageError

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")  # torchvision 0.29


def refused(call, *needles: str, error=DataError) -> str:
    """Run ``call``; it must raise ``error`` (a UsageError) in one line holding every needle."""
    with pytest.raises(error) as caught:
        call()
    text = str(caught.value)
    assert isinstance(caught.value, UsageError) and "\n" not in text, text
    for needle in needles:
        assert needle in text, (needle, text)
    return text


class Hostile:
    """Pickles as a call of ``os.system``: every reader must refuse it unread."""

    def __reduce__(self):
        return os.system, ("touch pwned",)


def tree(root: Path) -> list:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


def png(path: Path, image: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(image, str(path))


def image_folder(root: Path, layout: dict, shape=(3, 6, 5), seed: int = 0) -> dict:
    """PNGs under ``root``: ``layout`` maps a relative folder to its image count; returns path -> pixels."""
    g = torch.Generator().manual_seed(seed)
    written = {}
    for folder, count in layout.items():
        for i in range(count):
            written[root / folder / f"img{i:02d}.png"] = image = torch.randint(0, 256, shape, generator=g,
                                                                              dtype=torch.uint8)
            png(root / folder / f"img{i:02d}.png", image)
    return written


def write_cifar(root: Path, per_batch: int = 4, n_test: int = 6, protocol: int = pickle.DEFAULT_PROTOCOL) -> dict:
    """A tiny CIFAR-10 in torchvision's layout; returns the arrays written."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", n_test)]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, n).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        written[name] = batch
    names = {b"label_names": [f"class{i}".encode() for i in range(10)], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(names, protocol=protocol))
    return written


# ---------------------------------------------------------------- each source


def test_npz_with_labels_keeps_its_split_and_labels(tmp_path):
    rng = np.random.default_rng(1)
    train, test = rng.normal(size=(20, 4)), rng.normal(size=(7, 4))
    np.savez(tmp_path / "d.npz", train=train, test=test, train_labels=np.arange(20) % 3, test_labels=np.ones(7, int))
    data = load_dataset(str(tmp_path / "d.npz"))
    assert (data.name, data.kind, data.shape, data.classes, data.split) == (
        str(tmp_path / "d.npz"), "continuous", (4,), 3, {"how": "given"})
    assert data.train.data.dtype == torch.float32 and torch.equal(data.train.data, torch.from_numpy(train).float())
    assert torch.equal(data.test.data, torch.from_numpy(test).float())
    assert data.train.labels.dtype == torch.int64 and data.train.labels.tolist() == (np.arange(20) % 3).tolist()
    assert len(data.train) == 20 and len(data.test) == 7 and not data.is_image


def test_npz_without_labels(tmp_path):
    np.savez_compressed(tmp_path / "d.npz", train=np.zeros((5, 2, 3, 3), np.uint8) + 7,
                        test=np.ones((2, 2, 3, 3), np.uint8))
    data = load_dataset(tmp_path / "d.npz")
    assert data.train.labels is None and data.test.labels is None and data.classes is None
    assert data.shape == (2, 3, 3) and data.is_image and data.kind == "8bit" and data.train.data.dtype == torch.uint8


def test_npy_is_split_by_held_out_and_keeps_every_row(tmp_path):
    array = np.arange(60, dtype=np.float32).reshape(30, 2) / 100
    np.save(tmp_path / "d.npy", array)
    data = load_dataset(str(tmp_path / "d.npy"), test_fraction=0.2)
    train_idx, test_idx = held_out(30, 0.2)
    assert torch.equal(data.train.data, torch.from_numpy(array[train_idx.numpy()]))
    assert torch.equal(data.test.data, torch.from_numpy(array[test_idx.numpy()]))
    assert data.split == {"how": "held-out", "test_fraction": 0.2, "seed": SPLIT_SEED, "rows": 30}
    assert data.kind == "binary" and data.train.labels is None


def test_pt_holding_one_tensor(tmp_path):
    tensor = torch.rand(12, 3, dtype=torch.float64) * 10
    torch.save(tensor, tmp_path / "d.pt")
    data = load_dataset(str(tmp_path / "d.pt"), test_fraction=0.25)
    assert data.kind == "continuous" and data.shape == (3,) and (len(data.train), len(data.test)) == (9, 3)
    assert torch.equal(torch.cat([data.train.data, data.test.data]).sort(0).values,
                       tensor.float().sort(0).values)


@pytest.mark.parametrize("header", ["x,y,z\n", ""])
def test_csv_with_and_without_header(tmp_path, header):
    rows = np.arange(30, dtype=np.float64).reshape(10, 3) * 1.5
    (tmp_path / "t.csv").write_text(header + "\n".join(",".join(map(str, row)) for row in rows) + "\n\n")
    data = load_dataset(str(tmp_path / "t.csv"), test_fraction=0.3)
    train_idx, test_idx = held_out(10, 0.3)
    assert data.shape == (3,) and data.kind == "continuous" and (len(data.train), len(data.test)) == (7, 3)
    assert torch.equal(data.train.data, torch.from_numpy(rows[train_idx.numpy()]).float())
    assert torch.equal(data.test.data, torch.from_numpy(rows[test_idx.numpy()]).float())


def test_image_folder_with_train_test_and_classes(tmp_path):
    written = image_folder(tmp_path / "imgs", {"train/cat": 3, "train/dog": 2, "train/eel": 1, "test/dog": 2})
    (tmp_path / "imgs" / "train" / "notes.txt").write_text("not an image")
    (tmp_path / "imgs" / "train" / ".hidden").mkdir()
    hidden = tmp_path / "imgs" / "train" / "cat" / ".ipynb_checkpoints" / "img00.png"
    png(hidden, torch.zeros(1, 2, 2, dtype=torch.uint8))  # another size: it would be refused if read
    data = load_dataset(str(tmp_path / "imgs"))
    assert (data.shape, data.kind, data.classes, data.split) == ((3, 6, 5), "8bit", 3, {"how": "given"})
    assert data.train.labels.tolist() == [0, 0, 0, 1, 1, 2] and data.test.labels.tolist() == [1, 1]
    files = sorted(written)
    assert torch.equal(data.train.data, torch.stack([written[f] for f in files if "train" in f.parts]))
    assert torch.equal(data.test.data, torch.stack([written[f] for f in files if "test" in f.parts]))


def test_image_folder_without_split_is_held_out_with_and_without_classes(tmp_path):
    written = image_folder(tmp_path / "flat", {".": 10}, shape=(1, 4, 4))
    data = load_dataset(str(tmp_path / "flat"), test_fraction=0.3)
    train_idx, test_idx = held_out(10, 0.3)
    files = sorted(written)
    assert data.train.labels is None and data.classes is None and data.shape == (1, 4, 4)
    assert torch.equal(data.test.data, torch.stack([written[files[i]] for i in test_idx]))
    assert data.split == {"how": "held-out", "test_fraction": 0.3, "seed": SPLIT_SEED, "rows": 10}
    image_folder(tmp_path / "classes", {"a": 4, "b": 4})
    data = load_dataset(str(tmp_path / "classes"), test_fraction=0.25, limit=3)
    labels = torch.tensor([0] * 4 + [1] * 4)
    train_idx, test_idx = held_out(8, 0.25)
    assert data.classes == 2 and torch.equal(data.test.labels, labels[test_idx])
    assert torch.equal(data.train.labels, labels[train_idx][:3]) and len(data.train) == 3


def test_a_jpeg_folder_is_read_by_torchvision(tmp_path):
    for i in range(3):
        (tmp_path / "j" / f"{i}.JPG").parent.mkdir(exist_ok=True)
        (tmp_path / "j" / f"{i}.JPG").write_bytes(encode_jpeg(torch.full((3, 8, 8), 40 * i, dtype=torch.uint8))
                                                  .numpy().tobytes())
    data = load_dataset(str(tmp_path / "j"), test_fraction=0.34)
    assert data.shape == (3, 8, 8) and (len(data.train), len(data.test)) == (2, 1)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_offline_fixture(tmp_path, monkeypatch, protocol):
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", None)  # no download: the fixture is complete
    written = write_cifar(tmp_path, protocol=protocol)
    data = load_dataset("cifar10", str(tmp_path), limit=18)
    train = np.concatenate([written[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    assert (data.name, data.kind, data.shape, data.classes, data.split) == (
        "cifar10", "8bit", (3, 32, 32), 10, {"how": "given"})
    assert torch.equal(data.train.data, torch.from_numpy(train[:18]).reshape(-1, 3, 32, 32))
    assert torch.equal(data.test.data.reshape(6, -1), torch.from_numpy(written["test_batch"][b"data"]))
    assert data.test.labels.tolist() == written["test_batch"][b"labels"]
    assert data.describe("logistic") == ("data: images 3×32×32, 8-bit, 18 train / 6 test, 10 classes; "
                                         "likelihood logistic")


def test_cifar10_batches_pickled_by_python_2_as_the_real_ones(tmp_path):
    """The real batches are Python 2 pickles: text keys, numpy.core's name, the pixels as a latin-1 string."""
    written = write_cifar(tmp_path, protocol=2)
    pixels = written["test_batch"][b"data"]
    reconstruct, args, state = pixels.__reduce__()

    class Python2Array:
        def __reduce__(self):
            return reconstruct, args, (*state[:4], state[4].decode("latin1"))

    blob = pickle.dumps({"data": Python2Array(), "labels": written["test_batch"][b"labels"]}, protocol=2)
    blob = blob.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert b"cnumpy.core.multiarray\n_reconstruct" in blob
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(blob)
    data = load_dataset("cifar10", str(tmp_path))
    assert torch.equal(data.test.data.reshape(6, -1), torch.from_numpy(pixels))


def test_mnist_through_load_dataset_is_bit_identical_to_load_split(fake_mnist):
    data = load_dataset("mnist", str(fake_mnist), limit=50)
    assert (data.shape, data.kind, data.classes, data.split) == ((1, 28, 28), "binary", 10, {"how": "given"})
    old = load_split("mnist", str(fake_mnist), train=True, limit=50)
    assert torch.equal(data.train.data.reshape(-1, 784), old.images) and torch.equal(data.train.labels, old.labels)
    assert torch.equal(data.test.data.reshape(-1, 784), load_split("mnist", str(fake_mnist), train=False).images)
    raw = load_dataset("mnist", str(fake_mnist), kind="8bit")
    assert raw.train.data.dtype == torch.uint8 and torch.equal(raw.train.data.float().div(255)[:50], data.train.data)


# ---------------------------------------------------------------- kinds


@pytest.mark.parametrize("array, kind", [
    (np.array([[0, 255], [3, 4]], np.uint8), "8bit"),
    (np.array([[0, 1], [1, 1]], np.uint8), "binary"),
    (np.array([[True, False], [True, True]]), "binary"),
    (np.array([[0.0, 0.5], [1.0, 0.25]]), "binary"),
    (np.array([[0, 200], [17, 255]], np.int64), "8bit"),
    (np.array([[0, 256], [1, 2]], np.int64), "continuous"),
    (np.array([[-1, 2], [3, 4]], np.int16), "continuous"),
    (np.array([[0.0, 2.0], [3.0, 255.0]]), "continuous"),
    (np.array([[-0.5, 0.5], [1.5, 2.0]], np.float32), "continuous"),
])
def test_kind_inference_from_the_values(tmp_path, array, kind):
    np.save(tmp_path / "k.npy", np.repeat(array, 5, axis=0))
    data = load_dataset(str(tmp_path / "k.npy"))
    assert data.kind == kind
    assert data.train.data.dtype == (torch.uint8 if kind == "8bit" else torch.float32)


def test_kind_overrides_and_their_refusals(tmp_path):
    np.save(tmp_path / "u8.npy", np.arange(40, dtype=np.uint8).reshape(10, 4) * 6)
    np.save(tmp_path / "frac.npy", np.linspace(0, 1, 40).reshape(10, 4))
    np.save(tmp_path / "whole.npy", np.arange(40, dtype=np.float64).reshape(10, 4))
    assert load_dataset(str(tmp_path / "u8.npy"), kind="continuous").train.data.dtype == torch.float32
    whole = load_dataset(str(tmp_path / "whole.npy"), kind="8bit")
    assert whole.kind == "8bit" and whole.train.data.dtype == torch.uint8
    assert load_dataset(str(tmp_path / "frac.npy"), kind="continuous").kind == "continuous"
    refused(lambda: load_dataset(str(tmp_path / "u8.npy"), kind="binary"), "u8.npy", "binary", "[0, 1]", "234")
    refused(lambda: load_dataset(str(tmp_path / "frac.npy"), kind="8bit"), "frac.npy", "8bit", "fractions")
    refused(lambda: load_dataset(str(tmp_path / "u8.npy"), kind="8-bit"), "kind", error=ArgumentError)
    assert DATA_KINDS == ("auto", "binary", "8bit", "continuous")


def test_image_sources_are_8bit_and_a_float_kind_divides_by_255(tmp_path, fake_mnist):
    written = image_folder(tmp_path / "imgs", {".": 4}, shape=(3, 2, 2))
    assert load_dataset(str(tmp_path / "imgs"), test_fraction=0.25).kind == "8bit"
    scaled = load_dataset(str(tmp_path / "imgs"), kind="binary", test_fraction=0.25)
    every = torch.stack([written[f] for f in sorted(written)]).float().div(255)
    assert scaled.kind == "binary" and torch.equal(scaled.train.data, every[held_out(4, 0.25)[0]])
    write_cifar(tmp_path / "c")
    assert load_dataset("cifar10", str(tmp_path / "c"), kind="continuous").train.data.max() <= 1
    assert load_dataset("mnist", str(fake_mnist), kind="continuous").kind == "continuous"


# ---------------------------------------------------------------- the held-out split


def test_held_out_is_one_fixed_partition(monkeypatch):
    torch.manual_seed(1)
    first = held_out(101, 0.2)
    torch.manual_seed(2)
    np.random.seed(3)
    second = held_out(101, 0.2)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    train_idx, test_idx = first
    assert len(test_idx) == 20 and sorted(torch.cat(first).tolist()) == list(range(101))
    assert torch.equal(train_idx, train_idx.sort().values) and torch.equal(test_idx, test_idx.sort().values)
    assert test_idx.tolist() != list(range(81, 101))  # shuffled, not the last rows
    assert not torch.equal(held_out(101, 0.3)[1][:20], test_idx)
    assert len(held_out(3, 0.01)[1]) == 1  # at least one test row
    monkeypatch.setattr(vae.data.split, "SPLIT_SEED", SPLIT_SEED + 1)
    assert not torch.equal(held_out(101, 0.2)[1], test_idx)  # the seed is what picks them


def test_a_second_load_rebuilds_the_same_split_and_another_fraction_another(tmp_path):
    np.save(tmp_path / "d.npy", np.random.default_rng(0).normal(size=(50, 3)))
    one, two = (load_dataset(str(tmp_path / "d.npy"), test_fraction=0.2) for _ in range(2))
    assert torch.equal(one.test.data, two.test.data) and torch.equal(one.train.data, two.train.data)
    other = load_dataset(str(tmp_path / "d.npy"), test_fraction=0.3)
    assert len(other.test) == 15 and other.split["test_fraction"] == 0.3
    assert not torch.equal(other.train.data[:40], one.train.data[:40])


def test_limit_keeps_the_first_training_rows_after_the_split(tmp_path):
    np.save(tmp_path / "d.npy", np.arange(100, dtype=np.float32).reshape(50, 2))
    full, cut = (load_dataset(str(tmp_path / "d.npy"), limit=limit) for limit in (None, 7))
    assert torch.equal(cut.train.data, full.train.data[:7]) and torch.equal(cut.test.data, full.test.data)
    refused(lambda: load_dataset(str(tmp_path / "d.npy"), limit=0), "limit", error=ArgumentError)


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, float("nan"), True, "0.1"])
def test_a_test_fraction_outside_0_1_is_an_argument_error(tmp_path, fraction):
    np.save(tmp_path / "d.npy", np.zeros((10, 2)))
    refused(lambda: load_dataset(str(tmp_path / "d.npy"), test_fraction=fraction), "test_fraction",
            error=ArgumentError)


# ---------------------------------------------------------------- bad input: one line naming the file


def _npz(path: Path, **arrays) -> None:
    np.savez(path, **arrays)


def _odd_size_folder(root: Path) -> None:
    image_folder(root, {".": 2}, shape=(3, 4, 4))
    png(root / "zz_odd.png", torch.zeros(3, 5, 4, dtype=torch.uint8))


def _odd_channels_folder(root: Path) -> None:
    image_folder(root, {"a": 2}, shape=(3, 4, 4))
    png(root / "a" / "zz_grey.png", torch.zeros(1, 4, 4, dtype=torch.uint8))


BAD_INPUTS = {
    # name: (file or folder to pass, how to make it, what the message must say)
    "text in a .npy": ("x.npy", lambda p: p.write_text("hello"), ["not a NumPy array"]),
    "garbage .pt": ("x.pt", lambda p: p.write_bytes(b"\x00garbage"), ["not a file torch.load can read"]),
    "objects in a .pt": ("x.pt", lambda p: torch.save({"a": Hostile()}, p), ["safe load refuses", "GLOBAL"]),
    "a dict in a .pt": ("x.pt", lambda p: torch.save({"a": torch.zeros(3, 2)}, p), ["holds a dict, not one tensor"]),
    "a .npz not a zip": ("x.npz", lambda p: p.write_bytes(b"PK nope"), ["not a .npz archive"]),
    "objects in a .npz": ("x.npz", lambda p: _npz(p, train=np.array([[{}]], object), test=np.zeros((1, 1))),
                          ["Python objects"]),
    "unknown suffix": ("x.txt", lambda p: p.write_text("1,2\n"), ["unknown kind of data", ".txt"]),
    "missing path": ("nowhere.npy", lambda p: None, ["no such file or folder"]),
    "NaN in a .npy": ("x.npy", lambda p: np.save(p, np.array([[0.0, 1], [2, np.nan], [3, 4]])),
                      ["NaN or Inf", "row 1"]),
    "Inf in a .npz test": ("x.npz", lambda p: _npz(p, train=np.zeros((2, 2)), test=np.array([[np.inf, 0]])),
                           ["array 'test'", "NaN or Inf", "row 0"]),
    "Inf in a .csv": ("x.csv", lambda p: p.write_text("a,b\n1,2\n3,inf\n"), ["NaN or Inf", "'b'", "line 3"]),
    "beyond float32": ("x.npy", lambda p: np.save(p, np.full((3, 2), 1e300)), ["float32's range"]),
    "mixed sizes": ("imgs", _odd_size_folder, ["zz_odd.png", "3×5×4", "3×4×4"]),
    "mixed channels": ("imgs", _odd_channels_folder, ["zz_grey.png", "1×4×4", "3×4×4"]),
    "not an image": ("imgs", lambda p: (p.mkdir(), (p / "a.png").write_bytes(b"nope"), (p / "b.png").write_bytes(b"x")),
                     ["a.png", "cannot decode"]),
    "csv column by name": ("x.csv", lambda p: p.write_text("age,name\n3,4\n5,bob\n6,carol\n"),
                           ["column 2 ('name')", "line 3", "'bob'"]),
    "csv column by number": ("x.csv", lambda p: p.write_text("1,2,3\n4,5,6\n7,8,?\n"), ["column 3 is", "line 3"]),
    "csv ragged": ("x.csv", lambda p: p.write_text("1,2\n3,4\n5\n"), ["line 3 has 1 column"]),
    "csv not text": ("x.csv", lambda p: p.write_bytes(b"\xff\xfe\x00\x01" * 5), ["not a text table"]),
    "empty csv": ("x.csv", lambda p: p.write_text(""), ["no rows"]),
    "header only": ("x.csv", lambda p: p.write_text("a,b\n"), ["no rows"]),
    "empty folder": ("imgs", lambda p: p.mkdir(), ["no images", "empty split"]),
    "empty class folder": ("imgs", lambda p: (image_folder(p, {"a": 2}), (p / "b").mkdir()), ["b", "empty class"]),
    "empty test split": ("x.npz", lambda p: _npz(p, train=np.zeros((3, 2)), test=np.zeros((0, 2))),
                         ["array 'test'", "no rows"]),
    "one row to split": ("x.npy", lambda p: np.save(p, np.zeros((1, 3))), ["1 row cannot be split"]),
    "label count": ("x.npz", lambda p: _npz(p, train=np.zeros((4, 2)), test=np.zeros((2, 2)),
                                            train_labels=np.zeros(3, int)), ["3 labels for 4 rows"]),
    "negative label": ("x.npz", lambda p: _npz(p, train=np.zeros((2, 2)), test=np.zeros((2, 2)),
                                               test_labels=np.array([0, -1])), ["negative label"]),
    "npz without train": ("x.npz", lambda p: _npz(p, test=np.zeros((2, 2))), ["no 'train' array"]),
    "npz without test": ("x.npz", lambda p: _npz(p, train=np.zeros((2, 2)), x=np.zeros(1)), ["no 'test' array", "x"]),
    "npz rows differ": ("x.npz", lambda p: _npz(p, train=np.zeros((2, 3)), test=np.zeros((2, 2))), ["shape (2,)"]),
    "1-D array": ("x.npy", lambda p: np.save(p, np.zeros(8)), ["1-D array of 8 values", "reshape(-1, 1)"]),
    "5-D array": ("x.npy", lambda p: np.save(p, np.zeros((2, 1, 1, 1, 1))), ["5-D"]),
    "channels last": ("x.npy", lambda p: np.save(p, np.zeros((4, 8, 8, 3), np.uint8)), ["channels-last"]),
    "strings": ("x.npy", lambda p: np.save(p, np.array([["a", "b"]])), ["not numbers"]),
    "train without test": ("imgs", lambda p: image_folder(p, {"train": 2}), ["has train/ but no test/"]),
    "test class unknown": ("imgs", lambda p: image_folder(p, {"train/a": 2, "test/b": 1}), ["class 'b'"]),
    "loose and classes": ("imgs", lambda p: image_folder(p, {".": 1, "a": 1}), ["both images", "class folders"]),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_each_bad_input_is_one_line_naming_the_file_and_writes_nothing(tmp_path, monkeypatch, case):
    monkeypatch.chdir(tmp_path)  # where a hostile pickle would write, were it run
    name, make, needles = BAD_INPUTS[case]
    make(tmp_path / name)
    before = tree(tmp_path)
    refused(lambda: load_dataset(str(tmp_path / name)), str(tmp_path / name), *needles)
    assert tree(tmp_path) == before


def test_cifar10_bad_batches_and_a_hostile_pickle_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the hostile pickle would write, were it run
    write_cifar(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(pickle.dumps({b"data": Hostile(), b"labels": []}))
    refused(lambda: load_dataset("cifar10", str(tmp_path)), str(batch), "refused", "system")
    assert not (tmp_path / "pwned").exists()
    batch.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    refused(lambda: load_dataset("cifar10", str(tmp_path)), str(batch), "not a CIFAR-10 batch")
    batch.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}))
    refused(lambda: load_dataset("cifar10", str(tmp_path)), str(batch), "1 labels for 2 images")
    batch.write_bytes(b"\x80\x04truncated")
    refused(lambda: load_dataset("cifar10", str(tmp_path)), str(batch), "not a CIFAR-10 batch")
    batch.unlink()
    refused(lambda: load_dataset("cifar10", str(tmp_path)), "missing from", "data_batch_3")


def test_cifar10_offline_and_missing_is_one_line_and_leaves_no_folder(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    root = tmp_path / "absent"
    refused(lambda: load_dataset("cifar10", str(root)), "cifar10 not found", "`data_dir`", "Name or service")
    assert not root.exists()


# ---------------------------------------------------------------- memory


def _must_not_read(*args, **kwargs):
    raise AssertionError("the values were read before the size was checked")


@pytest.mark.parametrize("source", ["npy", "npz", "pt", "csv", "folder", "cifar10"])
def test_too_large_for_the_device_is_refused_before_reading(tmp_path, monkeypatch, source):
    np.save(tmp_path / "d.npy", np.zeros((50, 10)))
    np.savez(tmp_path / "d.npz", train=np.zeros((45, 10)), test=np.zeros((5, 10)))
    torch.save(torch.zeros(50, 10), tmp_path / "d.pt")
    (tmp_path / "d.csv").write_text("\n".join(["1,2,3,4,5,6,7,8,9,10"] * 50))
    image_folder(tmp_path / "folder", {".": 50}, shape=(1, 2, 5))
    write_cifar(tmp_path)
    monkeypatch.setattr(vae.data.memory, "MEMORY_LIMIT", 100)
    for module, reader in ((np, "load"), (torch, "load"), (np, "loadtxt"), (vae.data.images, "_decode_all"),
                           (vae.data.cifar, "_batch")):
        monkeypatch.setattr(module, reader, _must_not_read)
    path = "cifar10" if source == "cifar10" else str(tmp_path / ("folder" if source == "folder" else f"d.{source}"))
    expected = {"npy": "2.0 KiB (1.8 KiB train + 200 bytes test)", "npz": "2.0 KiB (1.8 KiB train + 200 bytes test)",
                "csv": "2.0 KiB (1.8 KiB train + 200 bytes test)", "folder": "500 bytes (450 bytes train + 50 bytes"}
    refused(lambda: load_dataset(path, str(tmp_path)), path, "too large for cpu", "over 100 bytes (the limit)",
            expected.get(source, ""))


def test_the_memory_check_counts_the_kind_and_the_limit(tmp_path, monkeypatch):
    np.save(tmp_path / "d.npy", np.arange(1000).reshape(100, 10).astype(np.uint8))
    monkeypatch.setattr(vae.data.memory, "MEMORY_LIMIT", 1000)
    assert load_dataset(str(tmp_path / "d.npy")).kind == "8bit"  # 1,000 bytes as uint8: fits
    refused(lambda: load_dataset(str(tmp_path / "d.npy"), kind="continuous"), "3.9 KiB", "over 1000 bytes")
    cut = load_dataset(str(tmp_path / "d.npy"), kind="continuous", limit=10)  # 400 + 400 bytes
    assert (len(cut.train), len(cut.test)) == (10, 10)


def test_the_limit_is_half_the_device_memory_unless_set(monkeypatch):
    monkeypatch.setattr(vae.data.memory, "device_memory", lambda device: 8 * 2 ** 30)
    assert vae.data.memory.memory_limit(torch.device("cpu")) == 4 * 2 ** 30
    monkeypatch.setattr(vae.data.memory, "MEMORY_LIMIT", 123)
    assert vae.data.memory.memory_limit(torch.device("cpu")) == 123


# ---------------------------------------------------------------- describe, and the API kept


def test_describe_an_image_set_and_a_table(tmp_path):
    np.save(tmp_path / "table.npy", np.random.default_rng(0).normal(size=(10_000, 12)).astype(np.float32))
    table = load_dataset(str(tmp_path / "table.npy"))
    assert table.describe("gaussian") == ("data: table of 12 columns, continuous, 9,000 train / 1,000 test; "
                                          "likelihood gaussian")
    np.savez(tmp_path / "images.npz", train=np.zeros((1200, 3, 4, 2), np.uint8) + 9,
             test=np.ones((300, 3, 4, 2), np.uint8),
             train_labels=np.arange(1200) % 4, test_labels=np.arange(300) % 4)
    images = load_dataset(str(tmp_path / "images.npz"))
    assert images.describe("logistic") == ("data: images 3×4×2, 8-bit, 1,200 train / 300 test, 4 classes; "
                                           "likelihood logistic")
    np.save(tmp_path / "one.npy", np.zeros((20, 1)))
    assert "table of 1 column, binary, 18 train / 2 test;" in load_dataset(str(tmp_path / "one.npy")).describe("x")


def test_a_3d_array_is_one_channel_images(tmp_path):
    np.save(tmp_path / "d.npy", np.zeros((10, 5, 6), np.uint8))
    data = load_dataset(str(tmp_path / "d.npy"))
    assert data.shape == (1, 5, 6) and data.is_image and data.train.data.shape == (9, 1, 5, 6)


def test_the_old_public_names_are_all_still_there():
    import vae.data

    for name in ("DataError", "ImageSplit", "resolve_data_dir", "load_split", "binarize", "TEST_BINARIZATION_SEED",
                 "binarize_fixed", "evaluation_images", "batch_indices", "IMAGE_PIXELS"):
        assert hasattr(vae.data, name) and name in vae.data.__all__, name
    assert issubclass(vae.data.DataError, UsageError) and vae.data.IMAGE_PIXELS == 784
    assert vae.data.TEST_BINARIZATION_SEED == 20151101 and Dataset.__module__ == "vae.data.dataset"
