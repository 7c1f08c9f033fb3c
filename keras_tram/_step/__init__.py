"""The step, private: the method written once in `keras.ops` (`algorithm`),
what the pieces read of it (`view`), the step that reuses its direction
(`reuse_step`), which weights and embedding rows it perturbs
(`perturbation`), input noise (`noise`) and slicing a batch (`batch`)."""
