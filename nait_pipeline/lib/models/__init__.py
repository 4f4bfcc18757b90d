"""Models: loading (GGUF conversion), the chat/IT template, fine-tuning."""
