"""Data loaders on IDX files the tests write (torchvision's real parsing path), digits, batching."""

import pytest
import torch

from birnn.data.pipeline import IDX_FILES, load_data, load_digits, load_fashion_mnist, load_mnist, shuffled_batches
from birnn.schema.errors import BirnnError
from conftest import make_cfg, tiny_idx_images, write_idx


def test_mnist_from_idx_files(mnist_root):
    splits = load_mnist(str(mnist_root), download=False)
    images, labels = tiny_idx_images(300, 0)
    assert splits.train_x.shape == (300, 28, 28) and splits.test_x.shape == (100, 28, 28)
    assert splits.train_x.dtype == torch.float32 and splits.train_y.dtype == torch.int64
    torch.testing.assert_close(splits.train_x, torch.tensor(images).float() / 255)  # as ToTensor scales
    assert splits.train_y.tolist() == labels.tolist()
    assert splits.classes == [str(i) for i in range(10)]


def test_missing_mnist_names_root_files_and_alternatives(tmp_path):
    with pytest.raises(BirnnError) as info:
        load_mnist(str(tmp_path), download=False)
    message = str(info.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert all(name in message for name in IDX_FILES)
    assert "data=fashion_mnist" in message and "data=digits" in message


def test_fashion_mnist_reads_debian_gz_files_in_place(tmp_path):
    system = tmp_path / "system"
    images, labels = tiny_idx_images(50, 2)
    write_idx(system, images, labels, "train", gz=True)
    write_idx(system, *tiny_idx_images(20, 3), "t10k", gz=True)
    splits = load_fashion_mnist(str(tmp_path / "root"), download=False, system_dir=str(system))
    assert torch.equal(splits.train_x, torch.from_numpy(images).float() / 255)
    assert torch.equal(splits.train_y, torch.from_numpy(labels).long()) and len(splits.test_y) == 20
    assert splits.classes[0] == "T-shirt/top" and splits.num_classes == 10
    assert not (tmp_path / "root").exists()  # nothing copied into the working directory's data root

    unpacked = tmp_path / "root" / "FashionMNIST" / "raw"  # files of your own in data.root come first
    write_idx(unpacked, *tiny_idx_images(30, 4), "train")
    write_idx(unpacked, *tiny_idx_images(10, 5), "t10k")
    assert len(load_fashion_mnist(str(tmp_path / "root"), download=False, system_dir=str(system)).train_y) == 30


def test_digits_split_is_fixed_and_scaled():
    a, b = load_digits(), load_digits()
    assert a.train_x.shape == (1438, 8, 8) and a.test_x.shape == (359, 8, 8)
    assert torch.equal(a.test_y, b.test_y)
    assert 0 <= a.train_x.min() and a.train_x.max() == 1.0


def test_load_data_holds_out_validation(tmp_path):
    cfg = make_cfg("data=digits", "data.val_size=100")
    splits = load_data(cfg.data, torch.device("cpu"))
    assert len(splits.val_y) == 100 and len(splits.train_y) == 1338
    with pytest.raises(BirnnError, match="leaves no training data"):
        load_data(make_cfg("data=digits", "data.val_size=5000").data, torch.device("cpu"))


def test_unknown_loader_is_a_clear_error():
    cfg = make_cfg("data=digits", "data._target_=birnn.data.pipeline.nope")
    with pytest.raises(BirnnError, match="not an importable loader"):
        load_data(cfg.data, torch.device("cpu"))


def test_shuffled_batches_cover_every_sample_once_and_resume_mid_epoch():
    x, y = torch.arange(25.0).view(25, 1, 1), torch.arange(25)
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    batches = list(shuffled_batches(x, y, 10, gen))
    assert [len(b.y) for b in batches] == [10, 10, 5] and [b.size for b in batches] == [10, 10, 5]
    assert sorted(torch.cat([b.y for b in batches]).tolist()) == list(range(25))
    gen.set_state(state)
    rest = list(shuffled_batches(x, y, 10, gen, start=1))
    assert [torch.equal(a.y, b.y) for a, b in zip(batches[1:], rest)] == [True, True]
