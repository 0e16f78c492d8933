"""pellet-analysis: quantitative histology of chondrogenic pellet sections.

The library is a chain of small modules of pure array functions:
``pellets`` (illumination, find sections) -> ``stains`` (optical density,
deconvolution) -> ``classify`` (classes, nuclei, iron) -> ``measure``
(per-pellet figures). ``slide`` applies them to one image pellet window by
pellet window; ``tasks`` makes every image a plan of pellet windows and runs
them as Dask tasks (plan -> classify window -> measure -> write), and
``batch`` schedules a folder of images and writes the output contract.
``pipeline.analyze_image`` is the same steps on one array in memory.
"""

__version__ = "0.1.0"
