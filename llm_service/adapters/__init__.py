"""Wire-format adapters: OpenAI chat completions, Anthropic Messages, Gemini."""
