"""Checkpoints as users meet them: the release layout (tied tensors stored once), folders with
every key, nested / GS / sky heads, config variants, half precision, bad files and paths.

The tied-tensor table is checked on the real official networks (small built with weights; every
preset built without weight initialisation, which keeps real storages, so sharing is seen as
``safetensors.torch.save_model`` sees it).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from da3gs import Da3gsError, load_model
from da3gs.errors import ModelSourceError
from da3gs.models.convert import (TIED, TIED_OURS, CheckpointMismatch, fill_tied,
                                  official_to_ours, ours_to_official, unique_state)
from da3gs.models.loading import save_model
from tests.official_ref import (SMALL_FILE_TENSORS, build_official, build_official_uninit,
                                official_available, rel_err, requires_official, save_official)

H, W = 28, 42
ALL_OFFICIAL = ["da3-small", "da3-base", "da3-large", "da3-giant", "da3mono-large",
                "da3metric-large", "da3nested-giant-large"]
#: state-dict size / tensors in the released file, per official network (measured)
COUNTS = {"da3-small": (443, 437), "da3-base": (443, 437), "da3-large": (643, 637),
          "da3-giant": (977, 971), "da3mono-large": (406, 406), "da3metric-large": (406, 406),
          "da3nested-giant-large": (1383, 1377)}


def _x(V=2, seed=0, h=H, w=W):
    return torch.randn(1, V, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _shared_groups(net: torch.nn.Module) -> list[list[str]]:
    from safetensors.torch import _find_shared_tensors

    wrapper = torch.nn.Module()
    wrapper.model = net
    return sorted(sorted(g) for g in _find_shared_tensors(wrapper.state_dict()) if len(g) > 1)


def _expected_groups(name: str) -> list[list[str]]:
    if "mono" in name or "metric" in name:
        return []
    prefix = "model.da3." if "nested" in name else "model."
    return sorted(sorted(prefix + n for n in g) for g in TIED)


# --- the tied-tensor table against the official networks ---------------------------------

@requires_official
@pytest.mark.parametrize("name", ALL_OFFICIAL)
def test_tied_table_matches_official(name):
    """Every storage shared in the official network is one group of TIED, and no other."""
    net = build_official_uninit(name)
    assert _shared_groups(net) == _expected_groups(name)
    n_state, n_file = COUNTS[name]
    assert len(net.state_dict()) == n_state
    # every official name converts to ours and back (the key maps are exact inverses)
    keys = {f"model.{k}": torch.zeros(()) for k in net.state_dict()}
    ours = official_to_ours(keys)
    assert len(ours) == n_state
    assert sorted(ours_to_official(ours, dedupe=False)) == sorted(keys)
    assert len(ours_to_official(ours)) == n_file


def test_our_dual_dpt_shares_the_layernorm():
    net = load_model("random:tiny").net
    lns = [lvl[1] for lvl in net.depth_head.ray_out2]
    assert all(m is lns[0] for m in lns)
    state = unique_state(net)
    assert all(n not in state for g in TIED_OURS for n in g[1:])
    assert all(g[0] in state for g in TIED_OURS)


# --- the release layout --------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_pair(tmp_path_factory):
    if not official_available():
        pytest.skip("official depth-anything-3 package not installed")
    off = build_official("da3-small", seed=3)
    folder = save_official(off, tmp_path_factory.mktemp("small"), "da3-small")
    return off, folder


@requires_official
def test_release_layout_loads_small(small_pair):
    off, folder = small_pair
    state = load_file(str(folder / "model.safetensors"))
    assert len(state) == SMALL_FILE_TENSORS
    assert "model.head.scratch.output_conv2_aux.0.2.weight" in state
    assert "model.head.scratch.output_conv2_aux.3.2.weight" not in state
    assert _shared_groups(off) == _expected_groups("da3-small")  # with real weights too
    ours = load_model(folder)
    x = _x()
    heads = []  # the official forward drops the rays: catch the head's output on the way
    hook = off.head.register_forward_hook(lambda mod, args, out: heads.append(dict(out)))
    with torch.no_grad():
        a = off(x, None, None, export_feat_layers=[])
        b = ours.net(x)
    hook.remove()
    for k in ("depth", "depth_conf", "extrinsics", "intrinsics"):
        assert rel_err(b[k], a[k]) <= 1e-4, k
    for k in ("ray", "ray_conf"):  # the tied LayerNorm sits in the ray branch
        assert rel_err(b[k], heads[0][k]) <= 1e-4, k


@requires_official
def test_folder_with_every_key_loads(small_pair, tmp_path):
    """Older conversions hold every name of a tied tensor: equal values load."""
    off, _ = small_pair
    folder = save_official(off, tmp_path / "full", "da3-small", all_keys=True)
    assert len(load_file(str(folder / "model.safetensors"))) == 443
    ours = load_model(folder)
    x = _x(1, 5)
    with torch.no_grad():
        assert rel_err(ours.net(x)["depth"], off(x, None, None, export_feat_layers=[])["depth"]) \
            <= 1e-4


@requires_official
def test_tied_names_with_different_values_refused(small_pair, tmp_path):
    _, folder = small_pair
    state = load_file(str(folder / "model.safetensors"))
    w = state["model.head.scratch.output_conv2_aux.0.2.weight"]
    state["model.head.scratch.output_conv2_aux.2.2.weight"] = w + 1
    (tmp_path / "bad").mkdir()
    save_file(state, str(tmp_path / "bad" / "model.safetensors"))
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"model_name": "da3-small"}))
    with pytest.raises(ModelSourceError, match=r"output_conv2_aux\.0\.2\.weight and .*"
                       r"output_conv2_aux\.2\.2\.weight hold different values"):
        load_model(tmp_path / "bad")
    (tmp_path / "bad" / "config.json").unlink()  # preset read off the weights: same line
    with pytest.raises(ModelSourceError, match=r"bad.model\.safetensors: tied tensors .* hold "
                       "different values"):
        load_model(tmp_path / "bad")


def test_fill_tied_rules():
    g = TIED[0]
    t = torch.arange(4.0)
    filled = fill_tied({"model.da3." + g[2]: t})
    assert all(torch.equal(filled["model.da3." + n], t) for n in g)
    assert fill_tied({g[0]: t, g[1]: t.clone()})[g[3]] is t
    with pytest.raises(CheckpointMismatch, match="different values"):
        fill_tied({g[0]: t, g[1]: t + 1})
    assert issubclass(CheckpointMismatch, Da3gsError)


@requires_official
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_file_loads_as_fp32(small_pair, tmp_path, dtype):
    off, folder = small_pair
    state = {k: v.to(dtype) for k, v in load_file(str(folder / "model.safetensors")).items()}
    (tmp_path / "h").mkdir()
    save_file(state, str(tmp_path / "h" / "model.safetensors"))
    (tmp_path / "h" / "config.json").write_text((folder / "config.json").read_text())
    ours = load_model(tmp_path / "h")
    assert all(p.dtype == torch.float32 for p in ours.parameters())
    w = ours.net.depth_head.ray_out2[3][1].norm.weight
    ref = off.head.scratch.output_conv2_aux[0][2].weight
    assert torch.equal(w, ref.to(dtype).float())


@requires_official
@pytest.mark.parametrize("cfg", [
    {"model_name": "da3-small"},
    {"config": {"model_name": "da3-small"}},
    {"model_name": "DA3-SMALL-1.1"},
    {"model_name": "depth-anything/DA3-SMALL"},
    {},
    None,  # no config.json at all
])
def test_config_variants(small_pair, tmp_path, cfg):
    _, folder = small_pair
    d = tmp_path / "c"
    d.mkdir()
    (d / "model.safetensors").symlink_to(folder / "model.safetensors")
    if cfg is not None:
        (d / "config.json").write_text(json.dumps(cfg))
    assert load_model(d).preset.name == "small"


def test_bad_config_refused(tmp_path):
    save_model(load_model("random:tiny"), tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_name": "da3-huge"}))
    with pytest.raises(ModelSourceError, match="unknown preset 'da3-huge'"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("[1, 2]")
    with pytest.raises(ModelSourceError, match="JSON object"):
        load_model(tmp_path / "m")


# --- nested, GS head, sky heads (tiny presets: same structure as the official ones) --------

@pytest.mark.parametrize("preset", ["tiny-nested", "tiny-gs", "tiny-mono"])
def test_official_layout_roundtrip_tiny(preset, tmp_path):
    """Our tiny networks written under the official names and layout (tied tensors once, nested
    under model.da3. / model.da3_metric.) load back to the same outputs."""
    torch.manual_seed(0)
    m = load_model(f"random:{preset}")
    state = ours_to_official(unique_state(m.net))
    if preset == "tiny-nested":
        assert any(k.startswith("model.da3.head.scratch.refinenet1_aux.") for k in state)
        assert any(k.startswith("model.da3_metric.head.scratch.sky_output_conv2.") for k in state)
        assert any(k.startswith("model.da3.gs_head.") for k in state)
        assert not any(k.startswith("model.da3.head.scratch.output_conv2_aux.1.2.") for k in state)
    (tmp_path / "o").mkdir()
    save_file(state, str(tmp_path / "o" / "model.safetensors"))
    again = load_model(tmp_path / "o", preset=preset)
    assert again.gs_geometry == "official"
    x = _x(3, 1)
    with torch.no_grad():
        a, b = m.net(x, infer_gs=True), again.net(x, infer_gs=True)
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_da3gs_folder_holds_tied_tensor_once(tmp_path):
    torch.manual_seed(0)
    m = load_model("random:tiny-nested")
    save_model(m, tmp_path / "m")
    state = load_file(str(tmp_path / "m" / "model.safetensors"))
    assert "anyview.depth_head.ray_out2.0.1.norm.weight" in state
    assert "anyview.depth_head.ray_out2.3.1.norm.weight" not in state
    again = load_model(tmp_path / "m")
    assert again.net.anyview.depth_head.ray_out2[3][1] is again.net.anyview.depth_head.ray_out2[0][1]
    x = _x(2, 2)
    with torch.no_grad():
        assert torch.equal(again.net(x)["depth"], m.net(x)["depth"])


# --- bad files and paths (issue 9) ---------------------------------------------------------

def test_other_network_file(tmp_path):
    f = tmp_path / "resnet.safetensors"
    save_file({"conv1.weight": torch.zeros(4, 3, 3, 3), "fc.bias": torch.zeros(10)}, str(f))
    with pytest.raises(ModelSourceError, match=r"resnet\.safetensors: not a DA3 checkpoint "
                       r"\(2 tensors: conv1\.weight, fc\.bias\)"):
        load_model(f)
    (tmp_path / "d").mkdir()
    f.rename(tmp_path / "d" / "model.safetensors")
    with pytest.raises(ModelSourceError, match="not a DA3 checkpoint"):
        load_model(tmp_path / "d")


def test_partial_file(tmp_path):
    torch.manual_seed(0)
    state = load_model("random:tiny").net.state_dict()
    f = tmp_path / "part.safetensors"
    save_file({k: v.contiguous() for k, v in state.items() if k.startswith("depth_head.")
               and "ray_out2.1" not in k and "ray_out2.2" not in k and "ray_out2.3" not in k},
              str(f))
    with pytest.raises(ModelSourceError, match=r"part\.safetensors: incomplete DA3 checkpoint"):
        load_model(f)
    g = tmp_path / "blocks.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()
               if k.startswith("backbone.") and "blocks" not in k}, str(g))
    with pytest.raises(ModelSourceError, match=r"blocks\.safetensors: incomplete DA3 checkpoint"):
        load_model(g)
    # a preset named but tensors missing: one line naming the file and the missing names
    h = tmp_path / "half"
    save_model(load_model("random:tiny"), h)
    full = load_file(str(h / "model.safetensors"))
    save_file(dict(list(full.items())[:20]), str(h / "model.safetensors"),
              metadata={"da3gs_preset": "tiny"})
    with pytest.raises(ModelSourceError, match=r"half.model\.safetensors.*does not fit preset "
                       r"tiny: missing"):
        load_model(h)


def test_truncated_file(tmp_path):
    save_model(load_model("random:tiny"), tmp_path / "m")
    f = tmp_path / "m" / "model.safetensors"
    data = f.read_bytes()
    t = tmp_path / "trunc.safetensors"
    t.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelSourceError, match=r"trunc\.safetensors: not a readable safetensors"):
        load_model(t)


@pytest.mark.parametrize("src", ["./ckpt", "~/no/such/model", "runs/exp1/model",
                                 "model.safetensors", "weights.pt", "org/model.bin",
                                 "..\\ckpt", "/abs/missing"])
def test_local_looking_path_not_found(src, monkeypatch):
    def no_hub(*a, **k):
        raise AssertionError("a local-looking path must not go to the hub")

    monkeypatch.setattr("da3gs.models.loading.download", no_hub)
    with pytest.raises(ModelSourceError, match="not found"):
        load_model(src)


def test_hub_like_id_offline_names_both(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError, match="no local file or folder 'my-org/my-model'"):
        load_model("my-org/my-model")


def test_cli_local_looking_source_not_found(tmp_path, capsys, monkeypatch):
    from da3gs.cli import main

    monkeypatch.setattr("da3gs.models.loading.download", lambda *a, **k: 1 / 0)
    assert main(["export", "--official", str(tmp_path / "o"), "--from",
                 "runs/exp1/model.safetensors"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not found" in err and "Hugging Face" not in err
