from __future__ import annotations

from pathlib import Path

import pytest
import torch

from aiaa_server.errors import BadRequest, InvalidModel
from aiaa_server.learning.data import PreparedItem
from aiaa_server.learning.trainer import PatchSampler, Trainer, TrainerOptions, dice_per_class, load_network
from aiaa_server.mmar.config import InferenceArgs
from tests.learning.conftest import TinySegNet, weakened_net
from tests.support.programs import add_program


def _item(shape: tuple[int, int, int] = (20, 18, 12)) -> PreparedItem:
    image = torch.zeros((1, *shape))
    label = torch.zeros((1, *shape), dtype=torch.uint8)
    image[:, 4:10, 4:10, 3:7] = 1.0
    label[:, 4:10, 4:10, 3:7] = 1
    return PreparedItem("item", image, label)


def _options(classes: int = 2, **inference: object) -> TrainerOptions:
    return TrainerOptions(classes=classes, inference=InferenceArgs.model_validate(inference), spatial_dims=3,
                          patch=[8, 8, 8], samples_per_item=2, learning_rate=0.01, seed=0,
                          device=torch.device("cpu"))


def test_dice_per_class_scores_each_foreground_class() -> None:
    truth = torch.tensor([0, 1, 1, 2, 2, 0])
    assert dice_per_class(truth, truth, 3) == [1.0, 1.0]
    assert dice_per_class(torch.tensor([0, 1, 0, 0, 0, 0]), truth, 3) == [2 / 3, 0.0]
    assert dice_per_class(torch.zeros(6, dtype=torch.long), torch.zeros(6, dtype=torch.long), 2) == [1.0]
    assert dice_per_class(torch.ones(6, dtype=torch.long), torch.zeros(6, dtype=torch.long), 2) == [0.0]


def test_sampler_crops_patches_mostly_on_the_foreground() -> None:
    sampler = PatchSampler([8, 8, 8], samples=2, spatial_dims=3, seed=0)
    batches = [sampler.batch(_item()) for _ in range(20)]
    images, labels = batches[0]
    assert images.shape == (2, 1, 8, 8, 8) and images.dtype == torch.float32
    assert labels.shape == (2, 1, 8, 8, 8) and labels.dtype == torch.int64
    with_foreground = sum(int(label.amax() > 0) for _, batch_labels in batches for label in batch_labels)
    assert with_foreground > 20  # of 40 crops; the foreground box is 4% of the volume
    for batch_images, batch_labels in batches:
        assert torch.equal(batch_images > 0.5, batch_labels > 0)  # flips and crops move both alike


def test_sampler_pads_a_volume_smaller_than_the_patch_and_takes_whole_volumes_without_one() -> None:
    images, labels = PatchSampler([32, 32, 32], 1, 3, seed=0).batch(_item())
    assert images.shape == (1, 1, 32, 32, 32) and int(labels.sum()) == 6 * 6 * 4
    images, _ = PatchSampler(None, 4, 3, seed=0).batch(_item())
    assert images.shape == (1, 1, 20, 18, 12)


def test_sampler_refuses_a_patch_of_other_dimensions() -> None:
    with pytest.raises(BadRequest, match="2 axes"):
        PatchSampler([8, 8], 1, 3, seed=0)


def test_a_few_epochs_raise_the_validation_dice_of_a_weakened_network() -> None:
    trainer = Trainer(torch.jit.script(weakened_net()), _options(scanning_window=True, roi=[8, 8, 8]))
    items = [_item()]
    before = trainer.validation_dice(items)
    for _ in range(30):
        trainer.train_epoch(items)
    assert before == 0.0
    assert trainer.validation_dice(items) > 0.5


def test_best_weights_are_the_ones_kept_not_the_last() -> None:
    trainer = Trainer(torch.jit.script(weakened_net()), _options())
    trainer.keep_best()
    kept = {k: v.clone() for k, v in trainer.network.state_dict().items()}
    trainer.train_epoch([_item()])
    best = trainer.best_network()
    assert all(torch.equal(best.state_dict()[k], v) for k, v in kept.items())


def test_a_network_with_the_wrong_number_of_channels_is_refused() -> None:
    trainer = Trainer(torch.jit.script(TinySegNet()), _options(classes=3))
    with pytest.raises(BadRequest, match=r"\(B, 3, \*spatial\)"):
        trainer.validation_dice([_item()])


def test_only_torchscript_networks_with_parameters_load(tmp_path: Path) -> None:
    add_program(tmp_path, TinySegNet())
    with pytest.raises(BadRequest, match="only a TorchScript network"):
        load_network(tmp_path, torch.device("cpu"))
    torch.jit.save(torch.jit.freeze(torch.jit.script(TinySegNet().eval())), str(tmp_path / "models" / "model.ts"))
    with pytest.raises(BadRequest, match="no parameters"):
        load_network(tmp_path, torch.device("cpu"))
    (tmp_path / "models" / "model.ts").write_bytes(b"not a torchscript archive")
    with pytest.raises(InvalidModel, match="cannot load"):
        load_network(tmp_path, torch.device("cpu"))
