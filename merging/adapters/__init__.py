"""LoRA adapters in memory and their one PEFT reader/writer."""
