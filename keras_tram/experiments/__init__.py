"""Experiments: the paper's recipes on keras-hub presets (`recipes`), tiny
local presets (`tiny`), offline data (`datasets`), networks pre-trained here
(`pretraining`) and `keras-tram demo` (`demo`)."""
