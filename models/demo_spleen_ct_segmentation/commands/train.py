#!/usr/bin/env python
"""Train the DEMO spleen CT segmentation model on synthetic abdominal phantoms.

The phantoms come from ``aiaa_server.phantoms.make_abdomen_phantom``; they are
generated in memory (no files), preprocessed *exactly* like the MMAR's
``config/config_aiaa.json`` pre-transforms (EnsureChannelFirst, Orientation
RAS, Spacing, ScaleIntensityRange, numbers read from the config) and a small 3D
UNet is trained on random ROI-sized patches (half centred on spleen voxels).
The result is exported with ``torch.jit.trace`` to ``models/model.ts``.

Training phantom ``i`` uses ``np.random.default_rng((seed, 0, i))``; the
held-out phantoms of ``evaluate.py`` use ``(seed, 1, i)`` streams, so the two
sets never coincide.

Example::

    commands/train.sh --steps 2000 --stop-after 1200 --num-train 60 --seed 0
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

MMAR_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = MMAR_DIR.parents[1]
CONFIG = MMAR_DIR / "config" / "config_aiaa.json"


# --------------------------------------------------------------------------- #
# helpers shared with evaluate.py
# --------------------------------------------------------------------------- #


def load_phantoms() -> ModuleType:
    """Import ``aiaa_server.phantoms`` (falls back to loading the file directly)."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    try:
        from aiaa_server import phantoms  # type: ignore

        return phantoms
    except Exception:  # pragma: no cover - package __init__ unavailable
        path = REPO_ROOT / "aiaa_server" / "phantoms.py"
        spec = importlib.util.spec_from_file_location("aiaa_phantoms", path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules["aiaa_phantoms"] = mod
        spec.loader.exec_module(mod)
        return mod


def config_params(config: Path = CONFIG) -> dict[str, Any]:
    """The preprocessing / inference numbers of the MMAR config."""
    cfg = json.loads(Path(config).read_text())
    out: dict[str, Any] = {"axcodes": "RAS"}
    for t in cfg["pre_transforms"]:
        a = t.get("args", {})
        if t["name"] == "Orientationd":
            out["axcodes"] = a.get("axcodes", "RAS")
        elif t["name"] == "Spacingd":
            out["pixdim"] = [float(v) for v in a["pixdim"]]
            out["mode"] = a.get("mode", "bilinear")
        elif t["name"] == "ScaleIntensityRanged":
            out["window"] = {k: a[k] for k in ("a_min", "a_max", "b_min", "b_max")}
            out["window"]["clip"] = bool(a.get("clip", False))
    inf = cfg["inference"]["AIAA"]["args"]
    out["roi"] = [int(v) for v in inf["roi"]]
    out["overlap"] = float(inf.get("overlap", 0.25))
    out["sw_batch_size"] = int(inf.get("sw_batch_size", 4))
    return out


def preprocess_transform(params: dict[str, Any], with_label: bool):
    """The config's pre-transforms (minus LoadImaged) as a MONAI Compose."""
    from monai.transforms import Compose, EnsureChannelFirstd, Orientationd, ScaleIntensityRanged, Spacingd

    keys = ["image", "label"] if with_label else ["image"]
    modes = [params["mode"], "nearest"] if with_label else [params["mode"]]
    return Compose(
        [
            EnsureChannelFirstd(keys=keys, channel_dim="no_channel"),
            Orientationd(keys=keys, axcodes=params["axcodes"]),
            Spacingd(keys=keys, pixdim=params["pixdim"], mode=modes),
            ScaleIntensityRanged(keys="image", **params["window"]),
        ]
    )


def phantom_to_dict(phantom: Any, with_label: bool) -> dict[str, Any]:
    """Phantom -> {"image": MetaTensor (no channel), "label": ...} with its affine."""
    from monai.data import MetaTensor

    aff = torch.as_tensor(np.asarray(phantom.affine, dtype=np.float64))
    d = {"image": MetaTensor(torch.from_numpy(np.ascontiguousarray(phantom.image, dtype=np.float32)), affine=aff.clone())}
    if with_label:
        lbl = (np.asarray(phantom.labels) == 1).astype(np.float32)
        d["label"] = MetaTensor(torch.from_numpy(lbl), affine=aff.clone())
    return d


def build_net() -> torch.nn.Module:
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=2,
        channels=(16, 32, 64, 128),
        strides=(2, 2, 2),
        num_res_units=2,
    )


# --------------------------------------------------------------------------- #
# training
# --------------------------------------------------------------------------- #


