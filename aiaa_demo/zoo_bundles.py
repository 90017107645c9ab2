"""MONAI bundles shaped like three of the MONAI model zoo's segmentation bundles, with seeded random weights.

The inference configs follow the published `spleen_ct_segmentation`, `swin_unetr_btcv_segmentation` and
`wholeBody_ct_segmentation` configs of Project-MONAI/model-zoo (same keys, transforms, inferer, postprocessing,
evaluator and checkpoint loader; written here, nothing downloaded). Differences, all for running on MONAI 1.6
on a CPU: SwinUNETR has no `img_size` argument any more; `small=True` shrinks the networks' widths so that a
bundle runs in a test in seconds. The weights are random (seeded): the bundles check the serving path against
MONAI's own bundle run, not anatomy.

`python -m aiaa_demo.zoo_bundles OUT` writes the three full-size bundles under OUT.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

ZOO_BUNDLES = ("spleen_ct_segmentation", "swin_unetr_btcv_segmentation", "wholeBody_ct_segmentation")
INTERACTIVE_BUNDLES = ("spleen_deepedit_annotation",)
BTCV_LABELS = ("spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver", "stomach", "aorta",
               "inferior vena cava", "portal and splenic veins", "pancreas", "right adrenal gland",
               "left adrenal gland")
WHOLEBODY_CLASSES = 105


def _evaluated_parts(preprocessing: list[dict[str, Any]], inferer: dict[str, Any], post: list[dict[str, Any]],
                     output_dir_ref: bool = True) -> dict[str, Any]:
    """The keys every zoo inference config shares: dataset, loader, evaluator wiring."""
    return {
        "preprocessing": {"_target_": "Compose", "transforms": preprocessing},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 4},
        "inferer": inferer,
        "postprocessing": {"_target_": "Compose", "transforms": post},
        "handlers": [{"_target_": "StatsHandler", "iteration_log": False}],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": True},
    }


def _common(dataset_dir: str) -> dict[str, Any]:
    return {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": dataset_dir,
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/imagesTs/*.nii.gz')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network": "$@network_def.to(@device)",
    }


def _ct_preprocessing(a_min: float, a_max: float, reader: str | None = None) -> list[dict[str, Any]]:
    load: dict[str, Any] = {"_target_": "LoadImaged", "keys": "image", **({"reader": reader} if reader else {})}
    return [load, {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear"},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": a_min, "a_max": a_max, "b_min": 0.0,
             "b_max": 1.0, "clip": True},
            {"_target_": "EnsureTyped", "keys": "image"}]


def _softmax_invert_argmax_save(extra_save: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
             "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", **extra_save}]


def spleen_config(small: bool = False) -> dict[str, Any]:
    """`spleen_ct_segmentation`'s inference.json: UNet, 1.5×1.5×2 mm RAS, CT window −57..164, 96³ windows."""
    channels = [4, 8, 16, 32, 64] if small else [16, 32, 64, 128, 256]
    save = {"output_ext": "@output_ext", "output_dtype": "@output_dtype", "output_postfix": "@output_postfix",
            "separate_folder": "@separate_folder"}
    return {
        **_common("/workspace/data/Task09_Spleen"),
        "output_ext": ".nii.gz", "output_dtype": "$numpy.float32", "output_postfix": "trans", "separate_folder": True,
        "network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                        "channels": channels, "strides": [2, 2, 2, 2], "num_res_units": 2, "norm": "batch"},
        **_evaluated_parts(_ct_preprocessing(-57, 164),
                           {"_target_": "SlidingWindowInferer", "roi_size": [96, 96, 96], "sw_batch_size": 4,
                            "overlap": 0.5},
                           _softmax_invert_argmax_save(save)),
        "checkpointloader": {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                             "load_dict": {"model": "@network"}},
        "initialize": ["$monai.utils.set_determinism(seed=123)", "$@checkpointloader(@evaluator)"],
        "run": ["$@evaluator.run()"],
    }


