"""One-time check: every tied (shared) tensor in the official DA3 networks, per preset.

Builds each official network (``depth-anything-3==0.1.1``, test-only reference) and groups the
state-dict names by storage, exactly as ``safetensors.torch.save_model`` does when the release
writes ``model.safetensors``; also groups parameters by object identity (module sharing). Prints,
per preset, the tensor count of the state dict, the count a released file holds, and the alias
groups (kept name first). With ``--meta`` weights are left uninitialised (fast, little memory).

    python scripts/find_tied_tensors.py [--meta] [da3-small da3-large ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NAMES = ["da3-small", "da3-base", "da3-large", "da3-giant", "da3mono-large", "da3metric-large",
         "da3nested-giant-large"]


def build(name: str, meta: bool) -> torch.nn.Module:
    from tests.official_ref import build_official_uninit, official_available

    if meta:
        return build_official_uninit(name)
    official_available()  # registers the evo stub
    from depth_anything_3.cfg import create_object, load_config
    from depth_anything_3.registry import MODEL_REGISTRY

    return create_object(load_config(MODEL_REGISTRY[name]))


def tied_groups(net: torch.nn.Module, meta: bool) -> tuple[int, list[list[str]]]:
    """(state-dict size, groups of ``model.``-prefixed names sharing one tensor, sorted)."""
    wrapper = torch.nn.Module()
    wrapper.model = net
    state = wrapper.state_dict()
    from safetensors.torch import _find_shared_tensors

    found = [sorted(g) for g in _find_shared_tensors(state) if len(g) > 1]
    ident: dict = {}  # module sharing: one Parameter object under several names
    for n, t in list(wrapper.named_parameters(remove_duplicate=False)) + list(
            wrapper.named_buffers(remove_duplicate=False)):
        ident.setdefault(id(t), []).append(n)
    by_id = sorted(sorted(v) for v in ident.values() if len(v) > 1)
    assert sorted(found) == by_id, "storage sharing that is not module sharing"
    return len(state), sorted(found)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--meta", action="store_true")
    ap.add_argument("names", nargs="*", default=NAMES)
    a = ap.parse_args()
    for name in a.names:
        net = build(name, a.meta)
        n, groups = tied_groups(net, a.meta)
        dropped = sum(len(g) - 1 for g in groups)
        print(f"{name}: state dict {n} tensors, file {n - dropped}, {len(groups)} tied groups")
        for g in groups:
            print("   ", " = ".join(g))
        del net
        sys.stdout.flush()


if __name__ == "__main__":
    main()
