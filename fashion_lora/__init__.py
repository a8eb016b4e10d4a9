"""fashion-lora: a reproducible LoRA fine-tuning pipeline for Stable Diffusion on fashion data."""

__version__ = "0.1.0"
