"""The fine-tuning loop: random foreground-biased crops, Dice + cross-entropy, Adam; and the validation Dice,
measured the way the server runs the network (sliding window with the config's `roi` and `overlap`, or the
whole volume), so the baseline and every epoch are scored on what serving would answer.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.transforms import Compose, RandCropByPosNegLabeld, RandFlipd, SpatialPadd

from aiaa_server.errors import BadRequest, InvalidModel
from aiaa_server.learning.data import LABEL_KEY, PreparedItem
from aiaa_server.mmar.config import InferenceArgs

TORCHSCRIPT_FILES = (Path("models") / "model.ts", Path("models") / "model.pt")
IMAGE_KEY = "image"
FLIP_PROBABILITY = 0.5
POSITIVE_CROPS, NEGATIVE_CROPS = 2, 1  # crops centred on foreground twice as often as on background

Forward = Callable[[torch.Tensor], torch.Tensor]
Predictor = Callable[[torch.Tensor, Forward], torch.Tensor]
"""(1, C, *spatial) batch and the network's checked forward -> (1, classes, *spatial) logits."""


class Sampler(Protocol):
    """Draws one optimiser step's batch from a prepared item."""

    def batch(self, item: PreparedItem) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, C, *spatial) float32 and labels (B, 1, *spatial) int64."""
        ...


def load_network(model_dir: Path, device: torch.device) -> torch.jit.ScriptModule:
    """The MMAR's TorchScript network with every parameter trainable.

    Args:
        model_dir: the MMAR folder; `models/model.ts`, else `models/model.pt`, is loaded (a `torch.export`
            `models/model.pt2` cannot be trained and is ignored).
        device: where its parameters go.

    Raises:
        BadRequest: no TorchScript file, or a network without parameters (e.g. a frozen module).
        InvalidModel: a file torch.jit cannot load.
    """
    path = next((model_dir / name for name in TORCHSCRIPT_FILES if (model_dir / name).is_file()), None)
    if path is None:
        raise BadRequest("no models/model.ts: only a TorchScript network can be fine-tuned "
                         "(a torch.export models/model.pt2 cannot be trained)")
    try:
        network = torch.jit.load(str(path), map_location=device)
    except Exception as exc:
        raise InvalidModel(f"cannot load {path.name} as TorchScript: {exc}") from exc
    parameters = list(network.parameters())
    if not parameters:
        raise BadRequest(f"{path.name} has no parameters to train (a frozen TorchScript module?)")
    for parameter in parameters:
        parameter.requires_grad_(True)
    return network


class PatchSampler:
    """Training batches from one prepared item: random crops of `patch` voxels (volumes smaller than the patch
    padded with 0 first), centred on a foreground voxel twice as often as on background, each flipped at
    random along every spatial axis.

    Args:
        patch: crop size per spatial axis; None: the whole volume, one sample per batch.
        samples: crops per batch.
        spatial_dims: spatial axes of the images (2 or 3).
        seed: seeds the crop and flip draws.

    Raises:
        BadRequest: a patch with another number of axes than the images.
    """

    def __init__(self, patch: Sequence[int] | None, samples: int, spatial_dims: int, seed: int) -> None:
        keys = [IMAGE_KEY, LABEL_KEY]
        steps: list[Any] = []
        if patch is not None:
            if len(patch) != spatial_dims:
                raise BadRequest(f"the training patch {list(patch)} has {len(patch)} axes; the model's images have "
                                 f"{spatial_dims}")
            steps += [SpatialPadd(keys, spatial_size=list(patch)),
                      RandCropByPosNegLabeld(keys, LABEL_KEY, spatial_size=list(patch), pos=POSITIVE_CROPS,
                                             neg=NEGATIVE_CROPS, num_samples=samples)]
        steps += [RandFlipd(keys, prob=FLIP_PROBABILITY, spatial_axis=axis) for axis in range(spatial_dims)]
        self._transforms = Compose(steps)  # flips run on each crop of the list the crop step returns
        self._transforms.set_random_state(seed=seed)

    def batch(self, item: PreparedItem) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of crops of `item`.

        Returns:
            images (B, C, *patch) float32 and labels (B, 1, *patch) int64 class indices (B = `samples`; without
            a patch, the whole volume and B = 1).
        """
        crops = self._transforms({IMAGE_KEY: item.image, LABEL_KEY: item.label})
        crops = crops if isinstance(crops, list) else [crops]
        images = torch.stack([torch.as_tensor(c[IMAGE_KEY]).as_subclass(torch.Tensor) for c in crops])
        labels = torch.stack([torch.as_tensor(c[LABEL_KEY]).as_subclass(torch.Tensor) for c in crops])
        return images.float().contiguous(), labels.long().contiguous()


