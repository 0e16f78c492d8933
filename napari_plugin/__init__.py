"""napari plugin for pellet-analysis (npe2): a thin view over ``pellet_analysis``.

Nothing here yet; the review widget, reader, writer and sample data come with the review issue.
The core library never imports this package.
"""
