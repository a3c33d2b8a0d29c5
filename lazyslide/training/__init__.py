"""Training URCDM from whole-slide images: prepare a dataset, train one unet, assemble a model.

``prepare`` cuts (target, parent window) pairs with the sampler's geometry, ``dataset`` turns
them into the inputs each cascade stage sees when sampling, ``objective`` is the diffusion loss
(the mirror image of ``lazyslide.sampler``), ``trainer`` runs, checkpoints and resumes one unet,
and ``assemble`` builds a model folder from nine runs.
"""
