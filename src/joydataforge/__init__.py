"""JoyDataForge: forge SFT and preference training data with one or many LLMs."""

__version__ = "0.1.0"