def swin_config(small: bool = False) -> dict[str, Any]:
    """`swin_unetr_btcv_segmentation`'s inference.json: SwinUNETR (14 classes), CT window −175..250, ITKReader,
    the checkpoint loaded by a handler."""
    config = {
        **_common("/workspace/data/RawData/"),
        "network_def": {"_target_": "SwinUNETR", "spatial_dims": 3, "in_channels": 1, "out_channels": 14,
                        "feature_size": 12 if small else 48, "use_checkpoint": False},
        **_evaluated_parts(_ct_preprocessing(-175, 250, reader="ITKReader"),
                           {"_target_": "SlidingWindowInferer", "roi_size": [96, 96, 96], "sw_batch_size": 4,
                            "overlap": 0.5},
                           _softmax_invert_argmax_save({})),
        "initialize": ["$monai.utils.set_determinism(seed=123)"],
        "run": ["$@evaluator.run()"],
    }
    config["handlers"] = [{"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                           "load_dict": {"model": "@network"}}, *config["handlers"]]
    return config


def wholebody_config(small: bool = False) -> dict[str, Any]:
    """`wholeBody_ct_segmentation`'s inference.json, low-resolution setting (3 mm, `model_lowres.pt`): SegResNet
    (105 classes), z-score then [-1, 1] scaling, Gaussian windows, argmax before a nearest-neighbour Invertd."""
    image = "@image_key"
    preprocessing = [{"_target_": "LoadImaged", "keys": image}, {"_target_": "EnsureTyped", "keys": image},
                     {"_target_": "EnsureChannelFirstd", "keys": image},
                     {"_target_": "Orientationd", "keys": image, "axcodes": "RAS"},
                     {"_target_": "Spacingd", "keys": image, "pixdim": "@pixdim", "mode": "bilinear"},
                     {"_target_": "NormalizeIntensityd", "keys": image, "nonzero": True},
                     {"_target_": "ScaleIntensityd", "keys": image, "minv": -1.0, "maxv": 1.0}]
    post = [{"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": image,
             "nearest_interp": True, "to_tensor": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_ext": "@output_ext",
             "output_dtype": "@output_dtype", "output_postfix": "@output_postfix",
             "separate_folder": "@separate_folder"}]
    inferer = {"_target_": "SlidingWindowInferer", "roi_size": [96, 96, 96],
               "sw_batch_size": "@displayable_configs#sw_batch_size", "overlap": "@displayable_configs#sw_overlap",
               "padding_mode": "replicate", "mode": "gaussian",
               "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')"}
    config = {
        "displayable_configs": {"highres": False, "sw_overlap": 0.25, "sw_batch_size": 1},
        **_common("sampledata"),
        "imports": ["$import glob", "$import numpy", "$import os"],
        "image_key": "image",
        "output_ext": ".nii.gz", "output_dtype": "$numpy.float32", "output_postfix": "trans", "separate_folder": True,
        "pixdim": "$[1.5, 1.5, 1.5] if @displayable_configs#highres else [3.0, 3.0, 3.0]",
        "modelname": "$'model.pt' if @displayable_configs#highres else 'model_lowres.pt'",
        "network_def": {"_target_": "SegResNet", "spatial_dims": 3, "in_channels": 1,
                        "out_channels": WHOLEBODY_CLASSES, "init_filters": 8 if small else 32,
                        "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1], "dropout_prob": 0.2},
        **_evaluated_parts(preprocessing, inferer, post),
        "checkpointloader": {"_target_": "CheckpointLoader",
                             "load_path": "$@bundle_root + '/models/' + @modelname", "load_dict": {"model": "@network"}},
        "initialize": ["$setattr(torch.backends.cudnn, 'benchmark', True)", "$@checkpointloader(@evaluator)"],
        "run": ["$@evaluator.run()"],
    }
    config["dataloader"]["num_workers"] = 1
    return config


def deepedit_config(small: bool = False) -> dict[str, Any]:
    """`spleen_deepedit_annotation`'s inference.json: DynUNet on the image plus one guidance channel per label
    (clicks by label name, `background` included), resized to 128³, SimpleInferer, Invertd. Left out: the zoo
    bundle's own `scripts.transforms.OrientationGuidanceMultipleLabelDeepEditd` (custom code in its scripts/
    folder; the images here are already in RAS, where it does nothing) and ITKReader."""
    image = "@image_key"
    spatial = [64, 64, 64] if small else [128, 128, 128]
    preprocessing = [{"_target_": "LoadImaged", "keys": image},
                     {"_target_": "EnsureChannelFirstd", "keys": image},
                     {"_target_": "Orientationd", "keys": image, "axcodes": "RAS"},
                     {"_target_": "ScaleIntensityRanged", "keys": image, "a_min": -175, "a_max": 250,
                      "b_min": 0.0, "b_max": 1.0, "clip": True}]
    deepedit = [{"_target_": "AddGuidanceFromPointsDeepEditd", "ref_image": image, "guidance": "guidance",
                 "label_names": "@label_names"},
                {"_target_": "Resized", "keys": image, "spatial_size": "@spatial_size", "mode": "area"},
                {"_target_": "ResizeGuidanceMultipleLabelDeepEditd", "guidance": "guidance", "ref_image": image},
                {"_target_": "AddGuidanceSignalDeepEditd", "keys": image, "guidance": "guidance",
                 "number_intensity_ch": "@number_intensity_ch"}]
    post = [{"_target_": "EnsureTyped", "keys": "pred"}, {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": image,
             "meta_key_postfix": "meta_dict", "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
             "separate_folder": False}]
    return {
        **_common("/workspace/Datasets/MSD_datasets/Task09_Spleen"),
        "image_key": "image", "label_names": {"spleen": 1, "background": 0}, "spatial_size": spatial,
        "number_intensity_ch": 1,
        "network_def": {"_target_": "DynUNet", "spatial_dims": 3, "in_channels": "$len(@label_names) + @number_intensity_ch",
                        "out_channels": "$len(@label_names)", "kernel_size": [3, 3, 3, 3, 3, 3],
                        "strides": [1, 2, 2, 2, 2, [2, 2, 1]], "upsample_kernel_size": [2, 2, 2, 2, [2, 2, 1]],
                        "norm_name": "instance", "deep_supervision": False, "res_block": True,
                        **({"filters": [8, 16, 32, 64, 64, 64]} if small else {})},
        "preprocessing_transforms": preprocessing, "deepedit_transforms": deepedit,
        "extra_transforms": [{"_target_": "EnsureTyped", "keys": image}],
        **_evaluated_parts([], {"_target_": "SimpleInferer"}, post),
        "preprocessing": {"_target_": "Compose",
                          "transforms": "$@preprocessing_transforms + @deepedit_transforms + @extra_transforms"},
        "initialize": ["$monai.utils.set_determinism(seed=123)"],
        "run": ["$@evaluator.run()"],
    }


def metadata(description: str, labels: list[str], out_channels: int, in_channels: int = 1,
             spatial: tuple[int, ...] = (96, 96, 96)) -> dict[str, Any]:
    """A `configs/metadata.json` in the zoo's shape: version, description, and the network data format whose
    output channel definitions name the labels (channel 0 the background)."""
    channel_def = {"0": "background", **{str(i + 1): name for i, name in enumerate(labels)}}
    channel_def.update({str(i): f"class {i}" for i in range(len(labels) + 1, out_channels)})
    patch = {"spatial_shape": list(spatial), "dtype": "float32", "is_patch_data": True}
    return {
        "version": "0.1.0", "monai_version": "1.6.1", "description": description, "authors": "aiaa-server tests",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": in_channels,
                                 **patch, "channel_def": {"0": "image"}}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": out_channels, **patch,
                                 "channel_def": channel_def}},
        },
    }


