"""The one converter between official Depth Anything 3 checkpoint keys and our module names.

Official checkpoints (``model.safetensors`` of ``depth-anything/DA3-*``) store the network under
``model.``; nested checkpoints hold ``model.da3.`` (any-view) and ``model.da3_metric.`` (ours:
``anyview.`` and ``metric.``). Inside a network the names map as in :data:`RENAMES` (one data
table, read in both directions; ``{n}`` is a number; the longest matching prefix wins), plus the
infix ``.resConfUnit{n}.`` <-> ``.res_unit{n}.`` of the fusion blocks:

| official | ours |
|---|---|
| ``backbone.pretrained.patch_embed.proj.`` | ``backbone.patch_embed.`` |
| ``backbone.pretrained.`` | ``backbone.`` |
| ``cam_enc.`` / ``cam_dec.`` | ``camera_encoder.`` / ``camera_decoder.`` |
| ``head.`` (Dual-DPT or DPT), ``gs_head.`` | ``depth_head.``, ``gs_head.`` |
| head ``norm.``, ``projects.``, ``resize_layers.`` | ``reassemble.norm.`` ... |
| head ``scratch.layer{n}_rn.`` | ``adapters.layer{n}_rn.`` |
| Dual-DPT ``scratch.refinenet{n}.`` / ``scratch.refinenet{n}_aux.`` | ``depth_fusion.refinenet{n}.`` / ``ray_fusion.refinenet{n}.`` |
| Dual-DPT ``scratch.output_conv1.`` / ``scratch.output_conv2.`` | ``depth_out1.`` / ``depth_out2.`` |
| Dual-DPT ``scratch.output_conv1_aux.`` | ``ray_out1.`` |
| Dual-DPT ``scratch.output_conv2_aux.{i}.{0,2,5}.`` | ``ray_out2.{i}.{0,1.norm,3}.`` |
| DPT / GS-DPT ``scratch.refinenet{n}.``, ``scratch.output_conv1.`` | ``fusion.refinenet{n}.``, ``out1.`` |
| DPT ``scratch.output_conv2.``, ``scratch.sky_output_conv2.`` | ``depth_out2.``, ``sky_out2.`` |
| GS-DPT ``scratch.output_conv2.`` | ``out2.`` |

Tied tensors
------------
The official networks share one module in several places: in the Dual-DPT head the LayerNorm of
the auxiliary (ray) output stack is one object placed in all four levels of
``scratch.output_conv2_aux`` (only level 3 is used by the forward). The release writes its files
with ``safetensors.torch.save_model``, which stores a shared tensor once, under the first name in
sorted order, so the published files hold level 0 and lack levels 1-3. :data:`TIED` lists every
such group. It was found by building every official network of ``depth-anything-3==0.1.1``
(small, base, large, giant, mono-large, metric-large, nested-giant-large) and grouping its state
dict by storage exactly as ``save_model`` does (``scripts/find_tied_tensors.py``; the result is
in ``docs/conformance.md``): the any-view networks (and the ``da3.`` half of the nested one) have
the two groups below and nothing else is shared; mono, metric, the GS-DPT head and the camera
encoder/decoder share nothing.

Our Dual-DPT shares the module too (one ``ChannelsLastLayerNorm`` object in all four levels of
``ray_out2``), rather than keeping four copies that the converter would have to keep equal: with
one tensor, training updates the same parameter the official network would, and an export has no
copies that could disagree (four copies would drift apart once trained, since only level 3 gets
gradients, and an export would have to know which copy is the live one). ``load_state_dict``
still wants every name, so :func:`fill_tied` fills the names a file lacks from whichever member
it holds (in either naming), and refuses a file that holds several members with different
values (:class:`CheckpointMismatch`). :func:`unique_state` gives the state dict with each tied
tensor once, as written to disk.
"""

from __future__ import annotations

import re

import torch

from da3gs.errors import Da3gsError