class TransformSampler:
    """Training batches from a training config's random transforms (`RandCropByPosNegLabeld`, flips, ...) run on
    the cached deterministic part of each item, as MONAI's `CacheDataset` runs them: a transform returning several
    crops gives a batch of them, one returning a dict a batch of one.

    Args:
        transforms: the random tail of the training pre-transforms, on the keys `image` and `label`.
        seed: seeds their random state.
    """

    def __init__(self, transforms: Sequence[Any], seed: int) -> None:
        self._transforms = Compose(list(transforms))
        self._transforms.set_random_state(seed=seed)

    def batch(self, item: PreparedItem) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of the transforms' outputs for `item` (see `Sampler`).

        Raises:
            BadRequest: the transforms lose a key or leave image and label on different grids.
        """
        samples = self._transforms({IMAGE_KEY: item.image.clone(), LABEL_KEY: item.label.clone()})
        samples = samples if isinstance(samples, list) else [samples]
        try:
            images = torch.stack([torch.as_tensor(s[IMAGE_KEY]).as_subclass(torch.Tensor) for s in samples])
            labels = torch.stack([torch.as_tensor(s[LABEL_KEY]).as_subclass(torch.Tensor) for s in samples])
        except (KeyError, RuntimeError) as exc:
            raise BadRequest(f"the training config's random transforms give no stackable image/label pair: {exc}") from exc
        if images.shape[2:] != labels.shape[2:]:
            raise BadRequest(f"the training config's random transforms give image {tuple(images.shape)} and label "
                             f"{tuple(labels.shape)}: not on one grid")
        return images.float().contiguous(), labels.round().long().contiguous()


def window_predictor(args: InferenceArgs) -> Predictor:
    """Logits as the server's MMAR pipeline computes them: sliding window over `args.roi` with `args.overlap` when
    `args.scanning_window`, else one pass over the whole volume."""
    def predict(batch: torch.Tensor, forward: Forward) -> torch.Tensor:
        if not args.scanning_window or args.roi is None:
            return forward(batch)
        return sliding_window_inference(batch, roi_size=list(args.roi)[-(batch.ndim - 2):],
                                        sw_batch_size=args.sw_batch_size, predictor=forward, overlap=args.overlap,
                                        mode=args.mode, device=torch.device("cpu"))

    return predict


def dice_per_class(prediction: torch.Tensor, truth: torch.Tensor, classes: int) -> list[float]:
    """Dice of each foreground class 1..classes-1 between two label maps of the same shape.

    A class absent from both scores 1 (nothing to find, nothing found); absent from one only, 0.

    Args:
        prediction: (*spatial) integer class indices.
        truth: (*spatial) integer class indices.
        classes: number of classes, background included.
    """
    scores = []
    for value in range(1, classes):
        predicted, expected = prediction == value, truth == value
        total = int(predicted.sum()) + int(expected.sum())
        scores.append(1.0 if total == 0 else 2.0 * int((predicted & expected).sum()) / total)
    return scores


@dataclass
class TrainerOptions:
    """How the trainer runs: see `TrainSpec` for the fields it takes from there.

    Attributes:
        classes: network output channels expected: the config's labels plus background.
        inference: the config's `inference.AIAA.args` (sliding window, roi, overlap).
        spatial_dims: spatial axes of the images (the config's `spatial_dims`).
        patch: training crop size; None: whole volumes.
        samples_per_item: crops per optimiser step.
        learning_rate: Adam's learning rate.
        seed: seeds the crops, flips and item order.
        device: where the network runs.
    """

    classes: int
    inference: InferenceArgs
    spatial_dims: int
    patch: list[int] | None
    samples_per_item: int
    learning_rate: float
    seed: int
    device: torch.device


OptimizerFactory = Callable[[list[torch.nn.Parameter], float], torch.optim.Optimizer]


def adam(parameters: list[torch.nn.Parameter], learning_rate: float) -> torch.optim.Optimizer:
    """The default optimiser: Adam at `learning_rate`."""
    return torch.optim.Adam(parameters, lr=learning_rate)


@dataclass
class TrainingParts:
    """What a training config may set instead of the defaults (each None: the default).

    Attributes:
        sampler: draws the batches; default `PatchSampler` over the options' patch.
        loss: takes (logits, labels (B, 1, *spatial) int64); default Dice + cross-entropy on softmax.
        optimizer: builds the optimiser from the parameters and the learning rate; default Adam.
        predictor: the validation forward; default `window_predictor(options.inference)`.
    """

    sampler: Sampler | None = None
    loss: torch.nn.Module | None = None
    optimizer: OptimizerFactory | None = None
    predictor: Predictor | None = None


class Trainer:
    """Fine-tunes a segmentation network on prepared items, keeping the best epoch's weights.

    Args:
        network: the network (TorchScript or a module), in train/eval mode as each step needs; its output is
            (B, classes, *spatial).
        options: see `TrainerOptions`.
        parts: a training config's sampler, loss, optimiser and validation forward (see `TrainingParts`).
    """

    def __init__(self, network: torch.nn.Module, options: TrainerOptions, parts: TrainingParts | None = None) -> None:
        parts = parts or TrainingParts()
        self.network = network
        self.options = options
        self.sampler: Sampler = parts.sampler or PatchSampler(options.patch, options.samples_per_item,
                                                              options.spatial_dims, options.seed)
        self.loss = parts.loss or DiceCELoss(to_onehot_y=True, softmax=True)
        self.optimizer = (parts.optimizer or adam)(list(network.parameters()), options.learning_rate)
        self.predictor = parts.predictor or window_predictor(options.inference)
        self.order = np.random.default_rng(options.seed)
        self.best_state: dict[str, torch.Tensor] | None = None

    def _outputs(self, batch: torch.Tensor) -> torch.Tensor:
        output = self.network(batch)
        if not isinstance(output, torch.Tensor) or output.ndim != batch.ndim or output.shape[1] != self.options.classes:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise BadRequest(f"the network answers {shape} for input {tuple(batch.shape)}; training needs "
                             f"(B, {self.options.classes}, *spatial): one channel per label plus background")
        return output

    def train_epoch(self, items: Sequence[PreparedItem]) -> float:
        """One pass over `items` in a random order, one optimiser step per item.

        Returns:
            The mean training loss.
        """
        self.network.train()
        losses = []
        for index in self.order.permutation(len(items)):
            images, labels = self.sampler.batch(items[int(index)])
            device = self.options.device
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss(self._outputs(images.to(device)), labels.to(device))
            loss.backward()
            self.optimizer.step()
            losses.append(float(loss.detach()))
        return float(np.mean(losses))

    def _predict(self, image: torch.Tensor) -> torch.Tensor:
        """(C, *spatial) image -> (*spatial) int64 class indices, run as the server's pipeline runs it."""
        logits = self.predictor(image[None].to(self.options.device), self._outputs)
        return torch.as_tensor(logits).as_subclass(torch.Tensor)[0].argmax(0).cpu()

    def validation_dice(self, items: Sequence[PreparedItem]) -> float:
        """Mean Dice over `items` and foreground classes of the network's argmax against the labels.

        Returns:
            A Dice in [0, 1] (see `dice_per_class` for absent classes).
        """
        self.network.eval()
        scores: list[float] = []
        with torch.no_grad():
            for item in items:
                scores += dice_per_class(self._predict(item.image), item.label[0].long(), self.options.classes)
        return float(np.mean(scores))

    def keep_best(self) -> None:
        """Remember the network's current weights as the best so far."""
        self.best_state = copy.deepcopy({k: v.detach() for k, v in self.network.state_dict().items()})

    def best_network(self) -> torch.nn.Module:
        """The network with the best weights kept (its current ones when none were), on the CPU, in eval mode."""
        if self.best_state is not None:
            self.network.load_state_dict(self.best_state)
        return self.network.cpu().eval()
