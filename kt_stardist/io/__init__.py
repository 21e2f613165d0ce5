"""Reading and writing images and point tables; every write is atomic.

Images in memory are 5D ``(T, Z, Y, X, C)`` (channel last, as StarDist wants ``ZYXC`` per
frame). Voxel sizes are ``(z, y, x)`` in µm. Point tables are pandas DataFrames with columns
``t`` (int, when there is time), ``z, y, x`` (float, px, sub-voxel), optional
``z_um, y_um, x_um``, ``prob`` and ids ``point_id, pair_id, sister, track_id``.

Modules: :mod:`~kt_stardist.io.atomic` (atomic writes), :mod:`~kt_stardist.io.images`,
:mod:`~kt_stardist.io.points`. Bad input raises :class:`kt_stardist.errors.InputError` with one
line naming the file.
"""

from kt_stardist.io.atomic import atomic_path, atomic_write
from kt_stardist.io.images import Image, read_image, voxel_size_or_default, write_image
from kt_stardist.io.points import (POINT_COLUMNS, points_zyx, read_arivis, read_points, write_napari_points,
                                   write_points)
from kt_stardist.validate import check_volume, check_voxel_size

__all__ = [
    "atomic_write", "atomic_path", "Image", "read_image", "write_image", "check_volume",
    "voxel_size_or_default", "check_voxel_size", "read_points", "read_arivis", "write_points",
    "write_napari_points", "points_zyx", "POINT_COLUMNS",
]
