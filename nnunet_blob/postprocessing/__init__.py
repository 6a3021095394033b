"""From lesion-wise metrics to the submitted model: postprocessing tuned on the cross-validation predictions and
applied to new predictions, configuration choice by an instance metric, and model export.

* :mod:`.rules`: what a postprocessing setting does to a prediction (probability threshold, minimum component
  volume), the one definition that tuning and application share;
* :mod:`.settings`: the ``postprocessing_instances.json`` file;
* :mod:`.cases`: the cross-validation predictions of a trained model or an ensemble, case by case;
* :mod:`.tables`: component tables of a case and the metrics of every minimum volume from them;
* :mod:`.significance`: the decision rules (cross-validated selection, Bonferroni) that keep a setting;
* :mod:`.tuning`: the grid, its scores and ``nnunet_blob tune-postprocessing``;
* :mod:`.apply`: ``nnunet_blob apply-postprocessing``;
* :mod:`.selection`: ``nnunet_blob find-best``;
* :mod:`.export`: ``nnunet_blob export``;
* :mod:`.cli`: the sub-commands.
"""
