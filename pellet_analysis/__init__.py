"""pellet-analysis: quantitative histology of chondrogenic pellet sections.

The library is a chain of small modules of pure array functions:
``io`` (read) -> ``pellets`` (illumination, find sections) -> ``stains``
(optical density, deconvolution) -> ``classify`` (classes, nuclei, iron) ->
``measure`` (per-pellet figures), with ``pipeline`` scheduling them over a
folder with Dask and writing the output contract.
"""

__version__ = "0.1.0"
