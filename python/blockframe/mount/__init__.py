"""Read-only mounts of an archive: a filesystem view shared by every adapter (FUSE on
Linux and macOS, WinFsp on Windows, and the HTTP server), and the adapters themselves."""
