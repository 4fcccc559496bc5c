"""The DARLING training loop: configs, rollouts, checkpoints, metrics, multi-host, `plan`."""
