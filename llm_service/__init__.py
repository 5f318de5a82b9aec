"""The LLM service: Chat, StreamChat, TestKey and listings across many providers."""
