"""Reinforcement learning with verifiable rewards after fine-tuning (METHODS.md §1f): the `rl`
stage runs GRPO on TRL's GRPOTrainer from the fine-tuned (or the base) student.

recipe.py  the `rl` config group -> trl.GRPOConfig, start-up checks
reward.py  reasonft's verifier as the 0/1 reward, verdicts counted by outcome
callbacks.py  per-step metrics to the run's loggers and history.jsonl; periodic validation
stage.py   run_grpo: data, engine, resume, save_pretrained, report
plots.py   rl_curves.png (one run), rl_comparison.png (several runs on shared axes)
launch.py  how many processes the stage runs on, and how to launch them
"""
