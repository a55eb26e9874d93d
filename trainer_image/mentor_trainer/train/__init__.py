"""Training stages: `sft` (supervised fine-tuning and continued pre-training)."""