#: (official prefix, our prefix) per part of a network; ``{n}`` / ``{i}`` match a number.
RENAMES: dict[str, list[tuple[str, str]]] = {
    "common": [
        ("backbone.pretrained.patch_embed.proj.", "backbone.patch_embed."),
        ("backbone.pretrained.", "backbone."),
        ("cam_enc.", "camera_encoder."),
        ("cam_dec.", "camera_decoder."),
        ("head.", "depth_head."),
        ("head.norm.", "depth_head.reassemble.norm."),
        ("head.projects.", "depth_head.reassemble.projects."),
        ("head.resize_layers.", "depth_head.reassemble.resize_layers."),
        ("head.scratch.layer{n}_rn.", "depth_head.adapters.layer{n}_rn."),
        ("gs_head.", "gs_head."),
        ("gs_head.norm.", "gs_head.reassemble.norm."),
        ("gs_head.projects.", "gs_head.reassemble.projects."),
        ("gs_head.resize_layers.", "gs_head.reassemble.resize_layers."),
        ("gs_head.scratch.layer{n}_rn.", "gs_head.adapters.layer{n}_rn."),
        ("gs_head.scratch.refinenet{n}.", "gs_head.fusion.refinenet{n}."),
        ("gs_head.scratch.output_conv1.", "gs_head.out1."),
        ("gs_head.scratch.output_conv2.", "gs_head.out2."),
    ],
    "dual": [  # Dual-DPT head of the any-view networks
        ("head.scratch.refinenet{n}_aux.", "depth_head.ray_fusion.refinenet{n}."),
        ("head.scratch.refinenet{n}.", "depth_head.depth_fusion.refinenet{n}."),
        ("head.scratch.output_conv1.", "depth_head.depth_out1."),
        ("head.scratch.output_conv2.", "depth_head.depth_out2."),
        ("head.scratch.output_conv1_aux.", "depth_head.ray_out1."),
        ("head.scratch.output_conv2_aux.{i}.0.", "depth_head.ray_out2.{i}.0."),
        ("head.scratch.output_conv2_aux.{i}.2.", "depth_head.ray_out2.{i}.1.norm."),
        ("head.scratch.output_conv2_aux.{i}.5.", "depth_head.ray_out2.{i}.3."),
    ],
    "mono": [  # DPT head (depth + sky) of the mono / metric networks
        ("head.scratch.refinenet{n}.", "depth_head.fusion.refinenet{n}."),
        ("head.scratch.output_conv1.", "depth_head.out1."),
        ("head.scratch.output_conv2.", "depth_head.depth_out2."),
        ("head.scratch.sky_output_conv2.", "depth_head.sky_out2."),
    ],
}
INFIX = (".resConfUnit{n}.", ".res_unit{n}.")  # fusion residual units, anywhere in a key
#: sub-network prefixes of the nested checkpoint: official -> ours
NESTED_PREFIXES = (("da3.", "anyview."), ("da3_metric.", "metric."))

#: Tied tensors of the official networks, in official names relative to one network (as in the
#: table of RENAMES): each group is one tensor; the first name is the one ``save_model`` keeps
#: (first in sorted order), i.e. the one the published files hold. Found in every any-view
#: network (small, base, large, giant and the ``da3.`` half of nested-giant-large); mono-large,
#: metric-large, the GS-DPT head and the camera modules have none.
TIED: tuple[tuple[str, ...], ...] = tuple(
    tuple(f"head.scratch.output_conv2_aux.{i}.2.{p}" for i in range(4)) for p in ("bias", "weight"))


class CheckpointMismatch(Da3gsError):
    """A checkpoint does not fit the network (missing/unexpected keys or shapes, or tied names
    holding different values)."""


def _compile(template: str) -> re.Pattern:
    return re.compile("^" + re.sub(r"\\\{(\w)\\\}", r"(?P<\1>\\d+)", re.escape(template)))


def _rules(kind: str, to_ours: bool) -> list[tuple[re.Pattern, str, int]]:
    """Compiled (pattern, replacement template, specificity) for one direction."""
    rules = []
    for off, ours in RENAMES["common"] + RENAMES[kind]:
        src, dst = (off, ours) if to_ours else (ours, off)
        rules.append((_compile(src), dst, len(src)))
    return sorted(rules, key=lambda r: -r[2])


_RULES = {(kind, d): _rules(kind, d) for kind in ("dual", "mono") for d in (True, False)}


def _rename(key: str, kind: str, to_ours: bool) -> str:
    for pat, dst, _ in _RULES[(kind, to_ours)]:
        m = pat.match(key)
        if m:
            key = dst.format(**m.groupdict()) + key[m.end():]
            break
    a, b = INFIX if to_ours else INFIX[::-1]
    return re.sub(re.escape(a).replace(r"\{n\}", r"(\d+)"), b.replace("{n}", r"\1"), key)


def _is_dual(keys, to_ours: bool = True) -> bool:
    marker = "head.scratch.refinenet1_aux." if to_ours else "depth_head.ray_fusion."
    return any(k.startswith(marker) for k in keys)


def _split(state: dict, prefixes) -> dict[str, dict]:
    groups: dict[str, dict] = {}
    for k, v in state.items():
        for p in prefixes:
            if k.startswith(p):
                groups.setdefault(p, {})[k[len(p):]] = v
                break
        else:
            groups.setdefault("", {})[k] = v
    return groups


