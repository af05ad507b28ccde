"""The only wing that talks to the Hugging Face Hub: the client, the model card, publishing and the
redaction of what publishing uploads. Imports no training code."""
