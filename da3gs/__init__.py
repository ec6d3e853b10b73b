"""da3gs: feed-forward 3D Gaussian splatting on the Depth Anything 3 architecture."""

__version__ = "0.1.0"

from da3gs.errors import Da3gsError  # noqa: E402
from da3gs.types import Prediction  # noqa: E402


def load_model(source, device="cpu", preset=None):
    """Load a DA3 model; see :func:`da3gs.models.loading.load_model`."""
    from da3gs.models.loading import load_model as _load

    return _load(source, device=device, preset=preset)


__all__ = ["load_model", "Prediction", "Da3gsError", "__version__"]
