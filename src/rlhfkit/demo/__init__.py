"""`rlhfkit demo`: InstructGPT's whole loop on the bundled data, with simulated labelers.

    config.py     DemoConfig: the run's options and one config per stage
    data/         the bundled prompts, demonstrations and prose (built by scripts/make_demo_data.py)
    labelers.py   the simulated labelers: a rubric checked by code, each labeler weighing it its own way
    pipeline.py   the stages in order, resumable: SFT, comparisons, RM, PPO-ptx, evaluation, a second round
    evaluate.py   held-out labelers' win rates and the policy metrics of each round
    report.py     runs/<name>/report.md with its plots
"""
