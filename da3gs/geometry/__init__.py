"""Camera geometry for da3gs (OpenCV cameras, wxyz quaternions, pixel-centre grids).

See ``conventions`` for the project-wide conventions and conversions.
"""

from .align import (Sim3, align_cameras, align_cameras_batched, apply_sim3_to_c2w,
                    max_trace_rotation, umeyama)
from .conventions import (
    as_homogeneous,
    c2w_opencv_to_opengl,
    c2w_opengl_to_opencv,
    c2w_to_colmap,
    c2w_to_w2c,
    colmap_to_c2w,
    llff_to_opencv,
    opencv_to_llff,
    w2c_to_c2w,
)
from .errors import GeometryError
from .pose_encoding import POSE_ENCODING_DIM, decode_pose, encode_pose
from .quaternion import (
    mat_to_quat,
    quat_conjugate,
    quat_multiply,
    quat_normalize,
    quat_slerp,
    quat_to_mat,
    wxyz_to_xyzw,
    xyzw_to_wxyz,
    rotation_angle,
)
from .ray_pose import RayPoseResult, pose_from_ray_map
from .rays import pixel_grid, project_points, ray_directions, ray_map, unproject_depth

__all__ = [
    "GeometryError",
    # conventions
    "as_homogeneous",
    "c2w_to_w2c",
    "w2c_to_c2w",
    "c2w_opengl_to_opencv",
    "c2w_opencv_to_opengl",
    "llff_to_opencv",
    "opencv_to_llff",
    "colmap_to_c2w",
    "c2w_to_colmap",
    # quaternion
    "rotation_angle",
    "quat_to_mat",
    "mat_to_quat",
    "quat_multiply",
    "quat_normalize",
    "quat_conjugate",
    "quat_slerp",
    "xyzw_to_wxyz",
    "wxyz_to_xyzw",
    # rays
    "pixel_grid",
    "ray_directions",
    "ray_map",
    "unproject_depth",
    "project_points",
    # pose encoding
    "encode_pose",
    "decode_pose",
    "POSE_ENCODING_DIM",
    # ray pose
    "RayPoseResult",
    "pose_from_ray_map",
    # alignment
    "Sim3",
    "umeyama",
    "align_cameras",
    "align_cameras_batched",
    "max_trace_rotation",
    "apply_sim3_to_c2w",
]

from .trajectory import (  # noqa: E402
    evaluate_path,
    extend_path,
    interpolate_path,
    look_at,
    nearest_view,
    orbit_path,
    path_intrinsics,
    scene_center,
)

__all__ += [
    # trajectory
    "look_at",
    "evaluate_path",
    "interpolate_path",
    "orbit_path",
    "extend_path",
    "scene_center",
    "nearest_view",
    "path_intrinsics",
]
