"""Chat: templates, the conversation, history."""
