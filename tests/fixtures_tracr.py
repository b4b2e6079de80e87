"""Session fixtures for the tracr tests (compile each program once per session)."""
