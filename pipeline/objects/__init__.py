"""Objects from eigenvectors: foreground masks, components and boxes, several objects per
image (the iterative cut), their refined masks and scores, and the mask refiners (guided
filter, pymatting).

May import `pipeline.spectral` and below.
"""
