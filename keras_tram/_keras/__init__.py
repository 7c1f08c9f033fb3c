"""Keras glue, private: the `train_step` contract per backend (`trainer`), a
keras-hub task's preprocessing in `fit` (`pipeline`), the metric behind the
logged step statistics (`step_metric`), and every use of private Keras API
(`compat`)."""
