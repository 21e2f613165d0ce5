"""Project-wide defaults (one place, so every module and the CLI agree).

Axis order z, y, x throughout.
"""

#: voxel size of the reference microscope, µm, (z, y, x)
VOXEL_SIZE_UM = (0.3, 0.13, 0.13)

#: a detection matches a ground-truth point only within this distance, µm
MATCH_CUTOFF_UM = 0.5

#: radius of the sphere label drawn around each point for StarDist training, µm.
#: 0.3 µm spheres did not train (probability map stayed at background); 0.5 µm did.
LABEL_RADIUS_UM = 0.5

#: shape of a whole reference frame, px (z, y, x)
FRAME_SHAPE_PX = (61, 1000, 1000)

#: Gaussian sigma of a kinetochore spot on the reference microscope, µm (z, y, x): the one size
#: the screen, the refinement's starting fit and the LoG baseline use
SPOT_SIGMA_UM = (0.25, 0.11, 0.11)
