"""The trainer: one loop for every task (`train.train_and_evaluate(config,
workdir)`), its pure step functions (`steps`), the compiled program of a run
or a sweep (`program`, `sweep`, `placement`), records and checkpoints
(`records`), and the config checks that run before anything is built
(`config_checks`). It knows no task: `config.task` names one of
`wn_jax.tasks`.
"""
