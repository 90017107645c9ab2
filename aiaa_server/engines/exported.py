"""Local engine for `torch.export` programs: `models/model.pt2`, an ExportedProgram written by `torch.export.save`.

`torch.export.load` is not safe on untrusted files: it unpickles parts of the archive with
`torch.load(..., weights_only=False)` and `pickle.loads` (torch 2.13: `torch/export/pt2_archive/_package.py`,
`_load_state_dict` and `_load_constants`; `torch/_export/serde/serialize.py`, `deserialize_torch_artifact`, falls
back to `weights_only=False`), so a crafted `.pt2` runs arbitrary code while it loads. The server therefore
treats an uploaded `.pt2` like uploaded Python code: only with `--allow_uploaded_code` (see `mmar.safety`);
operator-provided model folders are trusted.

On the CPU, convolutions are sent to oneDNN (`use_onednn_convolutions`): for a batch of one, PyTorch's heuristic
runs a 3D convolution on a small, deep feature map with its slow reference kernel (`aten::slow_conv3d_forward`:
56 % of a DeepGrow 3D forward); oneDNN's kernel gives the same values up to float rounding, 1.8× faster for the
demo DeepGrow 3D network and 2.9× for DExtr3D.

Eval mode: a program's graph has the training flags of the module it was exported from baked in, and
`ExportedProgram.module()` refuses `.eval()`. A program exported in training mode has its dropout and batch
norm calls switched to their eval behaviour here (no dropout, running statistics), as `module.eval()` would.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import torch

from aiaa_server.engines.base import ModuleEngine
from aiaa_server.errors import InvalidModel

log = logging.getLogger(__name__)

EXPORTED_SUFFIX = ".pt2"
_DROPOUTS = ("dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout")  # (input, p, train)
_BATCH_NORM_TRAINING_ARG = 5  # aten.batch_norm(input, weight, bias, running_mean, running_var, training, ...)


class ExportedEngine(ModuleEngine):
    """The Engine protocol over the module of a loaded ExportedProgram on one device."""


def looks_like_exported_program(path: Path) -> bool:
    """Whether `path` is a `torch.export.save` archive (a zip with `<root>/archive_format` and a model JSON);
    reads the zip's directory only."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/archive_format") for n in names) and any("/models/" in n and n.endswith(".json")
                                                                    for n in names)


def load_exported(path: Path, device: torch.device, optimize: bool = True) -> torch.nn.Module:
    """Load a `torch.export.save` file as a callable module on `device`, with eval-mode dropout and batch norm,
    and (on the CPU, with `optimize`: float32 forwards) its convolutions on oneDNN.

    Unpickles parts of the file (see the module docstring): call it on trusted files only.

    Raises:
        InvalidModel: the file is not a loadable ExportedProgram (naming the file).
    """
    try:
        program = torch.export.load(str(path))
        if device.type != "cpu":
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, device)
        module = program.module()
    except Exception as exc:
        raise InvalidModel(f"{path.name} is not a loadable torch.export program (ExportedProgram): {exc}",
                           file=path.name) from exc
    switched = to_eval_mode(module)
    if switched:
        log.info("%s was exported in training mode: %d dropout/batch norm calls switched to eval", path.name,
                 switched)
    if optimize and device.type == "cpu":
        use_onednn_convolutions(module)
    return module


def to_eval_mode(module: torch.nn.Module) -> int:
    """Switch the training-mode dropout and batch norm calls of an exported module's graph to eval behaviour.

    Returns:
        How many calls were switched (0: the program was exported in eval mode, or has none).
    """
    graph = getattr(module, "graph", None)
    if graph is None:
        return 0
    dropouts = {getattr(torch.ops.aten, name).default for name in _DROPOUTS}
    batch_norm = torch.ops.aten.batch_norm.default
    switched = 0
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        if node.target in dropouts and len(node.args) > 2 and node.args[2] is True:
            node.update_arg(2, False)
            switched += 1
        elif (node.target is batch_norm and len(node.args) > _BATCH_NORM_TRAINING_ARG
              and node.args[_BATCH_NORM_TRAINING_ARG] is True and node.args[3] is not None):
            node.update_arg(_BATCH_NORM_TRAINING_ARG, False)  # with running statistics: use them, as eval() does
            switched += 1
    if switched:
        module.recompile()  # type: ignore[operator]
    return switched


_CONVOLUTIONS = {torch.ops.aten.conv2d.default: 2, torch.ops.aten.conv3d.default: 3}


def use_onednn_convolutions(module: torch.nn.Module) -> int:
    """Run an exported CPU module's 2D/3D convolutions with oneDNN (`aten.mkldnn_convolution`) whatever the
    input size (see the module docstring). Only where oneDNN is available; transposed convolutions keep PyTorch's
    choice.

    Returns:
        How many convolution calls were switched.
    """
    graph = getattr(module, "graph", None)
    if graph is None or not torch.backends.mkldnn.is_available():
        return 0
    switched = 0
    for node in graph.nodes:
        dims = _CONVOLUTIONS.get(node.target) if node.op == "call_function" else None
        if dims is None or node.kwargs:
            continue
        # conv{2,3}d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1), lists per axis
        args = list(node.args) + [None, [1] * dims, [0] * dims, [1] * dims, 1][len(node.args) - 2:]
        source, weight, bias, stride, padding, dilation, groups = args
        node.target = torch.ops.aten.mkldnn_convolution.default
        node.args = (source, weight, bias, padding, stride, dilation, groups)
        switched += 1
    if switched:
        module.recompile()  # type: ignore[operator]
    return switched
