"""Training: SFT entry point, model loading (quantization, PEFT, freezing), collators, run records."""
