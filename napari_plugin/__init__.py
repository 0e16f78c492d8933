"""napari plugin for pellet-analysis (npe2): a thin view over ``pellet_analysis``.

Reader (run folders and our label TIFFs only), writer (labels layers as label TIFFs),
sample data (a synthetic pellet) and the review widget. Analysis logic lives in
``pellet_analysis.review``; the core library never imports this package.
"""