def _bundle_parts(name: str, small: bool) -> tuple[dict[str, Any], dict[str, Any], str]:
    if name == "spleen_ct_segmentation":
        return spleen_config(small), metadata("spleen from CT (random weights)", ["spleen"], 2), "model.pt"
    if name == "swin_unetr_btcv_segmentation":
        return swin_config(small), metadata("BTCV abdominal organs (random weights)", list(BTCV_LABELS), 14), \
            "model.pt"
    if name == "wholeBody_ct_segmentation":
        labels = [f"structure {i}" for i in range(1, WHOLEBODY_CLASSES)]
        return wholebody_config(small), metadata("whole body CT (random weights)", labels, WHOLEBODY_CLASSES), \
            "model_lowres.pt"
    if name == "spleen_deepedit_annotation":
        spatial = tuple(deepedit_config(small)["spatial_size"])
        return deepedit_config(small), metadata("spleen DeepEdit (random weights)", ["spleen"], 2, in_channels=3,
                                                spatial=spatial), "model.pt"
    raise ValueError(f"unknown bundle {name!r}: one of {', '.join(ZOO_BUNDLES + INTERACTIVE_BUNDLES)}")


def write_bundle(folder: Path, name: str, small: bool = False, seed: int = 0) -> Path:
    """Write bundle `name` (one of ZOO_BUNDLES) into `folder` with seeded random weights of its network.

    Returns:
        `folder`, holding configs/inference.json, configs/metadata.json and the weights the config loads.
    """
    from monai.bundle import ConfigParser

    config, meta, weights = _bundle_parts(name, small)
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(exist_ok=True)
    (folder / "configs" / "inference.json").write_text(json.dumps(config, indent=2))
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta, indent=2))
    torch.manual_seed(seed)
    network = ConfigParser(config).get_parsed_content("network_def")
    torch.save(network.state_dict(), folder / "models" / weights)
    return folder


