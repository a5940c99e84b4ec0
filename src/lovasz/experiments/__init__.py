"""The experiment harness: data sets, the demo model, training and evaluation, plots and the ``lovasz``
command.  Not part of the loss library: ``import lovasz`` never imports it, and it needs the ``[train]``
extra (``pip install 'lovasz[train]'``).

* :mod:`.data`: digit and Fashion-MNIST canvases (and fully synthetic shapes), cached in the user's cache
  directory.
* :mod:`.models`: ``SmallUNet``.
* :mod:`.train`: one training run, evaluation, checkpoints.
* :mod:`.plots`: training curves, per-class bars, predictions (matplotlib, without pyplot).
* :mod:`.cli`: ``lovasz train | eval | demo``.
"""
