"""Model registry of the deepfake ensemble: architectures, member specs and the weights store.

``train``, ``scan`` and ``eval`` build every network through :mod:`models.registry`
(:func:`models.registry.build` -> :class:`models.member.MemberModel`: RGB 0..255 clips in, FAKE logit /
p(fake) out) and find trained or imported weights through :mod:`models.store`. The package stands on
its own: it imports nothing of the ``deepfake`` CLI.

Modules:

* :mod:`models.archs` - the architecture registry: one record per architecture (factory, input
  scaling, output, clip length, test-time flip, resolutions, pretrained files and key mapping, tiny
  stand-in). Start here to change or add an architecture.
* networks: :mod:`models.i3d` and :mod:`models.resnet3d` (the project's own: no dependency provides
  them), :mod:`models.video` (torchvision), :mod:`models.seresnext` (timm's legacy SE-ResNeXt50 in the
  seed's head), :mod:`models.framenet` (timm frame networks), :mod:`models.tiny` (test stand-ins);
* :mod:`models.specs` (the seed's member table), :mod:`models.member` (clip in, p(fake) out),
  :mod:`models.registry` (build, strict loading, which architecture a file is);
* :mod:`models.pretrained` (initialising from public pretrained files), :mod:`models.checkpoint` (safe
  reading, one-line errors), :mod:`models.store` (the weights store), :mod:`models.builtin`,
  :mod:`models.synthetic`; :mod:`models.errors`, :mod:`models.paths`, :mod:`models.atomic`.
"""
