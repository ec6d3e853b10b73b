"""LPIPS v0.1 (Zhang et al. 2018), our own implementation, for ``net="vgg"`` and ``net="alex"``.

``LPIPS(x, y) = sum_l mean_hw( w_l . (n(f_l(x)) - n(f_l(y)))^2 )`` with ``f_l`` the ReLU outputs of
an ImageNet backbone (AlexNet relu1..relu5; VGG16 relu1_2, relu2_2, relu3_3, relu4_3, relu5_3),
``n`` the unit normalisation over channels (``f / (||f|| + 1e-10)``) and ``w_l`` the 1x1 linear
heads of v0.1. Inputs are in [0, 1]; internally ``x -> 2x - 1`` then the LPIPS scaling layer
``(x - shift) / scale`` with shift (-0.030, -0.088, -0.188), scale (0.458, 0.448, 0.450). The
result equals the ``lpips`` package's ``LPIPS(net=...)(x, y, normalize=True)`` given the same
weights. Report VGG (the 3DGS papers' choice) and AlexNet, and say which.

Weights (never downloaded at metric time). The backbone comes from the first of:

1. ``weights=`` an explicit file: our ``lpips_{net}.safetensors`` (backbone + heads) or a
   torchvision ``.pth`` state dict (``features.N.weight`` ...; read with ``weights_only=True``);
2. ``weights_dir=`` a folder holding ``lpips_{net}.safetensors`` or the torchvision file;
3. the da3gs cache: ``$DA3GS_LPIPS_DIR`` or ``~/.cache/da3gs/lpips/lpips_{net}.safetensors``,
   written by ``da3gs fetch lpips``;
4. the torch hub cache ``torch.hub.get_dir()/checkpoints/`` (``alexnet-owt-7be5be79.pth``,
   ``vgg16-397923af.pth``; honours ``$TORCH_HOME``).

The heads come from ``heads=`` if given, else from the safetensors file, else from the ``lpips``
pip package (``lpips/weights/v0.1/{alex,vgg}.pth``). If nothing is found,
:class:`LPIPSWeightsError` names the places searched and the fetch command.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import torch
import torch.nn as nn

from .image import MetricsError, check_image_pair

__all__ = [
    "LPIPS",
    "LPIPSWeightsError",
    "NETS",
    "TORCHVISION_FILES",
    "lpips",
    "load_lpips",
    "lpips_models",
    "parse_lpips_nets",
    "lpips_cache_dir",
    "lpips_weight_shapes",
]

NETS = ("vgg", "alex")
TORCHVISION_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
FETCH_COMMAND = "da3gs fetch lpips"
# Conv layers as (index in torchvision's `features`, in, out, kernel, stride, padding); "M" = max pool.
_ALEX = [(0, 3, 64, 11, 4, 2), "M3", (3, 64, 192, 5, 1, 2), "M3", (6, 192, 384, 3, 1, 1),
         (8, 384, 256, 3, 1, 1), (10, 256, 256, 3, 1, 1)]
_ALEX_TAPS = (1, 4, 7, 9, 11)  # features index of relu1..relu5
_VGG_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_VGG_TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


class LPIPSWeightsError(MetricsError):
    """LPIPS weights are missing or unreadable."""


def _check_net(net: str) -> str:
    if net not in NETS:
        raise MetricsError(f"net: expected one of {NETS}, got {net!r}")
    return net


def _features(net: str) -> tuple[nn.Sequential, tuple[int, ...]]:
    """Backbone layers with torchvision's indices (so state-dict keys are ``features.N.*``)."""
    layers: list[nn.Module] = []
    if net == "alex":
        for spec in _ALEX:
            if spec == "M3":
                layers.append(nn.MaxPool2d(3, 2))
            else:
                _, cin, cout, k, s, p = spec
                layers += [nn.Conv2d(cin, cout, k, s, p), nn.ReLU()]
        return nn.Sequential(*layers), _ALEX_TAPS
    cin = 3
    for v in _VGG_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, 1, 1), nn.ReLU()]
            cin = v
    return nn.Sequential(*layers), _VGG_TAPS


def conv_indices(net: str) -> list[int]:
    """Indices of the conv layers in ``features`` (alex: 0,3,6,8,10; vgg: 0,2,5,...,28)."""
    feats, _ = _features(_check_net(net))
    return [i for i, m in enumerate(feats) if isinstance(m, nn.Conv2d)]


