"""Measuring generated slides against real ones, as the paper does.

``features`` (the offline FID Inception), ``fid`` (Fréchet distance), ``precision_recall``
(improved precision and recall), ``samples`` (generated tiles and real patches at the same
um/px, pFID crops), ``evaluate`` (the report: Tables 1 and 3) and ``study`` (the reader study's
pairs, answers and Table 2).
"""