class PatchPool:
    """Preprocessed phantoms in memory + pos/neg ROI patch sampler."""

    def __init__(self, params: dict[str, Any], seed: int, rng: np.random.Generator) -> None:
        from monai.transforms import SpatialPad

        self.params = params
        self.seed = seed
        self.rng = rng
        self.roi = params["roi"]
        self.pre = preprocess_transform(params, with_label=True)
        self.pad = SpatialPad(spatial_size=self.roi)  # constant 0, like sliding-window padding
        self.phantoms_mod = load_phantoms()
        self.items: list[tuple[torch.Tensor, torch.Tensor, np.ndarray]] = []
        self.next_index = 0

    def make(self) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        i = self.next_index
        self.next_index += 1
        ph = self.phantoms_mod.make_abdomen_phantom(np.random.default_rng((self.seed, 0, i)))
        d = self.pre(phantom_to_dict(ph, with_label=True))
        img = self.pad(d["image"].as_tensor()).float().contiguous()
        lbl = self.pad(d["label"].as_tensor()).round().to(torch.uint8).contiguous()
        fg = torch.nonzero(lbl[0]).numpy()
        return img, lbl, fg

    def fill(self, n: int) -> None:
        for _ in range(n):
            self.items.append(self.make())

    def refresh_one(self) -> None:
        self.items[int(self.rng.integers(len(self.items)))] = self.make()

    def sample(self, batch: int, pos_frac: float) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        r = np.array(self.roi)
        for _ in range(batch):
            img, lbl, fg = self.items[int(self.rng.integers(len(self.items)))]
            shape = np.array(img.shape[1:])
            if len(fg) and self.rng.random() < pos_frac:
                c = fg[int(self.rng.integers(len(fg)))]
            else:
                c = np.array([self.rng.integers(s) for s in shape])
            start = np.clip(c - r // 2, 0, shape - r)
            sl = tuple(slice(int(s), int(s + k)) for s, k in zip(start, r))
            xs.append(img[(slice(None),) + sl])
            ys.append(lbl[(slice(None),) + sl])
        return torch.stack(xs), torch.stack(ys)


def export(net: torch.nn.Module, out: Path, roi: list[int]) -> None:
    """Trace to TorchScript, save, reload and check it on other shapes."""
    net.eval()
    example = torch.zeros(1, 1, *roi)
    with torch.no_grad():
        traced = torch.jit.trace(net, example)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    torch.jit.save(traced, str(tmp))
    tmp.replace(out)
    loaded = torch.jit.load(str(out), map_location="cpu")
    x = torch.randn(2, 1, 96, 64, 80)
    with torch.no_grad():
        y = loaded(x)
        ref = net(x)
    assert tuple(y.shape) == (2, 2, 96, 64, 80), y.shape
    err = float((y - ref).abs().max())
    assert err < 1e-3, f"traced model differs from eager model ({err})"
    print(f"exported {out} ({out.stat().st_size / 1e6:.2f} MB); shape check {tuple(y.shape)} ok, max|diff|={err:.2e}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=MMAR_DIR / "models" / "model.ts", help="TorchScript output path")
    ap.add_argument("--steps", "--epochs", dest="steps", type=int, default=2400, help="optimisation steps (batches)")
    ap.add_argument("--stop-after", type=int, default=None,
                    help="stop after this many steps (LR schedule still follows --steps); the shipped model used 1200")
    ap.add_argument("--export-only", type=Path, default=None, help="export a saved state_dict checkpoint and exit")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-train", type=int, default=60, help="phantoms kept in memory")
    ap.add_argument("--refresh-every", type=int, default=40, help="replace one phantom by a new one every N steps (0: never)")
    ap.add_argument("--pos-frac", type=float, default=0.5, help="fraction of patches centred on spleen voxels")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ckpt", type=Path, default=None, help="optional state_dict checkpoint path (saved periodically)")
    ap.add_argument("--config", type=Path, default=CONFIG)
    args = ap.parse_args(argv)

    from monai.losses import DiceCELoss
    from monai.utils import set_determinism

    torch.set_num_threads(args.threads)
    set_determinism(seed=args.seed)
    torch.manual_seed(args.seed)
    params = config_params(args.config)
    print(f"config: {params}", flush=True)
    if args.export_only is not None:
        net = build_net()
        net.load_state_dict(torch.load(args.export_only, map_location="cpu"))
        export(net, args.out, params["roi"])
        return 0

    t0 = time.time()
    rng = np.random.default_rng((args.seed, 2))
    pool = PatchPool(params, args.seed, rng)
    pool.fill(args.num_train)
    print(f"generated+preprocessed {args.num_train} phantoms in {time.time() - t0:.1f}s", flush=True)

    net = build_net()
    n_params = sum(p.numel() for p in net.parameters())
    print(f"UNet parameters: {n_params}", flush=True)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr, weight_decay=1e-5)
    warm = min(50, args.steps // 10 + 1)

    def lr_at(step: int) -> float:
        if step < warm:
            return args.lr * (step + 1) / warm
        p = (step - warm) / max(1, args.steps - warm)
        return args.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * p)))

    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    net.train()
    t_train = time.time()
    running = []
    n_steps = args.steps if args.stop_after is None else min(args.steps, args.stop_after)
    for step in range(n_steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        x, y = pool.sample(args.batch, args.pos_frac)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        running.append(loss.item())
        if args.refresh_every and (step + 1) % args.refresh_every == 0:
            pool.refresh_one()
        if (step + 1) % 50 == 0 or step == 0:
            el = time.time() - t_train
            print(f"step {step + 1}/{args.steps} loss {np.mean(running[-50:]):.4f} lr {lr_at(step):.2e} "
                  f"elapsed {el:.0f}s eta {el / (step + 1) * (args.steps - step - 1):.0f}s", flush=True)
        if args.ckpt is not None and (step + 1) % 200 == 0:
            args.ckpt.parent.mkdir(parents=True, exist_ok=True)
            torch.save(net.state_dict(), args.ckpt)
    print(f"training: {n_steps} steps in {time.time() - t_train:.0f}s; phantoms used {pool.next_index}; "
          f"total wall time {time.time() - t0:.0f}s", flush=True)
    if args.ckpt is not None:
        torch.save(net.state_dict(), args.ckpt)
    export(net, args.out, params["roi"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
