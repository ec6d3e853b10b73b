"""Helpers to build the official Depth Anything 3 network (test-only dependency).

The official package (``depth-anything-3==0.1.1``, installed with ``--no-deps`` plus addict,
omegaconf and einops) is never imported by da3gs itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


def _stub_evo() -> None:
    """The official GS adapter imports ``evo`` (a trajectory toolkit) only for pose-scale
    alignment with ground-truth poses, a path these tests never take. Register a stub so the
    module imports without installing evo; using it raises."""
    import sys
    import types

    if "evo.core.trajectory" in sys.modules:
        return
    try:
        import evo.core.trajectory  # noqa: F401
        return
    except Exception:
        pass

    class PosePath3D:  # noqa: D401
        def __init__(self, *a, **k):
            raise RuntimeError("evo stub: pose alignment is not available in these tests")

    for name in ("evo", "evo.core", "evo.core.trajectory"):
        sys.modules[name] = types.ModuleType(name)
    sys.modules["evo.core.trajectory"].PosePath3D = PosePath3D


def official_available() -> bool:
    _stub_evo()
    try:
        import depth_anything_3.cfg  # noqa: F401
        import depth_anything_3.registry  # noqa: F401
    except Exception:
        return False
    return True


requires_official = pytest.mark.skipif(not official_available(),
                                       reason="official depth-anything-3 package not installed")


def build_official(name: str, seed: int = 0) -> torch.nn.Module:
    """Official network ``name`` (``da3-small``...) with random weights.

    Default init plus noise on every parameter (0.02 + half the parameter's own spread), so
    that no two LayerNorms or biases are alike and outputs vary across pixels and views; the
    FOV bias is lifted so that focal lengths are not clamped."""
    from depth_anything_3.cfg import create_object, load_config
    from depth_anything_3.registry import MODEL_REGISTRY

    torch.manual_seed(seed)
    net = create_object(load_config(MODEL_REGISTRY[name]))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in net.parameters():
            spread = float(p.std()) if p.numel() > 1 else 0.0
            p.add_(torch.randn(p.shape, generator=g) * (0.02 + 0.5 * spread))
        for m in net.modules():
            if type(m).__name__ == "CameraDec":
                fov = m.fc_fov[0]
                fov.weight.mul_(0.1 / max(float(fov.weight.std()), 1e-6) / fov.in_features ** 0.5)
                fov.bias.add_(1.0 - fov.bias.mean())
    return net.eval()


#: tensors in a released model.safetensors per official network (the state dict less the tied
#: aliases that ``save_model`` drops; DA3-SMALL's published file holds 437)
FILE_TENSORS = {"da3-small": 437, "da3-base": 437, "da3-large": 637, "da3-giant": 971,
                "da3mono-large": 406, "da3metric-large": 406, "da3nested-giant-large": 1377}
SMALL_FILE_TENSORS = FILE_TENSORS["da3-small"]


def save_official(net: torch.nn.Module, folder: Path, name: str, all_keys: bool = False) -> Path:
    """Write ``net`` exactly as the release does: wrapped as attribute ``model`` of a module
    (``DepthAnything3``) and saved with ``safetensors.torch.save_model`` (the hub mixin's
    writer), which stores each tied tensor once; plus ``config.json`` with ``model_name``.

    ``all_keys=True`` writes every state-dict name instead (as older conversions do)."""
    from safetensors.torch import save_file, save_model

    folder.mkdir(parents=True, exist_ok=True)
    wrapper = torch.nn.Module()
    wrapper.model = net
    if all_keys:
        state = {k: v.detach().contiguous().clone() for k, v in wrapper.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"))
    else:
        save_model(wrapper, str(folder / "model.safetensors"))
        from safetensors import safe_open

        with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
            n = len(list(f.keys()))
        assert n == FILE_TENSORS.get(name, n), f"{name}: {n} tensors, the release has " \
            f"{FILE_TENSORS[name]}"
    (folder / "config.json").write_text(json.dumps({"model_name": name}))
    return folder


def build_official_uninit(name: str) -> torch.nn.Module:
    """Official network ``name`` with weight initialisation skipped (uninitialised memory):
    builds the big presets in about a second, for checks of names, shapes and weight tying."""
    from depth_anything_3.cfg import create_object, load_config
    from depth_anything_3.registry import MODEL_REGISTRY

    official_available()
    saved = {}
    noop = [(torch.nn.init, n) for n in dir(torch.nn.init)
            if n.endswith("_") and not n.startswith("__")]
    noop += [(torch.Tensor, n) for n in ("normal_", "uniform_", "zero_", "fill_")]
    for mod, attr in noop:
        saved[(mod, attr)] = getattr(mod, attr)
        setattr(mod, attr, lambda t, *a, **k: t)
    try:
        return create_object(load_config(MODEL_REGISTRY[name]))
    finally:
        for (mod, attr), f in saved.items():
            setattr(mod, attr, f)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (a scale-aware relative error)."""
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
