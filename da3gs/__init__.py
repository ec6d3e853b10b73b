"""da3gs: feed-forward 3D Gaussian splatting on the Depth Anything 3 architecture."""

from da3gs._version import __version__
from da3gs.errors import Da3gsError
from da3gs.types import Prediction


def load_model(source, device="cpu", preset=None):
    """Load a DA3 model; see :func:`da3gs.models.loading.load_model`."""
    from da3gs.models.loading import load_model as _load

    return _load(source, device=device, preset=preset)


__all__ = ["load_model", "Prediction", "Da3gsError", "__version__"]
