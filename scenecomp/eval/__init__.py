"""Evaluation of scenecomp and baseline bundles: ``scenecomp-eval`` (`scenecomp.eval.cli`).

- `features`: the in-domain feature network (FID/KID features, object and
  presence classifier), its file, and the classifier's object crops;
- `feature_training`: how that network is trained (``tools/train_features.py``);
- `metrics`: every metric as a function on tensors, plus one small accumulator
  per metric that collects a batch at a time;
- `two_sample`: the two-sample classifier test (real vs generated);
- `protocol`: the models under test (rendered through `Composer.render_iter`),
  the split, the seeds, and `evaluate`;
- `report`: the table and the JSON; `cli`: the command line.

This package imports neither Hydra nor Lightning.
"""


class EvaluationError(ValueError):
    """Bad input to the evaluation: a feature file, mismatched categories or resolutions, bad options."""
