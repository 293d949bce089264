"""The matting Laplacians, one a file: `closed_form` the colour one (Levin et al.), `features`
the pixel feature one (D - W from the backbone's features), `fused` their sum
L = L_colour + lambda' L_feature with lambda' set from the image.
"""
