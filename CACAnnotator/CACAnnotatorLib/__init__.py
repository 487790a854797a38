"""CAC Annotator: annotating cines with the paper's method (pair view, one segmentation per annotator,
majority vote, export to a training dataset).  :mod:`CACAnnotatorLib.annotation` is the Logic."""
