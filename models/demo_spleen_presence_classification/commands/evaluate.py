#!/usr/bin/env python
"""Evaluate the DEMO spleen-presence classifier on held-out phantoms (stream 1 of ``cases.py``).

Each phantom goes through the server's own pipeline (``load_mmar`` + ``pipeline.run``: the config's
pre-transforms, the TorchScript network, softmax, the Writer) and the answer the server would send
(``classification_result``); it prints accuracy, sensitivity and specificity for "spleen", the ROC AUC of its
probability, and the confusion matrix, as the Markdown the model's docs show.

Example::

    python commands/evaluate.py --num 60 --seed 0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from cases import LABELS, MMAR_DIR, case

from aiaa_server.engines.torchscript import TorchScriptPool
from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.io import Volume
from aiaa_server.inference.classification import classification_result
from aiaa_server.inference.tensors import volume_to_tensor
from aiaa_server.mmar.loader import load_mmar


def roc_auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """The probability that a random positive scores above a random negative (ties count half)."""
    positive, negative = scores[truth == 1], scores[truth == 0]
    wins = (positive[:, None] > negative[None, :]).sum() + 0.5 * (positive[:, None] == negative[None, :]).sum()
    return float(wins / (len(positive) * len(negative)))


def evaluate(mmar: Path, count: int, seed: int) -> dict[str, float]:
    """Run the model on `count` held-out phantoms; print and return the figures."""
    model = load_mmar(mmar, TorchScriptPool())
    scores, truth, predicted = [], [], []
    for index in range(count):
        phantom, label = case(seed, 1, index)
        image = volume_to_tensor(Volume(phantom.image, phantom.affine, ImageFormat.NIFTI_GZ))
        answer = classification_result(model.pipeline.run({"image": image}), model.config.labels, model.name,
                                       model.config.version)
        scores.append(answer.probabilities["spleen"])
        predicted.append(LABELS.index(answer.prediction))
        truth.append(label)
    s, t, p = np.array(scores), np.array(truth), np.array(predicted)
    figures = {
        "cases": count, "accuracy": float((p == t).mean()),
        "sensitivity (spleen)": float((p[t == 1] == 1).mean()), "specificity (no spleen)": float((p[t == 0] == 0).mean()),
        "ROC AUC": roc_auc(s, t),
    }
    print("| figure | value |\n|---|---|")
    for name, value in figures.items():
        print(f"| {name} | {value if isinstance(value, int) else f'{value:.3f}'} |")
    print("\n| truth \\ predicted | no spleen | spleen |\n|---|---|---|")
    for label, name in enumerate(LABELS):
        print(f"| {name} | {int(((t == label) & (p == 0)).sum())} | {int(((t == label) & (p == 1)).sum())} |")
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--mmar", type=Path, default=MMAR_DIR)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    evaluate(args.mmar, args.num, args.seed)


if __name__ == "__main__":
    main()