def official_to_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an official state dict (with or without the ``model.`` prefix) to our names.

    Tied names the file lacks are filled (see :func:`fill_tied`); several tied names with
    different values raise :class:`CheckpointMismatch`."""
    state = {(k[len("model."):] if k.startswith("model.") else k): v for k, v in state.items()}
    out = {}
    for prefix, sub in _split(state, [p for p, _ in NESTED_PREFIXES]).items():
        kind = "dual" if _is_dual(sub) else "mono"
        sub = fill_tied(sub, TIED if kind == "dual" else ())
        ours_prefix = dict(NESTED_PREFIXES).get(prefix, "")
        out.update({ours_prefix + _rename(k, kind, True): v for k, v in sub.items()})
    return out


def ours_to_official(state: dict[str, torch.Tensor], prefix: str = "model.",
                     dedupe: bool = True) -> dict[str, torch.Tensor]:
    """Rename our state dict to the official names under ``prefix`` (``model.`` as the release
    writes). With ``dedupe`` each tied tensor is kept once, under the name the release keeps."""
    out = {}
    for ours_prefix, sub in _split(state, [p for _, p in NESTED_PREFIXES]).items():
        kind = "dual" if _is_dual(sub, to_ours=False) else "mono"
        off_prefix = {o: p for p, o in NESTED_PREFIXES}.get(ours_prefix, "")
        sub = {_rename(k, kind, False): v for k, v in sub.items()}
        if dedupe and kind == "dual":
            sub = _drop_aliases(sub, TIED)
        out.update({prefix + off_prefix + k: v for k, v in sub.items()})
    return out


def _ours_tied() -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(_rename(n, "dual", True) for n in g) for g in TIED)


TIED_OURS = _ours_tied()  #: :data:`TIED` in our names


def _drop_aliases(state: dict, groups) -> dict:
    drop = {n for g in groups if g[0] in state for n in g[1:]}
    return {k: v for k, v in state.items() if k not in drop}


def fill_tied(state: dict[str, torch.Tensor], groups=None) -> dict[str, torch.Tensor]:
    """Return ``state`` with every member of each tied group present (filled from the member
    the state holds), for state dicts in official or our names, at any nesting prefix.

    ``groups`` defaults to both :data:`TIED` and :data:`TIED_OURS`. Members present with
    different values raise :class:`CheckpointMismatch` naming them."""
    groups = (TIED + TIED_OURS) if groups is None else groups
    out = dict(state)
    for group in groups:
        prefixes = {k[:-len(n)] for k in state for n in group
                    if k.endswith(n) and (len(k) == len(n) or k[-len(n) - 1] == ".")}
        for p in sorted(prefixes):
            held = [p + n for n in group if p + n in state]
            first = state[held[0]]
            for other in held[1:]:
                t = state[other]
                if t.shape != first.shape or not torch.equal(t, first.to(t.dtype)):
                    raise CheckpointMismatch(
                        f"tied tensors {held[0]} and {other} hold different values (one tensor "
                        f"in the network: {', '.join(p + n for n in group)})")
            for n in group:
                out.setdefault(p + n, first)
    return out


def unique_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``net.state_dict()`` with each tied tensor once (the first name of its group, as
    ``safetensors.torch.save_model`` keeps), contiguous: what is written to disk."""
    state = net.state_dict()
    seen: dict[tuple, str] = {}
    out = {}
    for k in sorted(state):
        v = state[k]
        ident = (v.device, v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        if v.numel() and ident in seen:
            continue
        seen[ident] = k
        out[k] = v.contiguous()
    return out


def is_official_state(state: dict[str, torch.Tensor]) -> bool:
    """True when the keys look like an official DA3 checkpoint."""
    return any(".pretrained." in k or k.startswith("model.") for k in state)


def load_into(net: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint"):
    """Load ``state`` (ours) into ``net`` strictly; raise :class:`CheckpointMismatch` naming the
    missing, unexpected or mis-shaped keys (at most 8 of each). Tied names the state lacks are
    filled from the member it holds. Values are cast to the network's dtype (fp32 by default:
    half-precision files load)."""
    state = fill_tied(state)
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        for name, items in (("missing", missing), ("unexpected", unexpected),
                            ("shape mismatch", shapes)):
            if items:
                more = f" (+{len(items) - 8} more)" if len(items) > 8 else ""
                parts.append(f"{name} {len(items)}: {', '.join(items[:8])}{more}")
        raise CheckpointMismatch(f"{source} does not fit preset {getattr(net.preset, 'name', '?')}: "
                                 + "; ".join(parts))
    net.load_state_dict(state, strict=True)
