"""Magpie (Xu et al. 2024) building blocks: pre-query templates, instruction cleaning, language detection,
control-task system prompts and input slots. The steps live in :mod:`joydataforge.steps.magpie`."""
