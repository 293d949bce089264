"""Objects from eigenvectors: foreground masks, components and boxes, and the mask
refiners (guided filter, pymatting).

May import `pipeline.spectral` and below.
"""
