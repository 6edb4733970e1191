"""The whole two-phase CSKD run from one config, resumable phase by phase.

Phases (`PHASE_TABLE`), each writing to its own folder under the run's output folder:

1. `align`: `CLIPFeatureAligner` trains the teacher and student learners
   against frozen CLIP on unlabeled images.
2. `teacher`: the aligned teacher backbone + `ScoreHead`, squared EMD on labels.
3. `baseline`: the student backbone without alignment, labels only (the
   reference the report compares against).
4. `distill`: `SemiSupervisedDistiller` trains the aligned student on labeled +
   unlabeled images with the teacher's pseudo-labels.
5. `evaluate`: SRCC, PLCC, accuracy and EMD of each scorer on the test split,
   `metrics.json`, `report.md` and PNG plots.

A finished phase is never recomputed and a killed one resumes from its last
completed epoch with the weights an uninterrupted run would have (see
`keras_cskd.recipe.phase`).

Modules: `config` (`RecipeConfig`, TOML in and out), `demo_models` (small
offline models, backbones by name), `phase` (the phase table, `Phase`),
`steps` (data, the phases in order, evaluation, `run`).

Example:
>>> config = RecipeConfig()  # the built-in demo: synthetic world, small models
>>> config.train.align_epochs
6
>>> PHASES
('align', 'teacher', 'baseline', 'distill', 'evaluate')
>>> run(config, "runs/demo")  # doctest: +SKIP
"""

from keras_cskd.recipe.config import ConfigError
from keras_cskd.recipe.config import DataConfig
from keras_cskd.recipe.config import ModelConfig
from keras_cskd.recipe.config import RecipeConfig
from keras_cskd.recipe.config import TrainConfig
from keras_cskd.recipe.demo_models import build_backbone
from keras_cskd.recipe.demo_models import clip_teacher
from keras_cskd.recipe.demo_models import small_clip
from keras_cskd.recipe.demo_models import stand_in_clip
from keras_cskd.recipe.phase import PHASE_TABLE
from keras_cskd.recipe.phase import PHASES
from keras_cskd.recipe.phase import Phase
from keras_cskd.recipe.phase import PhaseError
from keras_cskd.recipe.phase import PhaseSpec
from keras_cskd.recipe.phase import phase_commands
from keras_cskd.recipe.phase import phase_spec
from keras_cskd.recipe.steps import predict_split
from keras_cskd.recipe.steps import prepare_data
from keras_cskd.recipe.steps import run
from keras_cskd.recipe.steps import run_evaluate
from keras_cskd.recipe.steps import score_metrics
