import pytest
import torch

from da3gs.geometry import GeometryError, c2w_to_w2c, quat_to_mat
from da3gs.geometry.errors import check_hw, check_shape


def test_is_value_error():
    assert issubclass(GeometryError, ValueError)


def test_shape_message_names_argument():
    with pytest.raises(GeometryError, match=r"c2w: expected shape \(\.\.\., 4, 4\) or \(\.\.\., 3, 4\), got \(3, 3\)"):
        c2w_to_w2c(torch.eye(3))
    with pytest.raises(GeometryError, match="q_wxyz"):
        quat_to_mat(torch.zeros(3))


def test_non_tensor_and_int_dtype():
    with pytest.raises(GeometryError, match="x: expected a torch.Tensor"):
        check_shape([1.0, 2.0], "x", (2,))
    with pytest.raises(GeometryError, match="floating-point"):
        check_shape(torch.zeros(2, dtype=torch.int64), "x", (2,))


def test_non_finite():
    m = torch.eye(4)
    m[0, 3] = float("nan")
    with pytest.raises(GeometryError, match="c2w: contains NaN"):
        c2w_to_w2c(m)


def test_check_hw():
    assert check_hw((4, 5)) == (4, 5)
    with pytest.raises(GeometryError, match="image_hw"):
        check_hw((0, 5))
    with pytest.raises(GeometryError, match="image_hw"):
        check_hw(7)
