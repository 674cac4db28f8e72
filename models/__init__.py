"""Model registry of the deepfake ensemble: architectures, member specs and the weights store.

``train``, ``scan`` and ``eval`` build every network through :mod:`dfdc_models.registry`
(:func:`dfdc_models.registry.build` -> :class:`dfdc_models.member.MemberModel`: RGB 0..255 clips in, FAKE logit /
p(fake) out) and find trained or imported weights through :mod:`dfdc_models.store`. The package stands on
its own: it imports nothing of the ``deepfake`` CLI.

Modules:

* :mod:`dfdc_models.archs` - the architecture registry: one record per architecture (factory, input
  scaling, output, clip length, test-time flip, resolutions, pretrained files and key mapping, tiny
  stand-in). Start here to change or add an architecture.
* networks: :mod:`dfdc_models.i3d` and :mod:`dfdc_models.resnet3d` (the project's own: no dependency provides
  them), :mod:`dfdc_models.video` (torchvision), :mod:`dfdc_models.seresnext` (timm's legacy SE-ResNeXt50 in the
  seed's head), :mod:`dfdc_models.framenet` (timm frame networks), :mod:`dfdc_models.tiny` (test stand-ins);
* :mod:`dfdc_models.specs` (the seed's member table), :mod:`dfdc_models.member` (clip in, p(fake) out),
  :mod:`dfdc_models.registry` (build, strict loading, which architecture a file is);
* :mod:`dfdc_models.pretrained` (initialising from public pretrained files), :mod:`dfdc_models.checkpoint` (safe
  reading, one-line errors), :mod:`dfdc_models.store` (the weights store), :mod:`dfdc_models.builtin`,
  :mod:`dfdc_models.synthetic`; :mod:`dfdc_models.errors`, :mod:`dfdc_models.paths`, :mod:`dfdc_models.atomic`.
"""
