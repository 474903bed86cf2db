"""The core: interpolants and the Denoiser protocol, tasks and measurements, conditioning,
posterior denoisers, samplers and schedules, metrics (the linear operators are
:mod:`exactpost.operators`). Imports nothing from nets, inference, training or the app."""
