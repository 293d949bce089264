"""Class-agnostic detector self-trained on pseudo-boxes (CutLER-style), over precomputed ViT patch features.

pyramid: a ViTDet simple feature pyramid over the patch grid; detector: torchvision's FCOS wired to take
the features as its "image" (boxes in input pixels) with CutLER's drop-loss; train: fit / predict.
"""
