"""kt-stardist: find kinetochores in 3D and 4D fluorescence microscopy with StarDist.

Axis order is always z, y, x (t, z, y, x, c for hyperstacks held in memory). Names say
``_px`` or ``_um`` wherever a coordinate or a size could be either.

TensorFlow is imported only by the modules that build or run a model
(:mod:`kt_stardist.model`, :mod:`kt_stardist.train`, :mod:`kt_stardist.predict`), lazily.
"""

__version__ = "0.1.0"
