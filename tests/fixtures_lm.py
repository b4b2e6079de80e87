"""Session fixtures for the language-model task tests."""