def lpips_weight_shapes(net: str) -> dict[str, tuple[int, ...]]:
    """Every key of a complete LPIPS state dict and its shape (OIHW)."""
    return {k: tuple(v.shape) for k, v in LPIPS(net).state_dict().items()}


class LPIPS(nn.Module):
    """LPIPS v0.1 network (random weights until loaded; use :func:`load_lpips`).

    ``forward(pred, gt)``: (B, 3, H, W) or (3, H, W) in [0, 1] -> (B,) distances (0 = identical).
    Differentiable with respect to the images (usable as a training loss).
    """

    def __init__(self, net: str = "vgg"):
        super().__init__()
        self.net = _check_net(net)
        self.features, self.taps = _features(net)
        self.features = self.features[: self.taps[-1] + 1]
        for k, c in enumerate(CHANNELS[net]):
            self.add_module(f"lin{k}", nn.Conv2d(c, 1, 1, bias=False))
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x)
        return out

    def forward(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        p, g = check_image_pair(pred, gt)
        if p.shape[1] != 3:
            raise MetricsError(f"pred: LPIPS needs 3 channels, got shape {tuple(pred.shape)}")
        B = p.shape[0]
        w = self.lin0.weight
        x = torch.cat([p, g]).to(device=w.device, dtype=w.dtype)
        x = ((2.0 * x - 1.0) - self.shift) / self.scale
        total = x.new_zeros(B)
        for k, f in enumerate(self._taps(x)):
            f = f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            d = (f[:B] - f[B:]).pow(2)
            total = total + getattr(self, f"lin{k}")(d).mean((1, 2, 3))
        return total


def lpips_cache_dir() -> Path:
    """``$DA3GS_LPIPS_DIR`` or ``~/.cache/da3gs/lpips`` (where ``da3gs fetch lpips`` writes)."""
    env = os.environ.get("DA3GS_LPIPS_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "da3gs" / "lpips"


def _read(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a plain .pth state dict (weights_only)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, refused pickle, ...
        first = (str(e).strip().splitlines() or [""])[0]
        raise LPIPSWeightsError(f"{path}: cannot read LPIPS weights ({type(e).__name__}: {first})") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise LPIPSWeightsError(f"{path}: expected a plain state dict of tensors")
    return sd


def _lpips_package_heads(net: str) -> Path | None:
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "weights" / "v0.1" / f"{net}.pth"
        if p.is_file():
            return p
    return None


def _heads_from(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our ``lin{k}.weight`` keys, or the lpips package's ``lin{k}.model.1.weight``."""
    out = {}
    for k in range(5):
        for key in (f"lin{k}.weight", f"lin{k}.model.1.weight"):
            if key in sd:
                out[f"lin{k}.weight"] = sd[key]
    return out


def _backbone_candidates(net: str, weights, weights_dir) -> tuple[list[Path], list[str]]:
    cands: list[Path] = []
    if weights is not None:
        p = Path(weights).expanduser()
        if not p.is_file():
            raise LPIPSWeightsError(f"weights: {p} is not a file")
        cands.append(p)
    names = (f"lpips_{net}.safetensors", TORCHVISION_FILES[net])
    if weights_dir is not None:
        d = Path(weights_dir).expanduser()
        if not d.is_dir():
            raise LPIPSWeightsError(f"weights_dir: {d} is not a folder")
        cands += [d / n for n in names]
    cands.append(lpips_cache_dir() / names[0])
    cands.append(Path(torch.hub.get_dir()) / "checkpoints" / names[1])
    return [c for c in cands if c.is_file()], [str(c) for c in cands]


def load_lpips(
    net: str = "vgg",
    weights: str | os.PathLike | None = None,
    weights_dir: str | os.PathLike | None = None,
    heads: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
) -> LPIPS:
    """Build :class:`LPIPS` with pretrained weights (search order in the module docstring).

    Returns the network in eval mode with frozen parameters, on ``device``.
    Raises:
        LPIPSWeightsError: no backbone or heads found, or a file lacks keys / has bad shapes.
    """
    _check_net(net)
    found, searched = _backbone_candidates(net, weights, weights_dir)
    if not found:
        raise LPIPSWeightsError(
            f"LPIPS {net} backbone weights not found (looked in: {', '.join(searched)}); "
            f"run `{FETCH_COMMAND}` (or pass weights=/weights_dir=)"
        )
    src = found[0]
    sd = _read(src)
    state = {k: v for k, v in sd.items() if k.startswith("features.")}
    head_src = src
    head_sd = _heads_from(sd)
    if heads is not None:
        head_src = Path(heads).expanduser()
        if not head_src.is_file():
            raise LPIPSWeightsError(f"heads: {head_src} is not a file")
        head_sd = _heads_from(_read(head_src))
    elif len(head_sd) < 5:
        pkg = _lpips_package_heads(net)
        if pkg is None:
            raise LPIPSWeightsError(
                f"LPIPS {net} linear heads not found ({src} has none and the `lpips` package is not "
                f"installed); run `{FETCH_COMMAND}` or pass heads="
            )
        head_src, head_sd = pkg, _heads_from(_read(pkg))
    model = LPIPS(net)
    expected = lpips_weight_shapes(net)
    for name, (keys, file) in {"backbone": (state, src), "heads": (head_sd, head_src)}.items():
        for k, v in keys.items():
            if k in expected and tuple(v.shape) != expected[k]:
                raise LPIPSWeightsError(f"{file}: {k} has shape {tuple(v.shape)}, expected {expected[k]} for net={net!r}")
    full = {k: v for k, v in {**state, **head_sd}.items() if k in expected}
    missing = sorted(set(expected) - set(full))
    if missing:
        raise LPIPSWeightsError(f"{src}: missing LPIPS {net} weights {missing[:3]}{'...' if len(missing) > 3 else ''}")
    model.load_state_dict(full)
    model.eval().requires_grad_(False)
    return model.to(device)


def parse_lpips_nets(spec: str) -> list[str]:
    """``"vgg,alex"``, ``"vgg"``, ``"alex"``, ``"both"`` or ``"none"`` -> the nets, in order
    (``[]`` for none). Raises :class:`MetricsError` for anything else."""
    s = str(spec).strip().lower()
    if s == "none":
        return []
    nets = list(NETS) if s == "both" else [n.strip() for n in s.split(",") if n.strip()]
    if not nets or any(n not in NETS for n in nets):
        raise MetricsError(f"expected vgg,alex, vgg, alex, both or none, got {spec!r}")
    return nets


def lpips_models(nets, device: str | torch.device = "cpu",
                 weights: str | os.PathLike | None = None) -> dict[str, LPIPS]:
    """``{net: LPIPS}`` for each of ``nets`` (:func:`load_lpips`; ``weights`` only for a single
    net): the one LPIPS path of ``da3gs eval nvs`` and the stage-2 held-out evaluation.
    Raises :class:`LPIPSWeightsError` (naming the fetch command) when weights are missing."""
    nets = list(nets)
    if weights is not None and len(nets) > 1:
        raise MetricsError("weights: one file serves one net; pass one net with weights")
    return {n: load_lpips(n, weights=weights, device=device) for n in nets}


@functools.lru_cache(maxsize=8)
def _cached(net: str, weights, weights_dir, heads, device: str) -> LPIPS:
    return load_lpips(net, weights, weights_dir, heads, device)


def lpips(
    pred: torch.Tensor,
    gt: torch.Tensor,
    net: str = "vgg",
    weights: str | os.PathLike | None = None,
    weights_dir: str | os.PathLike | None = None,
    heads: str | os.PathLike | None = None,
) -> torch.Tensor:
    """LPIPS per image. pred, gt: (B, 3, H, W) or (3, H, W) in [0, 1] -> (B,) (mean: caller's job).

    The network is loaded once per (net, weights, weights_dir, heads, device) and cached (the
    search is not redone if ``$DA3GS_LPIPS_DIR`` changes later); it runs on ``pred``'s device,
    in float32, without gradients (use :func:`load_lpips` for a differentiable loss).
    """
    p, _ = check_image_pair(pred, gt)
    args = tuple(None if a is None else str(a) for a in (weights, weights_dir, heads))
    model = _cached(_check_net(net), *args, str(p.device))
    with torch.no_grad():
        return model(pred.float(), gt.float()).to(pred.dtype)
