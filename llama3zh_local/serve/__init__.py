"""``llama3zh serve``: an OpenAI- and Ollama-compatible local server with a web chat page."""
