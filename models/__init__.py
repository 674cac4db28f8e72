"""Model registry of the deepfake ensemble: architectures, member specs and the weights store.

``train``, ``scan`` and ``eval`` build every network through :mod:`models.registry`
(:func:`models.registry.build` -> :class:`models.registry.MemberModel`: RGB 0..255 clips in, FAKE logit /
p(fake) out) and find trained or imported weights through :mod:`models.store`.

Modules: :mod:`models.specs` (the member table), :mod:`models.i3d`, :mod:`models.resnet3d`,
:mod:`models.senet2d` (architectures not provided by torchvision), :mod:`models.pretrained` (initialising
from public pretrained files), :mod:`models.checkpoint` (safe loading, strict checks, one-line errors).
"""