def monai_bundle_output(bundle: Path, image: Path, work: Path) -> Path:
    """Run the bundle's own inference with MONAI (`monai.bundle.run`, in this process) on one NIfTI image, as a
    user of the model zoo would, and return the mask file its `SaveImaged` wrote.

    Overrides: `bundle_root`, `dataset_dir` (holding `imagesTs/<image>`), `output_dir`, no data-loader workers,
    and where the config names `ITKReader` without ITK installed, MONAI's NIfTI reader.
    """
    import importlib.util
    import shutil

    from monai.bundle import ConfigParser, run

    images = work / "data" / "imagesTs"
    images.mkdir(parents=True, exist_ok=True)
    shutil.copy(image, images / image.name)
    config_file = bundle / "configs" / "inference.json"
    overrides: dict[str, Any] = {"bundle_root": str(bundle), "dataset_dir": str(work / "data"),
                                 "output_dir": str(work / "out"), "dataloader#num_workers": 0}
    loader = ConfigParser.load_config_file(config_file)["preprocessing"]["transforms"][0]
    if loader.get("reader") == "ITKReader" and importlib.util.find_spec("itk") is None:
        overrides["preprocessing#transforms#0#reader"] = "NibabelReader"
    run(run_id="run", init_id="initialize", config_file=str(config_file),
        meta_file=str(bundle / "configs" / "metadata.json"), **overrides)
    written = sorted((work / "out").rglob("*.nii.gz"))
    if len(written) != 1:
        raise RuntimeError(f"MONAI's run wrote {len(written)} images under {work / 'out'}")
    return written[0]


def monai_interactive_output(bundle: Path, image: Path, clicks: dict[str, list[list[int]]], work: Path) -> Path:
    """An interactive bundle's own pipeline run by MONAI in this process on one image with clicks, the way MONAI
    Label feeds a DeepEdit bundle: `{"image": path, <label>: clicks, ...}` through the bundle's `preprocessing`,
    its `inferer` with `network_def` and the weights, and its `postprocessing` (whose `SaveImaged` writes the
    mask into `work`); returns that file."""
    from monai.bundle import ConfigParser

    parser = ConfigParser(ConfigParser.load_config_file(bundle / "configs" / "inference.json"))
    parser.update({"bundle_root": str(bundle), "output_dir": str(work), "device": torch.device("cpu")})
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True))
    network.eval()
    data = parser.get_parsed_content("preprocessing")({"image": str(image), **clicks})
    with torch.no_grad():
        data["pred"] = parser.get_parsed_content("inferer")(data["image"][None], network)[0]
    parser.get_parsed_content("postprocessing")(data)
    written = sorted(work.rglob("*.nii.gz"))
    if len(written) != 1:
        raise RuntimeError(f"the bundle's postprocessing wrote {len(written)} images under {work}")
    return written[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m aiaa_demo.zoo_bundles", description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="folder to write the bundles into (one sub-folder each)")
    parser.add_argument("--small", action="store_true", help="narrow networks (seconds per image on a CPU)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ZOO_BUNDLES:
        print(write_bundle(args.out / name, name, small=args.small, seed=args.seed))


if __name__ == "__main__":
    main()
