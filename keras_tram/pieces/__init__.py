"""The public pieces a method is made of: where the perturbation points
(`geometry`), how large it is (`radius`, `schedule`), what it is measured
against (`references`, `divergences`, `reduction`), what is added to the loss
(`penalty`), which weights it moves (`selection`), how the descent gradient is
formed (`descent`) and how often the full step runs (`reuse`). Each is also
reachable as `keras_tram.<name>`."""
