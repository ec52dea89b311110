"""Training: model loading (quantization, PEFT, freezing), the data pipeline and collators, the SFT trainer and its
callbacks, composed VLMs and GPT-2; the entry points training/sft.py, train_vlm.py and pretrain_lm.py."""
