"""`keras-tram demo`: every method fine-tuning the same pre-trained network
under a real domain shift, offline, on a CPU, with paired confidence intervals.

Two tasks (`catalog.TASKS`):

- `digits` (`keras_tram.experiments.demo.digits`): a small CNN pre-trained on handwritten
  MNIST digits, fine-tuned on printed digits, evaluated on held-out fonts,
  MNIST and scikit-learn's 8x8 digits.
- `lm` (`keras_tram.experiments.demo.lm`): a small GPT-2 pre-trained on Wikipedia,
  fine-tuned on news, evaluated by perplexity on held-out news, held-out
  Wikipedia and movie reviews.

`run(...)` is what the command calls; `keras_tram.experiments.demo.runner.run`
takes any task object and list of methods. Importing this package does not
import Keras (the command checks its arguments first).
"""

from keras_tram.experiments.demo import catalog  # plain data: no Keras


def make_task(name, tiny=False, quick=False):
    """The task called `name` (`"digits"` or `"lm"`). For `"lm"`, `quick`
    fine-tunes for fewer steps and `tiny` makes the smallest run, which
    checks the pipeline end to end."""
    if name not in catalog.TASKS:
        raise ValueError(f"`task` must be one of {catalog.TASKS}; got {name!r}.")
    if name == "digits":
        from keras_tram.experiments.demo.digits import Digits

        return Digits()
    from keras_tram.experiments.demo.lm import LanguageModelling

    return LanguageModelling("tiny" if tiny else "quick" if quick else "full")


def run(task, methods, seeds, output, cache, intervals=True, sweep=False, tiny=False,
        quick=False, log=print):
    """Runs the demo (or, with `sweep`, the radius sweep) of `task`; writes
    the tables, JSON, CSV and plots to `output` and returns the record."""
    from keras_tram.experiments.demo import runner  # imports Keras

    if sweep:
        points = catalog.sweep_methods()
    else:
        points = runner.methods_named(methods)
    return runner.run(make_task(task, tiny, quick), points, seeds, output, cache,
                      intervals=intervals, kind="sweep" if sweep else "demo", log=log)
