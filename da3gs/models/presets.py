"""Network presets as data: one row per official configuration, plus a tiny test preset.

Each row gives the ViT, the blocks handed to the heads, where cross-view alternation starts,
and the head widths. ``kind`` is ``"anyview"`` (DA3: Dual-DPT + camera head) or ``"mono"``
(monocular/metric: DPT depth + sky). ``nested`` combines an any-view and a metric model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from da3gs.errors import ConfigError


@dataclass(frozen=True)
class ViTSpec:
    """DINOv2 ViT shape. ``ffn`` is ``"mlp"`` or ``"swiglu"`` (ViT-g)."""

    dim: int
    depth: int
    heads: int
    ffn: str = "mlp"
    patch_size: int = 14
    pos_grid: int = 37  # learned position embedding grid (518 / 14)


@dataclass(frozen=True)
class Preset:
    """One network configuration.

    Fields: ``vit`` backbone shape; ``out_layers`` the 4 blocks whose tokens feed the heads;
    ``alt_start`` first block with cross-view alternation, QK-norm and RoPE (-1: none, mono);
    ``head_features`` and ``head_out_channels`` DPT widths; ``kind`` anyview | mono;
    ``gs_head`` whether a GS-DPT head is present (official giant); ``sh_degree`` of its SH.
    """

    name: str
    vit: ViTSpec
    out_layers: tuple[int, int, int, int]
    alt_start: int
    head_features: int
    head_out_channels: tuple[int, int, int, int]
    kind: str = "anyview"
    gs_head: bool = False
    sh_degree: int = 2
    cam_enc_heads: int = 16
    official_name: str = ""

    @property
    def cat_token(self) -> bool:
        """Heads see [latest within-view output, current output] (width 2C) for any-view models."""
        return self.kind == "anyview"

    @property
    def head_dim_in(self) -> int:
        return self.vit.dim * (2 if self.cat_token else 1)


VITS = ViTSpec(384, 12, 6)
VITB = ViTSpec(768, 12, 12)
VITL = ViTSpec(1024, 24, 16)
VITG = ViTSpec(1536, 40, 24, ffn="swiglu")

PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("small", VITS, (5, 7, 9, 11), 4, 64, (48, 96, 192, 384), official_name="da3-small"),
    Preset("base", VITB, (5, 7, 9, 11), 4, 128, (96, 192, 384, 768), official_name="da3-base"),
    # The Apache-2.0 small / base networks with a GS-DPT head to train in stage 2
    # (``model.init`` an official DA3-SMALL / DA3-BASE: the head is added at initialisation).
    Preset("small-gs", VITS, (5, 7, 9, 11), 4, 64, (48, 96, 192, 384), gs_head=True),
    Preset("base-gs", VITB, (5, 7, 9, 11), 4, 128, (96, 192, 384, 768), gs_head=True),
    Preset("large", VITL, (11, 15, 19, 23), 8, 256, (256, 512, 1024, 1024),
           official_name="da3-large"),
    Preset("giant", VITG, (19, 27, 33, 39), 13, 256, (256, 512, 1024, 1024), gs_head=True,
           official_name="da3-giant"),
    Preset("mono-large", VITL, (4, 11, 17, 23), -1, 256, (256, 512, 1024, 1024), kind="mono",
           official_name="da3mono-large"),
    Preset("metric-large", VITL, (4, 11, 17, 23), -1, 256, (256, 512, 1024, 1024), kind="mono",
           official_name="da3metric-large"),
    # Compact presets, small enough to train from scratch here (7.8 M parameters with the GS
    # head, 15.6 MB in fp16): the any-view student and its monocular teacher.
    Preset("compact", ViTSpec(192, 8, 3), (1, 3, 5, 7), 2, 32, (32, 64, 96, 192), gs_head=True,
           cam_enc_heads=3),
    Preset("compact-mono", ViTSpec(192, 8, 3), (1, 3, 5, 7), -1, 32, (32, 64, 96, 192),
           kind="mono", cam_enc_heads=3),
    # Tiny presets for tests: same structure, a few thousand parameters per block.
    Preset("tiny", ViTSpec(32, 6, 2), (2, 3, 4, 5), 2, 8, (8, 8, 16, 16), cam_enc_heads=2),
    Preset("tiny-gs", ViTSpec(32, 6, 2), (2, 3, 4, 5), 2, 8, (8, 8, 16, 16), gs_head=True,
           cam_enc_heads=2),
    Preset("tiny-mono", ViTSpec(32, 4, 2), (0, 1, 2, 3), -1, 8, (8, 8, 16, 16), kind="mono",
           cam_enc_heads=2),
]}


@dataclass(frozen=True)
class NestedPreset:
    """An any-view model whose depth and cameras are scaled to metric by a metric model."""

    name: str
    anyview: str
    metric: str
    official_name: str = ""
    kind: str = field(default="nested")


NESTED: dict[str, NestedPreset] = {p.name: p for p in [
    NestedPreset("nested-giant-large", "giant", "metric-large",
                 official_name="da3nested-giant-large"),
    NestedPreset("tiny-nested", "tiny-gs", "tiny-mono"),
]}

OFFICIAL_NAMES = {p.official_name: n for n, p in {**PRESETS, **NESTED}.items() if p.official_name}


def preset_from_yaml(path) -> Preset | NestedPreset:
    """A preset from a YAML file in the layout of ``configs/models/*.yaml`` (custom networks)."""
    from pathlib import Path

    import yaml

    try:
        d = yaml.safe_load(Path(path).read_text())
        if d.get("kind") == "nested":
            return NestedPreset(**d)
        d["vit"] = ViTSpec(**d["vit"])
        d["out_layers"] = tuple(d["out_layers"])
        d["head_out_channels"] = tuple(d["head_out_channels"])
        return Preset(**d)
    except (OSError, yaml.YAMLError, TypeError, KeyError, AttributeError) as e:
        raise ConfigError(f"{path}: not a preset YAML ({e})") from None


def get_preset(name: str) -> Preset | NestedPreset:
    """Look up a preset by our name, the official config name (``da3-large``...) or the path
    of a preset YAML file (``configs/models/large.yaml``)."""
    if str(name).endswith((".yaml", ".yml")):
        return preset_from_yaml(name)
    name = OFFICIAL_NAMES.get(name, name)
    if name in PRESETS:
        return PRESETS[name]
    if name in NESTED:
        return NESTED[name]
    known = ", ".join(sorted([*PRESETS, *NESTED]))
    raise ConfigError(f"unknown preset {name!r}; known presets: {known}")
